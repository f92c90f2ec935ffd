"""Fuzz WHIP/WHEP with mutations of real offers: no 5xx, and every 4xx says why.

The seeds in tests/media/offers/ were captured from real clients: Chromium (a canvas
and WebAudio track, plus the `events` DataChannel), aiortc and ffmpeg's WHIP muxer.
Each case deletes, duplicates, swaps or garbles lines of one seed and posts it over
HTTP to publish (with the stream key) and to watch (of a live room).

The default run is a few hundred cases (well under a minute); SHOPSTREAM_FUZZ_LONG=1
runs thousands. SHOPSTREAM_FUZZ_SEED picks another random sequence.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from server.config import Settings
from tests.conftest import make_settings
from tests.factories import Factory
from tests.signaling.test_whip_http import SDP, livestream, publish_http

OFFERS = Path(__file__).with_name("offers")
PUBLISH_SEEDS = ("aiortc_publish.sdp", "chromium_publish.sdp", "ffmpeg_whip_publish.sdp")
WATCH_SEEDS = ("aiortc_watch.sdp", "chromium_watch.sdp")
LONG = os.environ.get("SHOPSTREAM_FUZZ_LONG", "") not in ("", "0")
CASES = 3000 if LONG else 100  # per endpoint
SEED = int(os.environ.get("SHOPSTREAM_FUZZ_SEED", "1313"))

pytestmark = pytest.mark.timeout(3600 if LONG else 240)

# Values that broke or may break a parser: empty, huge, negative, non-ASCII, separators.
GARBAGE = (
    "", " ", "0", "-1", "65536", "4294967296", "99999999999999999999", "x", "::", "::::",
    "é", "\u00ff\u00fe", "%s%n", "NaN", "1e309", "/", "//", "a=b=c", ";;;", "=", "*",
    "sha-256", "sha-256 ZZ", "sha-999 00:11", "00:11:22", "actpass", "holdconn",
    "0 0 0 0 0 0 0 0 0 0", "IN IP4", "IN IP6 ::1", "UDP/TLS/RTP/SAVPF", "BUNDLE 9",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host", "x" * 300,
)


def load(name: str) -> list[str]:
    """Return the lines of a captured offer, without their CRLF."""
    return (OFFERS / name).read_text().replace("\r\n", "\n").strip("\n").split("\n")


def _garble(line: str, rng: random.Random) -> str:
    """Replace one token of a line (after '=', ':' or a space) with a garbage value."""
    cuts = [i + 1 for i, ch in enumerate(line) if ch in "=: /;"]
    if not cuts:
        return rng.choice(GARBAGE)
    start = rng.choice(cuts)
    ends = [i for i in range(start, len(line)) if line[i] in " :;/"] + [len(line)]
    end = rng.choice(ends[:3])
    return line[:start] + rng.choice(GARBAGE) + line[end:]


MUTATIONS: dict[str, Callable[[list[str], random.Random], None]] = {
    "delete": lambda lines, rng: lines.pop(rng.randrange(1, len(lines))),
    "duplicate": lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), rng.choice(lines[1:])),
    "swap": lambda lines, rng: _swap(lines, rng),
    "garble": lambda lines, rng: _set(lines, rng, lambda line: _garble(line, rng)),
    "truncate": lambda lines, rng: _set(lines, rng, lambda line: line[: rng.randrange(len(line) + 1)]),
    "delete-rtpmap": lambda lines, rng: _delete_matching(lines, rng, "a=rtpmap:"),
    "delete-section-line": lambda lines, rng: _delete_matching(
        lines, rng, ("a=mid:", "a=fingerprint:", "a=ice-", "a=setup:", "m=", "a=group:", "c=")
    ),
}


def _swap(lines: list[str], rng: random.Random) -> None:
    i, j = rng.randrange(1, len(lines)), rng.randrange(1, len(lines))
    lines[i], lines[j] = lines[j], lines[i]


def _set(lines: list[str], rng: random.Random, change: Callable[[str], str]) -> None:
    i = rng.randrange(1, len(lines))
    lines[i] = change(lines[i])


def _delete_matching(lines: list[str], rng: random.Random, prefix: str | tuple[str, ...]) -> None:
    found = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    if found:
        lines.pop(rng.choice(found))


def mutate(seed_lines: list[str], rng: random.Random) -> tuple[str, str]:
    """Return one mutated offer (1-3 mutations) and a description of what was done."""
    lines = list(seed_lines)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(sorted(MUTATIONS))
        MUTATIONS[name](lines, rng)
        done.append(name)
    return "\r\n".join(lines) + "\r\n", "+".join(done)


async def post_case(client: TestClient, url: str, offer: str, headers: dict[str, str]) -> tuple[int, str]:
    """Post one offer; return its status and, for a 4xx, the error; leave any session."""
    resp = await client.post(url, data=offer.encode("utf-8", "surrogateescape"), headers={**SDP, **headers})
    body = await resp.text()
    if resp.status == 201:
        assert (await client.delete(resp.headers["Location"])).status == 200
        return 201, ""
    if 400 <= resp.status < 500:
        error = (await resp.json())["error"]
        assert error["code"] and error["message"], (resp.status, body)
        return resp.status, f"{error['code']}: {error['message']}"
    return resp.status, body


async def fuzz(client: TestClient, targets: dict[str, tuple[str, dict[str, str]]],
               rng: random.Random) -> dict[int, int]:
    """Post CASES mutated offers, each to its seed's (url, headers); fail listing every 5xx."""
    statuses: dict[int, int] = {}
    failures = []
    loaded = {name: load(name) for name in targets}
    for _ in range(CASES):
        seed = rng.choice(sorted(targets))
        offer, how = mutate(loaded[seed], rng)
        url, headers = targets[seed]
        status, detail = await post_case(client, url, offer, headers)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500 or status not in (201, 400, 409, 415):
            failures.append(f"{status} {seed} {how}: {detail[:200]}\n{offer}")
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n\n" + "\n\n".join(failures[:5])
    return statuses


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Keep paused rooms for the whole run, so a publish between cases never meets an ended show."""
    return make_settings(tmp_path, publisher_grace_seconds=600.0)


async def test_seed_offers_are_accepted(client: TestClient, factory: Factory) -> None:
    """The unmutated seeds are valid: the fuzzer starts from offers the server serves."""
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    url = f"/api/v1/livestreams/{stream['id']}"
    auth = {"Authorization": f"Bearer {stream['streamKey']}"}
    for name in ("aiortc_publish.sdp", "chromium_publish.sdp"):
        status, detail = await post_case(client, url + "/publish", "\r\n".join(load(name)) + "\r\n", auth)
        assert status == 201, (name, detail)
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        for name in WATCH_SEEDS:
            status, detail = await post_case(client, url + "/watch", "\r\n".join(load(name)) + "\r\n", {})
            assert status == 201, (name, detail)
    finally:
        await publisher.close()


async def test_mutated_publish_offers_never_5xx(client: TestClient, factory: Factory) -> None:
    # A room keeps its first publisher's video codec, so each seed gets a livestream of its own.
    seller = await factory.seller()
    targets = {}
    for name in PUBLISH_SEEDS:
        stream = await livestream(factory, seller)
        targets[name] = (f"/api/v1/livestreams/{stream['id']}/publish",
                         {"Authorization": f"Bearer {stream['streamKey']}"})
    statuses = await fuzz(client, targets, random.Random(SEED))
    print("publish statuses:", statuses)
    assert statuses.get(400, 0) > 0  # the mutations do reach the SDP checks


async def test_mutated_watch_offers_never_5xx(client: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        url = f"/api/v1/livestreams/{stream['id']}/watch"
        statuses = await fuzz(client, {name: (url, {}) for name in WATCH_SEEDS}, random.Random(SEED + 1))
    finally:
        await publisher.close()
    print("watch statuses:", statuses)
    assert statuses.get(400, 0) > 0
