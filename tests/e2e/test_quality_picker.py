"""The live page's quality picker pins the viewer's quality through the events channel."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import SFU
from tests.e2e.conftest import PHONE, session_of
from tests.factories import Factory
from tests.media.peers import wait_for
from tests.signaling.test_whip_http import publish_http

TIMEOUT = 20_000


async def test_the_viewer_picks_a_quality_and_the_sfu_applies_it(
    new_context: Any, factory: Factory, client: TestClient,
) -> None:
    seller = await factory.seller()
    shopper = await factory.user()
    resp = await client.post("/api/v1/seller/livestreams", json={"title": "Quality"}, headers=seller.headers)
    assert resp.status == 201, await resp.text()
    stream_id = (await resp.json())["id"]
    publisher, _ = await publish_http(client, stream_id, seller.access_token)
    try:
        context, _watch = await new_context(PHONE, session_of(shopper, "Sam"))
        page = await context.new_page()
        await page.goto(f"/live/{stream_id}")
        await page.wait_for_selector("body[data-events='open']", timeout=TIMEOUT)
        await page.wait_for_function("() => document.getElementById('video').videoWidth > 0", timeout=TIMEOUT)
        room = client.app[SFU].rooms[stream_id]

        def qualities() -> list[str]:
            return [entry.quality for entry in room.viewers.values()]

        assert qualities() == ["auto"]
        await page.select_option("#quality", "low")
        await wait_for(lambda: qualities() == ["low"], timeout=15)
        await page.select_option("#quality", "high")
        await wait_for(lambda: qualities() == ["high"], timeout=15)
        # A single-layer publisher: no layer to show, and no error either.
        assert await page.text_content("#quality-now") == ""
        assert (await page.text_content("#status") or "").strip() == ""
    finally:
        await publisher.close()
