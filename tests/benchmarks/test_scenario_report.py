"""Scenario files and flags, and the report's figures, table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report as reporting
from benchmarks.loadtest import parser
from benchmarks.scenario import SCENARIOS, ScenarioError, build, from_arguments


@pytest.mark.parametrize("name", ["smoke", "max_2core", "drop", "cluster"])
def test_ready_scenarios_load(name: str) -> None:
    scenario = build(SCENARIOS / f"{name}.toml")
    assert scenario.name == name
    assert scenario.drop_at < scenario.duration and scenario.buyers <= scenario.viewers


def test_flags_override_the_file_and_bad_values_are_refused(tmp_path: Path) -> None:
    args = parser().parse_args(["--scenario", "smoke", "--viewers", "20", "--no-decode-first-frames"])
    scenario = from_arguments(args)
    assert scenario.viewers == 20 and scenario.duration == 15.0 and not scenario.decode_first_frames
    with pytest.raises(ScenarioError, match="ws_share"):
        build(ws_share=1.5)
    with pytest.raises(ScenarioError, match="not loopback"):
        build(target="http://203.0.113.9:8080")
    assert build("cluster").node_urls == [f"http://127.0.0.1:{port}" for port in (8501, 8502, 8503)]
    with pytest.raises(ScenarioError, match="not loopback"):
        build(nodes="http://127.0.0.1:8082,http://203.0.113.9:8080")
    with pytest.raises(ScenarioError, match="twice"):
        build(nodes="http://127.0.0.1:8080/")
    typo = tmp_path / "typo.toml"
    typo.write_text("viewerz = 3\n")
    with pytest.raises(ScenarioError, match="viewerz"):
        build(typo)
    as_json = tmp_path / "big.json"
    as_json.write_text('{"viewers": 7, "duration": 30}')
    assert build(as_json).viewers == 7 and build(as_json).name == "big"


def test_percentiles_and_metrics_parsing() -> None:
    assert reporting.percentile([], 50) is None
    assert reporting.percentile([3, 1, 2, 4], 50) == 2
    assert reporting.percentile(list(range(1, 101)), 99) == 99
    text = (
        "process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 1.2e+08\n"
        'shopstream_room_viewers{room="r1"} 3.0\nshopstream_room_viewers{room="r2"} 9.0\n'
        '# TYPE shopstream_room_packets_in counter\nshopstream_room_packets_in_total{room="r1"} 40.0\n'
        '# TYPE shopstream_http_requests counter\n'
        'shopstream_http_requests_total{method="GET",route="/x",status="500"} 2.0\n'
        'shopstream_http_requests_total{method="GET",route="/x",status="200"} 7.0\n'
    )
    figures = reporting.parse_metrics(text, "r1")
    assert figures["cpu_seconds"] == 12.5 and figures["rss_bytes"] == 1.2e8
    assert figures["room_viewers"] == 3.0 and figures["room_packets_in"] == 40.0
    assert figures["http_5xx"] == 2.0


def test_table_json_and_plot(tmp_path: Path) -> None:
    spread = reporting.spread([0.05, 0.07])
    result = {
        "scenario": build().as_dict(),
        "joins": {"media_planned": 2, "media_joined": 2, "ws_planned": 1, "ws_joined": 1,
                  "connect": spread, "first_frame": spread, "ws_connect": spread},
        "media": {"packets_min": 10, "packets_mean": 11, "frames_min": 5, "frames_mean": 6,
                  "viewers_without_frames": 0, "loss_mean": 0.0, "loss_max": 0.01, "freezes": 0,
                  "viewers_with_freezes": 0},
        "chat": {"sent": 3, "delivered_share": 1.0, "latency": spread},
        "drop": {"units": 5, "buyers": 8, "successes": 5, "failures": {"out_of_stock": 3},
                 "oversold": 0, "latency": spread, "at": 1.0},
        "server": {"cpu_mean": 0.2, "cpu_max": 0.3, "rss_start": 9e7, "rss_max": 1e8,
                   "room_drops": 0, "http_5xx": 0},
        "client": {"cpu_mean": 0.1},
        "timeline": [{"t": t, "media_viewers": t, "ws_viewers": 1, "room_viewers": t,
                      "server_cpu": 0.2, "client_cpu": 0.1, "rss_bytes": 9e7, "chat_p50": 0.01}
                     for t in range(3)],
        "errors": {},
        "invariants": {"every_viewer_got_frames": True, "no_oversell": True},
    }
    text = reporting.table(result)
    assert "out_of_stock 3" in text and "no_oversell: ok" in text and "50 ms / 70 ms" in text
    json_path, png_path = reporting.write(result, tmp_path)
    assert json_path.read_text().startswith("{")
    assert png_path is not None and png_path.read_bytes()[:4] == b"\x89PNG"
