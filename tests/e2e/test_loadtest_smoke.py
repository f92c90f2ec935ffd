"""The smoke load test against a real server on a TCP port: the report's invariants hold.

It needs the whole show (events channel, checkout, seller livestreams and products), so
it is skipped on a tree where those routes are not registered yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import report as reporting
from benchmarks.loadtest import run
from benchmarks.scenario import Scenario, build
from server.app import build_api
from tests.factories import Factory

NEEDED = (
    "/api/v1/livestreams/{id}/events",
    "/api/v1/checkout/session",
    "/api/v1/seller/livestreams",
    "/api/v1/seller/products",
)
MISSING = [path for path in NEEDED if path not in {spec.path for spec in build_api().specs}]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
needs_the_whole_show = pytest.mark.skipif(
    bool(MISSING), reason=f"routes not registered yet: {', '.join(MISSING)}"
)


@pytest.fixture
async def live_server(aiohttp_server, clean_db, settings):  # type: ignore[no-untyped-def]
    from server.app import create_app

    app = create_app(settings, clean_db, run_migrations=False)
    return await aiohttp_server(app, host="127.0.0.1")


@needs_the_whole_show
async def test_smoke_scenario_holds_its_invariants(live_server, factory: Factory, tmp_path: Path) -> None:
    admin = await factory.admin()
    scenario = build(
        "smoke", target=f"http://127.0.0.1:{live_server.port}", results_dir=str(tmp_path),
        admin_email=admin.email, admin_password=admin.password,
    )
    assert (scenario.media_viewers, scenario.buyers, scenario.drop_units) == (3, 8, 5)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(f"loadtest: {line}", flush=True)  # progress shows with -s; kept for the assertion

    result = await run(scenario, log=log)

    assert result["invariants"] == {
        "every_viewer_got_frames": True, "no_oversell": True, "no_server_errors": True,
    }, "\n".join(lines)
    assert result["errors"] == {}, result["errors"]
    # Every media viewer connected, decoded a first frame and kept receiving video.
    assert result["joins"]["media_joined"] == 3 and result["joins"]["ws_joined"] == 5
    assert result["joins"]["first_frame"]["n"] == 3
    assert result["media"]["frames_min"] > 5 * 10  # at least 10 fps over the show
    # Eight buyers raced for five units: exactly five sold, the rest were out of stock.
    drop = result["drop"]
    assert drop["successes"] == 5, drop
    assert set(drop["failures"]) <= {"out_of_stock"} and sum(drop["failures"].values()) == 3, drop
    assert drop["oversold"] == 0 and drop.get("stock_after", 0) == 0
    # Chat reached the other connected viewers.
    assert result["chat"]["sent"] > 0 and result["chat"]["delivered_share"] > 0.9
    assert len(result["timeline"]) >= 10
    json_path, png_path = reporting.write(result, tmp_path)
    assert json_path.exists() and png_path is not None and png_path.stat().st_size > 0
    assert "invariants" in reporting.table(result)


async def media_only_scenario(server_port: int, factory: Factory, tmp_path: Path, **overrides: Any) -> Scenario:
    """Return the smoke scenario's media half alone (publisher + WHEP viewers, no chat or
    drop) against a new livestream on the server at ``server_port``, as against the demo's."""
    from tests.signaling.test_whip_http import livestream

    seller = await factory.seller()
    stream = await livestream(factory, seller)
    return build(
        "smoke", target=f"http://127.0.0.1:{server_port}", results_dir=str(tmp_path),
        livestream_id=stream["id"], stream_key=stream["streamKey"], duration=6.0, drop_at=-1.0,
        ws_share=0.0, chat_rate=0.0, **overrides,
    )


async def test_media_only_run_on_an_existing_livestream(live_server, factory: Factory, tmp_path: Path) -> None:
    """The media half alone (publisher + WHEP viewers), as against the demo's livestream."""
    scenario = await media_only_scenario(live_server.port, factory, tmp_path, viewers=2)
    result = await run(scenario, log=lambda line: None)
    assert result["invariants"]["every_viewer_got_frames"], result["media"]
    assert result["invariants"]["no_server_errors"], result["errors"]
    assert result["joins"]["media_joined"] == 2 and result["media"]["frames_min"] > 30
    assert result["drop"]["skipped"] == "disabled"
    # The server's own CPU and memory were read from /metrics.
    assert result["server"]["rss_max"] and result["server"]["cpu_mean"] is not None
