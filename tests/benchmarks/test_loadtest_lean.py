"""The load test with lean viewers for the bulk of the audience (scenario `lean_share`).

A short media-only run against a real server: the lean viewers count every packet at
their sockets, the aiortc viewers among them still time a first decoded frame.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report as reporting
from benchmarks.loadtest import run
from benchmarks.scenario import build
from tests.e2e.test_loadtest_smoke import live_server, media_only_scenario  # noqa: F401
from tests.factories import Factory

pytestmark = [pytest.mark.timeout(120)]


def test_lean_viewers_are_spread_and_counted() -> None:
    scenario = build("max_2core", lean_share=0.9)
    assert (scenario.media_viewers, scenario.lean_viewers) == (120, 108)
    full = [i for i in range(scenario.media_viewers) if not scenario.is_lean(i)]
    assert len(full) == 12 and full[0] < 10 and full[-1] > 110  # spread over the ramp
    assert not build(viewers=4, ws_share=0.0).is_lean(0) and build(viewers=4, ws_share=0.0, lean_share=1.0).is_lean(3)


async def test_lean_viewers_in_a_media_only_run(live_server, factory: Factory, tmp_path: Path) -> None:  # noqa: F811
    scenario = await media_only_scenario(live_server.port, factory, tmp_path, publisher="aiortc",
                                         viewers=6, lean_share=0.67)
    assert scenario.lean_viewers == 4
    result = await run(scenario, log=lambda line: None)
    media = result["media"]
    assert result["invariants"]["every_viewer_got_frames"], media
    assert result["invariants"]["no_server_errors"], result["errors"]
    assert result["joins"]["media_joined"] == 6 and (media["lean_viewers"], media["aiortc_viewers"]) == (4, 2)
    lean = [v for v in media["per_viewer"] if v["kind"] == "lean"]
    assert len(lean) == 4 and all(v["frames"] > 30 and v["video_packets"] > v["frames"] for v in lean), lean
    assert all(v["loss"] is not None and v["loss"] < 0.05 for v in lean), lean
    # First-frame times come from the aiortc viewers only.
    assert result["joins"]["first_frame"]["n"] == 2
    assert "(4 lean)" in reporting.table(result)
