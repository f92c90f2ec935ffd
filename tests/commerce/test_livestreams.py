"""Livestreams: records, state machine, stream keys, products, highlights, chat history."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp import web

from commerce import livestreams as ls
from commerce.errors import Forbidden, Invalid, InvalidState, NotFound
from server.app import create_app
from server.keys import DB, HUB
from tests.commerce.conftest import CommerceRows
from tests.factories import Factory

SELLER_LS = "/api/v1/seller/livestreams"


async def _create(client, seller, **body):
    resp = await client.post(SELLER_LS, json={"title": "Friday drop", **body}, headers=seller.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


class RecordingHub:
    """Stands in for the realtime hub at the app boundary: records what rooms would hear."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    async def emit(self, livestream_id, event_type, payload, audience="all"):
        self.events.append((livestream_id, event_type, payload))


@pytest.fixture
def hub() -> RecordingHub:
    return RecordingHub()


@pytest.fixture
async def client(aiohttp_client, clean_db, settings, hub):  # type: ignore[no-untyped-def]
    """The app with a recording hub in place of the realtime one.

    The realtime routes put their hub in app[HUB] on startup, so the recording one is
    set by a cleanup context that runs after theirs.
    """
    app = create_app(settings, clean_db, run_migrations=False)

    async def recording_hub(app: web.Application):  # type: ignore[no-untyped-def]
        app[HUB] = hub
        yield

    app.cleanup_ctx.append(recording_hub)
    return await aiohttp_client(app)


async def test_create_generates_key_and_room_and_hides_key_publicly(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller, description="New things", scheduledAt="2030-05-01T18:00:00Z")
    assert stream["status"] == "scheduled" and stream["streamKey"].startswith("sk_")
    assert stream["room"] and stream["scheduledAt"].startswith("2030-05-01T18:00:00")
    other = await _create(client, seller)
    assert other["streamKey"] != stream["streamKey"] and other["room"] != stream["room"]
    public = await (await client.get(f"/api/v1/livestreams/{stream['id']}")).json()
    assert "streamKey" not in public and public["seller"]["id"] == seller.seller_id
    assert public["viewers"] == {"peak": 0, "total": 0, "watchSeconds": 0}
    listing = await (await client.get("/api/v1/livestreams")).json()
    assert all("streamKey" not in item for item in listing["items"]) and len(listing["items"]) == 2
    own = await (await client.get(SELLER_LS, headers=seller.headers)).json()
    assert {s["streamKey"] for s in own["items"]} == {stream["streamKey"], other["streamKey"]}


async def test_create_and_patch_validation(client, factory: Factory) -> None:
    seller = await factory.seller()
    for body, field in (
        ({}, "title"), ({"title": ""}, "title"), ({"title": "x", "streamKey": "sk_mine"}, "streamKey"),
        ({"title": "x", "scheduledAt": "soon"}, "scheduledAt"),
    ):
        resp = await client.post(SELLER_LS, json=body, headers=seller.headers)
        assert resp.status == 400, body
        assert field in (await resp.json())["error"]["details"]["fields"], body
    stream = await _create(client, seller)
    for body, field in (
        ({"chatSettings": {"slowModeSeconds": -1}}, "chatSettings.slowModeSeconds"),
        ({"chatSettings": {"blockedWords": "bad"}}, "chatSettings.blockedWords"),
        ({"status": "live"}, "status"),
    ):
        resp = await client.patch(f"{SELLER_LS}/{stream['id']}", json=body, headers=seller.headers)
        assert resp.status == 400, body
        assert field in (await resp.json())["error"]["details"]["fields"], body


async def test_patch_title_and_merge_chat_settings(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller)
    url = f"{SELLER_LS}/{stream['id']}"
    resp = await client.patch(url, json={"title": "New title", "chatSettings": {"slowModeSeconds": 5}}, headers=seller.headers)
    assert resp.status == 200
    resp = await client.patch(url, json={"chatSettings": {"blockedWords": ["spam"], "blockLinks": True}}, headers=seller.headers)
    data = await resp.json()
    assert data["title"] == "New title"
    assert data["chatSettings"] == {"slowModeSeconds": 5, "blockedWords": ["spam"], "blockLinks": True}
    await client.post(f"{url}/start", headers=seller.headers)
    resp = await client.patch(url, json={"scheduledAt": "2031-01-01T00:00:00Z"}, headers=seller.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_state"


async def test_start_and_end_via_http(client, factory: Factory, hub: RecordingHub) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller)
    url = f"{SELLER_LS}/{stream['id']}"
    live = await (await client.post(f"{url}/start", headers=seller.headers)).json()
    assert live["status"] == "live" and live["isLive"] and live["startedAt"]
    resp = await client.post(f"{url}/start", headers=seller.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_state"
    ended = await (await client.post(f"{url}/end", headers=seller.headers)).json()
    assert ended["status"] == "ended" and ended["endedAt"] and not ended["isLive"]
    assert [(e[1], e[2]) for e in hub.events] == [
        ("stream:state", {"state": "live"}), ("stream:state", {"state": "ended"}),
    ]


ALL_STATES = ("scheduled", "live", "paused", "ended")
LEGAL = {("scheduled", "live"), ("live", "paused"), ("live", "ended"), ("paused", "live"), ("paused", "ended")}


@pytest.mark.parametrize("source", ALL_STATES)
@pytest.mark.parametrize("target", ALL_STATES)
async def test_state_machine(client, factory: Factory, rows: CommerceRows, source: str, target: str) -> None:
    seller = await factory.seller()
    stream_id = await rows.livestream(seller, status=source)
    async with client.app[DB].transaction(system=True) as conn:
        if (source, target) in LEGAL:
            result = await ls.set_state(conn, stream_id, target)
            assert result["status"] == target
        else:
            with pytest.raises(InvalidState):
                await ls.set_state(conn, stream_id, target)
    # The HTTP controls are the same machine: start = -> live, end = -> ended.
    action = {"live": "start", "ended": "end"}.get(target)
    if action and (source, target) not in LEGAL:
        resp = await client.post(f"{SELLER_LS}/{stream_id}/{action}", headers=seller.headers)
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_state"


async def test_set_state_unknown_stream_and_state(client) -> None:
    async with client.app[DB].transaction(system=True) as conn:
        with pytest.raises(NotFound):
            await ls.set_state(conn, str(uuid.uuid4()), "live")
        with pytest.raises(Invalid):
            await ls.set_state(conn, str(uuid.uuid4()), "exploded")


async def test_racing_starts_move_the_stream_once(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller)
    responses = await asyncio.gather(*(
        client.post(f"{SELLER_LS}/{stream['id']}/start", headers=seller.headers) for _ in range(8)
    ))
    assert sorted(r.status for r in responses) == [200] + [409] * 7


async def test_publish_grant_and_key_rotation(client, factory: Factory) -> None:
    seller, stranger = await factory.seller(), await factory.user()
    stream = await _create(client, seller)
    old_key = stream["streamKey"]
    async with client.app[DB].transaction(system=True) as conn:
        grant = await ls.check_publish_grant(conn, stream["id"], stream_key=old_key)
        assert grant["sellerId"] == seller.seller_id and grant["via"] == "stream_key"
        grant = await ls.check_publish_grant(conn, stream["id"], user_id=seller.id)
        assert grant["userId"] == seller.id and grant["room"] == stream["room"]
        for kwargs in ({"user_id": stranger.id}, {"stream_key": "sk_wrong"}, {}):
            with pytest.raises(Forbidden):
                await ls.check_publish_grant(conn, stream["id"], **kwargs)
        with pytest.raises(NotFound):
            await ls.check_publish_grant(conn, str(uuid.uuid4()), user_id=seller.id)
    rotated = await (await client.post(f"{SELLER_LS}/{stream['id']}/stream-key", headers=seller.headers)).json()
    assert rotated["streamKey"].startswith("sk_") and rotated["streamKey"] != old_key
    async with client.app[DB].transaction(system=True) as conn:
        with pytest.raises(Forbidden):
            await ls.check_publish_grant(conn, stream["id"], stream_key=old_key)
        assert (await ls.check_publish_grant(conn, stream["id"], stream_key=rotated["streamKey"]))["via"] == "stream_key"
    await client.post(f"{SELLER_LS}/{stream['id']}/start", headers=seller.headers)
    await client.post(f"{SELLER_LS}/{stream['id']}/end", headers=seller.headers)
    async with client.app[DB].transaction(system=True) as conn:
        with pytest.raises(InvalidState):
            await ls.check_publish_grant(conn, stream["id"], user_id=seller.id)


async def test_products_attach_detach_and_highlight(client, factory: Factory, hub: RecordingHub) -> None:
    seller, other = await factory.seller(), await factory.seller()
    stream = await _create(client, seller)
    url = f"{SELLER_LS}/{stream['id']}"
    mine = await factory.product(seller, stock=4, variants=2)
    second = await factory.product(seller)
    foreign = await factory.product(other)
    # Highlight needs the product attached first.
    resp = await client.post(f"{url}/highlight", json={"productId": mine["id"]}, headers=seller.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "not_attached"
    assert (await client.post(f"{url}/products", json={"productId": foreign["id"]}, headers=seller.headers)).status == 404
    resp = await client.post(f"{url}/highlight", json={"productId": foreign["id"]}, headers=seller.headers)
    assert resp.status == 404
    for product in (mine, second, mine):  # attaching twice is harmless
        resp = await client.post(f"{url}/products", json={"productId": product["id"]}, headers=seller.headers)
        assert resp.status == 201
    listed = await (await client.get(f"/api/v1/livestreams/{stream['id']}/products")).json()
    assert [p["id"] for p in listed["items"]] == [mine["id"], second["id"]]
    assert [v["stock"] for v in listed["items"][0]["variants"]] == [4, 4]

    resp = await client.post(f"{url}/highlight", json={"productId": mine["id"]}, headers=seller.headers)
    assert resp.status == 200
    product = await resp.json()
    assert product["id"] == mine["id"] and product["currency"] == "USD" and len(product["variants"]) == 2
    assert hub.events == [(stream["id"], "product:highlighted", product)]
    public = await (await client.get(f"/api/v1/livestreams/{stream['id']}")).json()
    assert public["highlightedProductId"] == mine["id"]
    await client.post(f"{url}/highlight", json={"productId": second["id"]}, headers=seller.headers)
    public = await (await client.get(f"/api/v1/livestreams/{stream['id']}")).json()
    assert public["highlightedProductId"] == second["id"]

    resp = await client.delete(f"{url}/products/{second['id']}", headers=seller.headers)
    assert resp.status == 204
    assert (await client.delete(f"{url}/products/{second['id']}", headers=seller.headers)).status == 404
    listed = await (await client.get(f"/api/v1/livestreams/{stream['id']}/products")).json()
    assert [p["id"] for p in listed["items"]] == [mine["id"]]


async def test_draft_products_are_not_listed_publicly(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller)
    draft = await factory.product(seller, status="draft")
    resp = await client.post(f"{SELLER_LS}/{stream['id']}/products", json={"productId": draft["id"]}, headers=seller.headers)
    assert resp.status == 201 and len((await resp.json())["items"]) == 1
    listed = await (await client.get(f"/api/v1/livestreams/{stream['id']}/products")).json()
    assert listed["items"] == []
    # Nor can the room be shown a product nobody may buy.
    resp = await client.post(
        f"{SELLER_LS}/{stream['id']}/highlight", json={"productId": draft["id"]}, headers=seller.headers
    )
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "product_inactive"


async def test_public_listing_by_status_with_pagination(client, factory: Factory, rows: CommerceRows) -> None:
    seller = await factory.seller()
    ids = {s: await rows.livestream(seller, status=s) for s in ALL_STATES}
    live2 = await rows.livestream(seller, status="live")

    async def listing(query):
        return await (await client.get(f"/api/v1/livestreams?{query}")).json()

    assert {i["id"] for i in (await listing("status=live"))["items"]} == {ids["live"], ids["paused"], live2}
    assert [i["id"] for i in (await listing("status=upcoming"))["items"]] == [ids["scheduled"]]
    assert [i["id"] for i in (await listing("status=ended"))["items"]] == [ids["ended"]]
    seen, cursor = [], ""
    while True:
        page = await listing(f"limit=2&cursor={cursor}")
        seen += [i["id"] for i in page["items"]]
        if not page["nextCursor"]:
            break
        cursor = page["nextCursor"]
    assert sorted(seen) == sorted([*ids.values(), live2])
    assert (await client.get("/api/v1/livestreams?status=paused")).status == 400
    assert (await client.get("/api/v1/livestreams?cursor=%%%garbage")).status == 400
    assert (await client.get(f"/api/v1/livestreams/{uuid.uuid4()}")).status == 404


async def test_chat_history_pages_oldest_first_without_deleted(
    client, factory: Factory, rows: CommerceRows
) -> None:
    seller, user = await factory.seller(), await factory.user(name="Amy")
    stream_id = await rows.livestream(seller, status="live")
    sent = []
    for i in range(7):
        message_id = await rows.chat(stream_id, user, f"message {i}", deleted=(i == 3))
        if i != 3:
            sent.append(message_id)
    url = f"/api/v1/livestreams/{stream_id}/chat"
    first = await (await client.get(f"{url}?limit=4")).json()
    assert [m["message"] for m in first["items"]] == ["message 0", "message 1", "message 2", "message 4"]
    assert first["items"][0]["user"] == {"id": user.id, "name": "Amy"} and isinstance(first["items"][0]["ts"], int)
    second = await (await client.get(f"{url}?limit=4&cursor={first['nextCursor']}")).json()
    assert [m["message"] for m in second["items"]] == ["message 5", "message 6"]
    assert second["nextCursor"] is None
    assert [m["id"] for m in first["items"] + second["items"]] == sent
    assert (await client.get(f"/api/v1/livestreams/{uuid.uuid4()}/chat")).status == 404


async def test_record_viewer_stats(client, factory: Factory, rows: CommerceRows) -> None:
    seller = await factory.seller()
    stream_id = await rows.livestream(seller, status="live")
    async with client.app[DB].transaction(system=True) as conn:
        await ls.record_viewer_stats(conn, stream_id, peak=12, joined_delta=12, watch_seconds_delta=300)
        await ls.record_viewer_stats(conn, stream_id, peak=7, joined_delta=3, watch_seconds_delta=60)
        with pytest.raises(Invalid):
            await ls.record_viewer_stats(conn, stream_id, peak=-1)
        with pytest.raises(NotFound):
            await ls.record_viewer_stats(conn, str(uuid.uuid4()), peak=1)
        data = await ls.get_livestream(conn, stream_id)
    assert data["viewers"] == {"peak": 12, "total": 15, "watchSeconds": 360}


async def test_nul_in_text_is_400_not_a_database_error(client, factory: Factory) -> None:
    seller = await factory.seller()
    resp = await client.post(SELLER_LS, json={"title": "a\u0000b"}, headers=seller.headers)
    assert resp.status == 400 and "title" in (await resp.json())["error"]["details"]["fields"]
    stream = await _create(client, seller)
    resp = await client.patch(
        f"{SELLER_LS}/{stream['id']}", json={"chatSettings": {"blockedWords": ["x\u0000"]}}, headers=seller.headers
    )
    assert resp.status == 400


async def test_highlight_after_the_end_is_refused(client, factory: Factory, hub: RecordingHub) -> None:
    seller = await factory.seller()
    stream = await _create(client, seller)
    url = f"{SELLER_LS}/{stream['id']}"
    product = await factory.product(seller)
    await client.post(f"{url}/products", json={"productId": product["id"]}, headers=seller.headers)
    await client.post(f"{url}/start", headers=seller.headers)
    await client.post(f"{url}/end", headers=seller.headers)
    resp = await client.post(f"{url}/highlight", json={"productId": product["id"]}, headers=seller.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_state"
    assert [e[1] for e in hub.events] == ["stream:state", "stream:state"]
