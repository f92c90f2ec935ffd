"""Issue 13, finding 3: nested JSON is refused by one bounded decoder, over HTTP and WebSocket.

`[` x 100,000 used to reach `json.loads`, whose recursion raised RecursionError (a 500
on any JSON route, no login needed); 4 KB of `[` over the events WebSocket gave an
`internal_error` event.
"""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient

from signaling import bounded_json
from signaling.bounded_json import Malformed
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import closing, ws_client  # noqa: F401 - closing is a fixture

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b"[" * 5_000 + b"]" * 5_000,
    b'{"a":' * 1_000 + b"1" + b"}" * 1_000,
    b'{"email": ' + b"[" * 2_000 + b"]" * 2_000 + b"}",
], ids=["open-100k", "balanced-5k", "objects-1k", "inside-a-field"])
async def test_deeply_nested_bodies_are_400_without_login(client: TestClient, body: bytes) -> None:
    resp = await client.post("/api/v1/auth/login", data=body, headers=JSON)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_deeply_nested_bodies_are_400_on_signed_in_routes(client: TestClient, factory: Factory) -> None:
    user = await factory.user()
    for path in ("/api/v1/me/addresses", "/api/v1/checkout/session", "/api/v1/me/cart/items"):
        resp = await client.post(path, data=b"[" * 100_000, headers={**JSON, **user.headers, "Idempotency-Key": "k"})
        assert resp.status == 400, (path, await resp.text())
        assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_bodies_of_tens_of_thousands_of_values_are_refused_before_decoding(client: TestClient) -> None:
    body = json.dumps({"email": "a@b.test", "password": [0] * 50_000}).encode()
    resp = await client.post("/api/v1/auth/login", data=body, headers=JSON)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_lone_surrogates_are_refused_and_pairs_kept(client: TestClient, factory: Factory) -> None:
    resp = await client.post(
        "/api/v1/auth/signup", data=b'{"email": "x@y.test", "password": "long enough pw", "name": "a\\ud800"}',
        headers=JSON,
    )
    assert resp.status == 400, await resp.text()
    resp = await client.post(
        "/api/v1/auth/signup", data=b'{"email": "s@y.test", "password": "long enough pw", "name": "a\\ud83d\\ude00"}',
        headers=JSON,
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["user"]["name"] == "a\N{GRINNING FACE}"


async def test_four_kilobytes_of_brackets_over_the_websocket_are_an_error_event(
    client: TestClient, factory: Factory,
    closing,  # noqa: F811 - the fixture imported above
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    c = await ws_client(client, livestream_id, seller.access_token)
    closing.append(c)
    for raw in ("[" * 4096, "[" * 2000 + "]" * 2000, '{"type": "chat:send", "payload": ' + "[" * 100 + "]" * 100 + "}"):
        await c.send_raw(raw)
        error = await c.expect("error")
        assert error["code"] == "malformed_json", raw[:40]
    await c.send("chat:send", message="still here", ref="ok")
    await c.expect("ack", ref="ok")
    assert not [e for e in c.inbox.of("error") if e["code"] == "internal_error"]


@pytest.mark.parametrize(("text", "depth"), [
    ("[]", 1), ("[[]]", 2), ("[{}]", 2), ('["[[[[", {"a": "]]]}"}]', 2), ('["\\"[[["]', 1),
    ("[" * 8 + "]" * 8, 8), ('[{"a":' * 4 + "1" + "}]" * 4, 8), ("[[],[[]],[[[]]]]", 4),
])
def test_depth_is_measured_outside_strings(text: str, depth: int) -> None:
    assert json.loads(text) is not None
    bounded_json.loads(text, max_depth=depth)
    with pytest.raises(Malformed):
        bounded_json.loads(text, max_depth=depth - 1)


def test_decoder_limits() -> None:
    with pytest.raises(Malformed):
        bounded_json.loads(b"\xff\xfe[]")  # not UTF-8
    with pytest.raises(bounded_json.TooLarge):
        bounded_json.loads("[1]", max_chars=2)
    assert bounded_json.loads(json.dumps([1] * 99), max_values=100) == [1] * 99
    with pytest.raises(Malformed):
        bounded_json.loads(json.dumps([1] * 101), max_values=100)
    # commas and brackets inside strings are not values
    assert bounded_json.loads(json.dumps(["a,b,[c]{d}" * 50]), max_values=5)
    with pytest.raises(Malformed):
        bounded_json.loads(json.dumps(["ab"] * 300), max_values=100)
    assert bounded_json.loads('"\\\\ud800"') == "\\ud800"  # an escaped backslash, not a surrogate
