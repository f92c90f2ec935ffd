"""The `cluster` load-test scenario, small, against three real nodes (issue 16).

Three `shopstream serve` processes share one PostgreSQL and one Redis, each with its own
ports and PUBLIC_URL. The load test publishes to the first node and spreads viewers,
chatters and buyers over all three; the run fails if an invariant breaks: a viewer on
any node without frames, a chat message missing on a node, an oversold unit.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from benchmarks import report as reporting
from benchmarks.loadtest import run
from benchmarks.scenario import build
from tests.e2e.test_cluster import cluster, redis_url  # noqa: F401 - redis_url is a fixture
from tests.factories import Factory

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_cluster_scenario_holds_its_invariants_on_every_node(
    clean_db: str, redis_url: str, tmp_path: Path,  # noqa: F811 - the fixture imported above
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c):
        async with aiohttp.ClientSession(base_url=a.url) as http:
            factory = Factory(http, clean_db)  # type: ignore[arg-type]
            try:
                admin = await factory.admin()
            finally:
                await factory.close()
        scenario = build(
            "cluster", target=a.url, nodes=f"{b.url},{c.url}", results_dir=str(tmp_path),
            admin_email=admin.email, admin_password=admin.password,
            duration=16.0, viewers=9, join_rate=9.0, ws_share=1 / 3, chat_rate=2.0,
            drop_at=9.0, drop_units=4, buy_share=1.0,
        )
        assert (scenario.media_viewers, scenario.ws_viewers, scenario.buyers) == (6, 3, 9)
        lines: list[str] = []

        def log(line: str) -> None:
            lines.append(line)
            print(f"loadtest: {line}", flush=True)

        result = await run(scenario, log=log)

    assert result["invariants"] == {
        "every_viewer_got_frames": True, "no_oversell": True, "no_server_errors": True,
        "chat_delivered_on_every_node": True,
    }, "\n".join(lines)
    assert result["errors"] == {}, result["errors"]
    nodes = result["nodes"]
    assert [n["url"] for n in nodes] == [a.url, b.url, c.url]
    for node in nodes:  # two media viewers and one WS viewer on each node, all served
        assert (node["media_joined"], node["viewers_without_frames"], node["ws_joined"]) == (2, 0, 1), node
        assert node["frames_min"] > 5 * 10, node  # at least 10 fps over the show
        assert node["chat_expected"] > 0 and node["chat_received"] == node["chat_expected"], node
    # The publisher's node originates; the other two relay to their own viewers.
    assert result["cluster"]["origin"] == "node-a", result["cluster"]
    assert result["cluster"]["relays"] == {"node-b": 2, "node-c": 2}, result["cluster"]
    # Nine buyers over three nodes raced for four units: exactly four sold.
    drop = result["drop"]
    assert drop["successes"] == 4 and set(drop["failures"]) == {"out_of_stock"}, drop
    assert drop["oversold"] == 0 and drop["stock_after"] == 0, drop
    text = reporting.table(result)
    assert "chat_delivered_on_every_node: ok" in text and f"{c.url}" in text and "node-a / node-b 2, node-c 2" in text
    json_path, png_path = reporting.write(result, tmp_path)
    assert json_path.exists() and png_path is not None and png_path.stat().st_size > 0
