"""The live-shopping story in Chromium against `shopstream serve --workers 2` (issue 16).

A real supervisor and two workers (Redis, the test database). The seller goes live from
the studio on the shared port (the kernel hands the WHIP POST to either worker, which
becomes the show's origin). Two shoppers watch in Chromium, each page opened at one
worker's own port (`WORKER_PORT_BASE + index`, the port other workers' relays use), so
that both workers serve a viewer whatever the kernel would have chosen: the admin
cluster view shows one viewer at the origin and one relayed by the other worker. Both
play video and show the cluster's viewer count, chat from one reaches the other, the
seller's highlight reaches both, one buys, and the stock update reaches both pages and
the order the studio.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import PHONE, session_of, shoot
from tests.e2e.test_cluster import Node, cluster, redis_url, wait_for_async  # noqa: F401 - redis_url: a fixture
from tests.e2e.test_live_story import MISSING, TIMEOUT, buy_with_a_new_address, expect, frames
from tests.e2e.test_room import LAPTOP, PLAYING
from tests.factories import Factory

pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"backend routes not merged yet: {MISSING}"),
    pytest.mark.timeout(300),
]
WORKERS = ("host/w0", "host/w1")


@pytest.fixture
async def workers(clean_db: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Node]:  # noqa: F811
    """A supervisor with two workers on one port, sharing the test database and Redis."""
    async with cluster(clean_db, redis_url, tmp_path, ("host",), workers=2) as (node,):
        yield node


@pytest.fixture
def base_url(workers: Node) -> str:
    """The browser contexts (tests/e2e/conftest.py:new_context) open the workers' port."""
    return workers.url


async def test_the_story_on_two_workers_viewers_on_both(
    new_context: Any, workers: Node, clean_db: str,
) -> None:
    private = int(workers.env["WORKER_PORT_BASE"])
    async with aiohttp.ClientSession(base_url=workers.url) as http:
        factory = Factory(http, clean_db)  # type: ignore[arg-type]
        try:
            admin = await factory.admin()
            seller = await factory.seller()
            shoppers = [await factory.user(), await factory.user()]
            product = await factory.product(seller, stock=5, variants=2, title="Two-worker hoodie", price=7900)
            resp = await http.post("/api/v1/seller/livestreams", json={"title": "Workers night"},
                                   headers=seller.headers)
            assert resp.status == 201, await resp.text()
            stream_id = (await resp.json())["id"]
            resp = await http.post(f"/api/v1/seller/livestreams/{stream_id}/products",
                                   json={"productId": product["id"]}, headers=seller.headers)
            assert resp.status == 201, await resp.text()
        finally:
            await factory.close()

    async def cluster_view() -> dict[str, Any]:
        # A fresh connection each time: either worker answers from the same directory.
        async with aiohttp.ClientSession() as fresh, fresh.get(
            f"{workers.url}/api/v1/admin/cluster", headers=admin.headers,
        ) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    def room(view: dict[str, Any]) -> dict[str, Any]:
        return next((r for r in view["rooms"] if r["id"] == stream_id), {})

    await wait_for_async(lambda v: {n["id"] for n in v["nodes"]} == set(WORKERS), cluster_view, timeout=60)

    # The seller goes live from the studio (Chromium's fake camera over WHIP).
    studio_ctx, studio_watch = await new_context(LAPTOP, session_of(seller, "Maya"))
    studio = await studio_ctx.new_page()
    await studio.goto(f"/studio/{stream_id}")
    await studio.wait_for_function("() => document.getElementById('preview').videoWidth > 0", timeout=TIMEOUT)
    await studio.click("#go-live")
    await expect(studio, "body[data-publish-state='live']", "studio-live")
    origin = room(await wait_for_async(lambda v: room(v).get("origin") in WORKERS, cluster_view))["origin"]

    # One shopper's page on each worker's own port: both workers serve a viewer.
    viewers, watches = [], []
    for index, (shopper, name) in enumerate(zip(shoppers, ("Sam", "Kim"), strict=True)):
        ctx, watch = await new_context(PHONE, session_of(shopper, name))
        page = await ctx.new_page()
        await page.goto(f"http://127.0.0.1:{private + index}/live/{stream_id}")
        viewers.append(page)
        watches.append(watch)
    relay = next(w for w in WORKERS if w != origin)
    view = await wait_for_async(lambda v: room(v).get("relays") == {relay: 1} and room(v).get("viewers") == 2,
                                cluster_view, timeout=60)
    served = {n["id"]: n for n in view["nodes"]}
    # The origin's own viewer (the relay's session to it is not counted as one).
    assert served[origin]["rooms"].get(stream_id) == 1 and served[relay]["relays"].get(stream_id) == 1, served

    # Each viewer plays video: decoded frames increase, the picture has a size.
    for page in viewers:
        await page.wait_for_function(PLAYING, timeout=TIMEOUT)
        first, width = await frames(page)
        await asyncio.sleep(1.5)
        second, _ = await frames(page)
        assert width > 0 and second > first, (first, second, width)
        assert await page.get_attribute("body", "data-media-state") == "connected"
    for page in (*viewers, studio):
        await expect(page, "body[data-events='open']", "events-open")
    # The viewer count is the cluster's on both workers' pages.
    for page in viewers:
        await page.wait_for_function(
            "() => document.querySelector('#viewers [data-count]').textContent === '2'", timeout=TIMEOUT)

    # Chat from the viewer on one worker reaches the viewer on the other, and the studio.
    message = f"Hello from worker 0 {secrets.token_hex(3)}"
    await viewers[0].fill("#chat-input", message)
    await viewers[0].press("#chat-input", "Enter")
    for page in (viewers[1], studio):
        await expect(page, f"#chat li:has-text('{message}')", "chat-across-workers")

    # The seller highlights the product: both viewers' cards show it with its stock.
    await studio.click(f"[data-highlight='{product['id']}']")
    card = f"#product [data-product-id='{product['id']}']"
    for page in viewers:
        await page.wait_for_selector(card, timeout=TIMEOUT)
        assert await page.get_attribute(f"{card} [data-stock]", "data-stock") == "5"

    # The viewer on worker 1 buys; the stock update reaches both pages, the order the studio.
    await buy_with_a_new_address(viewers[1], card, "workers-viewer-checkout")
    for page in viewers:
        await page.wait_for_function(
            f"() => document.querySelector(\"{card} [data-stock]\")?.dataset.stock === '4'", timeout=TIMEOUT
        )
    await expect(studio, "#orders li[data-order-id]", "studio-order")
    assert await studio.text_content("#order-count") == "1"
    await shoot(viewers[0], "workers-viewer-w0-stock")
    await shoot(studio, "workers-studio-order")

    for watch in (studio_watch, *watches):
        assert watch.foreign == [], watch.foreign
        assert watch.real_errors() == [], watch.real_errors()
