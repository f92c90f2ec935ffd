"""Simulcast offers: RIDs read from the offer, and the layer choice by measured bitrate.

The end-to-end proof (Chromium publishing three layers in either order) is in
tests/e2e/test_simulcast.py; these pin the rules without a browser.
"""

from __future__ import annotations

import re

import pytest

from media import BadOffer
from media.sdp import answer_simulcast, plan_publish
from media.simulcast import SILENCE_SECONDS, WINDOW_SECONDS, LayerSelector

from .peers import PatternTrack, local_offer, new_pc


async def simulcast_offer(lines: list[str]) -> str:
    pc = new_pc()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    try:
        offer = await local_offer(pc)
    finally:
        await pc.close()
    return re.sub(r"(\r\na=mid:0)", "\r\n" + "\r\n".join(lines) + r"\1", offer, count=1)


async def test_offer_rids_become_the_plan_and_the_answer() -> None:
    offer = await simulcast_offer(["a=rid:q send", "a=rid:h send", "a=rid:f send",
                                   "a=simulcast:send q;h;~f"])
    plan = plan_publish(offer)
    assert plan.simulcast_rids == ("q", "h", "f")
    answer = answer_simulcast("v=0\r\nm=video 9 X 96\r\na=mid:0\r\n", plan.simulcast_rids)
    assert answer.endswith("a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n")


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (["a=rid:a send", "a=simulcast:send a;b"], "'b' has no 'a=rid:b send'"),
        ([*(f"a=rid:{r} send" for r in "abcd"), "a=simulcast:send a;b;c;d"], "at most 3"),
        (["a=rid:a recv", "a=simulcast:recv a"], "must be 'send <rids>'"),
    ],
)
async def test_simulcast_offers_the_sfu_cannot_serve_say_why(lines: list[str], reason: str) -> None:
    with pytest.raises(BadOffer, match=re.escape(reason)):
        plan_publish(await simulcast_offer(lines))


def feed(selector: LayerSelector, rates: dict[int, int], start: float, seconds: float) -> float:
    """Send each SSRC's bytes-per-tick for ``seconds`` in 10 ms ticks; return the end time."""
    now = start
    while now < start + seconds:
        for ssrc, size in rates.items():
            selector.on_packet(ssrc, size, now)
        now += 0.01
    return now


def test_the_richest_layer_is_chosen_whatever_its_rid_order() -> None:
    selector = LayerSelector(("f", "h", "q"))
    for ssrc, rid in ((1, "f"), (2, "h"), (3, "q")):
        selector.learn(ssrc, rid)
    # The low layer arrives first and is forwarded at once...
    assert selector.on_packet(3, 100, 0.0) == (True, True)
    # ...until the richer layers are measured.
    now = feed(selector, {3: 100, 2: 400, 1: 1500}, 0.0, WINDOW_SECONDS * 3)
    assert selector.chosen_rid == "f"
    # A still scene on the top layer (few bits) does not move the choice down.
    now = feed(selector, {3: 100, 2: 400, 1: 200}, now, WINDOW_SECONDS * 3)
    assert selector.chosen_rid == "f"
    # A top layer that stops (bandwidth dropped) hands over to the best one left.
    feed(selector, {3: 100, 2: 400}, now, SILENCE_SECONDS + WINDOW_SECONDS * 2)
    assert selector.chosen_rid == "h"


def test_packets_of_unknown_layers_are_not_forwarded() -> None:
    selector = LayerSelector(("a",))
    assert selector.on_packet(7, 100, 0.0) == (False, False)
    selector.learn(7, "zz")  # not an offered RID
    assert selector.on_packet(7, 100, 0.0) == (False, False)
