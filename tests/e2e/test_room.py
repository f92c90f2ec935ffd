"""The live room in Chromium: leaving counts at once, the ended state, the demo's
test-card publisher, and the room's layout on a phone.

The publisher is the demo's own (server/demo_live.py): a generated test card published
over the app's WHIP endpoint with the stream key, so no browser camera is needed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.demo_live import DemoPublisher
from server.keys import HUB, SFU
from tests.e2e.conftest import DESKTOP, PHONE, session_of, shoot
from tests.e2e.test_live_story import MISSING, expect
from tests.factories import Factory

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"backend routes not merged yet: {MISSING}")

TIMEOUT = 20_000
LAPTOP = {"width": 1366, "height": 768}
PLAYING = (
    "() => { const v = document.getElementById('video');"
    " return v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 3; }"
)


async def live_show(client: TestClient, factory: Factory, base_url: str, **product: Any) -> tuple[Any, dict[str, Any], DemoPublisher]:
    """Create a livestream with one highlighted product and publish the test card to it."""
    seller = await factory.seller()
    item = await factory.product(seller, **product)
    resp = await client.post("/api/v1/seller/livestreams", json={"title": "Friday Night Drop"}, headers=seller.headers)
    assert resp.status == 201, await resp.text()
    stream = await resp.json()
    resp = await client.post(
        f"/api/v1/seller/livestreams/{stream['id']}/products", json={"productId": item["id"]}, headers=seller.headers
    )
    assert resp.status == 201, await resp.text()
    publisher = DemoPublisher(base_url, stream["id"], stream["streamKey"], host_addresses=["127.0.0.1"])
    publisher.start()
    await asyncio.wait_for(publisher.connected.wait(), 30)
    resp = await client.post(
        f"/api/v1/seller/livestreams/{stream['id']}/highlight", json={"productId": item["id"]}, headers=seller.headers
    )
    assert resp.status in (200, 201), await resp.text()
    return seller, {**stream, "product": item}, publisher


def counts(client: TestClient, livestream_id: str) -> tuple[int, int]:
    """Return (viewers the room counts, viewer sessions the SFU holds)."""
    app = client.server.app
    room = app[HUB].hub.rooms.get(livestream_id)
    sfu_room = app[SFU].rooms.get(livestream_id)
    return (room.viewer_count(time.monotonic()) if room else 0, len(sfu_room.viewers) if sfu_room else 0)


async def wait_counts(client: TestClient, livestream_id: str, want: int, within: float) -> float:
    """Wait until both counts equal `want`; return how long it took (fail after `within` s)."""
    start = time.monotonic()
    while counts(client, livestream_id) != (want, want):
        assert time.monotonic() - start < within, (
            f"counts {counts(client, livestream_id)} after {within} s, expected {want}"
        )
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_closing_tabs_ends_viewer_sessions_within_two_seconds(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    _, stream, publisher = await live_show(client, factory, base_url, stock=5)
    try:
        shopper = await factory.user()
        # Signed-in viewers: leaving must not wait for a token check first.
        ctx, watch = await new_context(PHONE, session_of(shopper, "Sam"))
        pages = []
        for _ in range(3):
            page = await ctx.new_page()
            await page.goto(f"/live/{stream['id']}")
            await page.wait_for_function(PLAYING, timeout=TIMEOUT)
            await expect(page, "body[data-events='open']", "events-open")
            pages.append(page)
        await wait_counts(client, stream["id"], 3, 10)

        took = []
        for n, page in enumerate(pages):
            closing = time.monotonic()
            await page.close()
            await wait_counts(client, stream["id"], 2 - n, 2.0)
            took.append(time.monotonic() - closing)
        # Every close was seen well within the 2 s budget (figures printed for the report).
        print(f"viewer count correct after closing a tab in {', '.join(f'{t:.2f}' for t in took)} s")
        assert watch.real_errors() == [], watch.real_errors()
    finally:
        await publisher.stop()


async def test_a_hidden_tab_leaves_and_rejoins_when_shown(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    _, stream, publisher = await live_show(client, factory, base_url)
    try:
        ctx, _ = await new_context(PHONE)
        page = await ctx.new_page()
        await page.goto(f"/live/{stream['id']}")
        await page.wait_for_function(PLAYING, timeout=TIMEOUT)
        await wait_counts(client, stream["id"], 1, 10)
        # What a phone does when the shopper switches apps.
        set_visibility = (
            "state => { Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});"
            " document.dispatchEvent(new Event('visibilitychange')); }"
        )
        await page.evaluate(set_visibility, "hidden")
        await wait_counts(client, stream["id"], 0, 2.0)
        await page.evaluate(set_visibility, "visible")
        await page.wait_for_function(
            "() => document.body.dataset.mediaState === 'connected'", timeout=TIMEOUT
        )
        await wait_counts(client, stream["id"], 1, 10)
    finally:
        await publisher.stop()


async def test_the_viewer_buys_from_the_card_on_the_video_without_scrolling(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    _, stream, publisher = await live_show(
        client, factory, base_url, stock=3, variants=2, title="Limited drop hoodie", price=7900,
    )
    product = stream["product"]
    try:
        shopper = await factory.user()
        ctx, watch = await new_context(PHONE, session_of(shopper, "Sam"))
        page = await ctx.new_page()
        await page.goto(f"/live/{stream['id']}")
        await page.wait_for_function(PLAYING, timeout=TIMEOUT)
        card = f"#product [data-product-id='{product['id']}']"
        await expect(page, card, "card")
        # The card sits on the playing video, its Buy button inside the phone's viewport.
        box = await page.locator(f"{card} [data-buy]").bounding_box()
        video = await page.locator("#video").bounding_box()
        assert box and video and box["y"] + box["height"] <= PHONE["height"] and box["y"] >= 0, box
        assert video["height"] >= PHONE["height"] * 0.9, video  # a full-height player
        assert await page.evaluate("() => document.scrollingElement.scrollTop") == 0
        assert await page.get_attribute(f"{card} [data-stock]", "data-stock") == "3"
        assert await page.get_attribute(card, "data-state") == "low"
        await shoot(page, "room-phone-live")

        await page.click(f"{card} [data-buy]")
        sheet = "#buy-dialog"
        await expect(page, f"{sheet} [data-new-address]", "sheet")
        await expect(page, f"{sheet} [data-breakdown]", "breakdown")
        assert "$79.00" in (await page.text_content(f"{sheet} [data-breakdown]") or "")
        await page.fill(f"{sheet} [name=line1]", "1 Market Street")
        await page.fill(f"{sheet} [name=city]", "Springfield")
        await page.fill(f"{sheet} [name=postalCode]", "12345")
        await page.fill(f"{sheet} [name=country]", "US")
        await page.click(f"{sheet} [data-continue]")
        await expect(page, f"{sheet} [data-pay]", "payment")
        assert "$79.00" in (await page.text_content(f"{sheet} [data-total]") or "")
        await page.fill(f"{sheet} [name=cardNumber]", "4242 4242 4242 4242")
        await page.fill(f"{sheet} [name=exp]", "12/39")
        await page.fill(f"{sheet} [name=cvc]", "123")
        await shoot(page, "room-phone-checkout")
        # The video keeps playing under the sheet.
        before = await page.evaluate("() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")
        await page.click(f"{sheet} [data-pay]")
        await expect(page, f"{sheet} [data-paid]", "paid")
        # One success state: no payment form, no second message, no disabled Pay button.
        assert await page.locator(f"{sheet} [data-pay]").count() == 0
        assert await page.locator(f"{sheet} .status.ok").count() == 0
        await shoot(page, "room-phone-paid")
        await page.wait_for_function(
            f"() => document.querySelector(\"{card} [data-stock]\")?.dataset.stock === '2'", timeout=TIMEOUT
        )
        after = await page.evaluate("() => document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames")
        assert after > before
        await page.click(f"{sheet} [data-paid] button")
        assert watch.foreign == [] and watch.real_errors() == [], watch.real_errors()
    finally:
        await publisher.stop()


async def test_sold_out_shows_live_and_the_ended_show_is_one_clean_state(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    seller, stream, publisher = await live_show(client, factory, base_url, stock=1, title="Last one")
    product = stream["product"]
    try:
        pages = []
        for viewport in (PHONE, LAPTOP):
            ctx, watch = await new_context(viewport)
            page = await ctx.new_page()
            await page.goto(f"/live/{stream['id']}")
            await page.wait_for_function(PLAYING, timeout=TIMEOUT)
            await expect(page, "body[data-events='open']", "events-open")
            pages.append((page, watch))
        # The last unit goes (stock change by the seller): every card shows sold out.
        resp = await client.patch(
            f"/api/v1/seller/products/{product['id']}/variants/{product['variantIds'][0]}",
            json={"stockDelta": -1, "reason": "sold at the market"}, headers=seller.headers,
        )
        assert resp.status == 200, await resp.text()
        for page, _ in pages:
            await expect(page, "#product [data-state='sold-out']", "sold-out")
            assert await page.is_disabled("#product [data-buy]")

        # After `ended` no page tries to watch again (no WHEP offer, no WebSocket).
        retries: list[str] = []
        for page, _ in pages:
            page.on("request", lambda r: retries.append(r.url) if "/watch" in r.url or "/events" in r.url else None)
        resp = await client.post(f"/api/v1/seller/livestreams/{stream['id']}/end", headers=seller.headers)
        assert resp.status == 200, await resp.text()
        for page, _ in pages:
            await expect(page, "body[data-stream-state='ended']", "ended")
        ended_at = len(retries)
        for (page, watch), name in zip(pages, ("phone", "laptop"), strict=True):
            await expect(page, f"#ended-products [data-product-id='{product['id']}']", "ended-products")
            # Give a reconnect loop the time it would need to show itself.
            await asyncio.sleep(3)
            assert await page.is_visible("#ended")
            assert not await page.is_visible("#unmute")
            assert not await page.is_visible("#overlay")
            assert "Chat connection lost" not in (await page.text_content("body") or "")
            assert await page.get_attribute("body", "data-media-state") != "reconnecting"
            await shoot(page, f"room-{name}-ended")
            assert watch.real_errors() == [], watch.real_errors()
        # Nobody is counted any more and no session tries to come back.
        await asyncio.sleep(2)
        assert counts(client, stream["id"]) == (0, 0)
        assert retries[ended_at:] == [], retries
    finally:
        await publisher.stop()


async def test_laptop_room_keeps_a_side_column(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    _, stream, publisher = await live_show(client, factory, base_url, stock=12)
    try:
        for viewport, name in ((LAPTOP, "laptop"), (DESKTOP, "desktop")):
            ctx, watch = await new_context(viewport)
            page = await ctx.new_page()
            await page.goto(f"/live/{stream['id']}")
            await page.wait_for_function(PLAYING, timeout=TIMEOUT)
            await expect(page, "#product [data-buy]", "card")
            video = await page.locator("#video").bounding_box()
            dock = await page.locator(".room-dock").bounding_box()
            assert video and dock and dock["x"] >= video["x"] + video["width"] - 1, (video, dock)
            for selector in ("#product [data-buy]", "#chat-input"):
                box = await page.locator(selector).bounding_box()
                assert box and box["y"] + box["height"] <= viewport["height"], (selector, box)
            await shoot(page, f"room-{name}-live")
            assert watch.real_errors() == [], watch.real_errors()
    finally:
        await publisher.stop()


async def test_going_live_while_another_source_is_live_says_so_and_stops(
    new_context: Any, factory: Factory, client: TestClient, base_url: str,
) -> None:
    seller, stream, publisher = await live_show(client, factory, base_url)
    try:
        ctx, watch = await new_context(LAPTOP, session_of(seller, "Maya"))
        page = await ctx.new_page()
        publishes: list[str] = []
        page.on("request", lambda r: publishes.append(r.url) if r.url.endswith("/publish") else None)
        await page.goto(f"/studio/{stream['id']}")
        await page.wait_for_function("() => document.getElementById('preview').videoWidth > 0", timeout=TIMEOUT)
        await page.click("#go-live")
        await expect(page, "#status:has-text('Another source is already live')", "conflict")
        assert await page.get_attribute("body", "data-publish-state") == "error"
        assert not await page.is_disabled("#go-live")
        # One attempt, no retry loop against the live source.
        await asyncio.sleep(3)
        assert len(publishes) == 1, publishes
        # The browser logs the refused offer itself (a 409, its reason in the status line);
        # nothing else went wrong.
        others = [e for e in watch.real_errors() if "status of 409 (Conflict" not in e]
        assert others == [], others
    finally:
        await publisher.stop()
