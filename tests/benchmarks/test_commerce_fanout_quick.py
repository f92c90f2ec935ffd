"""bench_commerce_fanout end to end at tiny sizes: each viewer kind joins, receives the show
at its full rate (per-viewer loss and packet rate in the JSON), and the probe measures
every request kind idle and during fan-out, for each worker count of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("product", "list", "cart", "checkout")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("kind", "workers"), [("lean", "1,2"), ("aiortc", "1")])
def test_commerce_fanout_runs_and_reports_delivery(kind: str, workers: str, tmp_path: Path) -> None:
    if "," in workers and not os.environ.get("TEST_REDIS_URL") and not os.environ.get("BENCH_REDIS_URL"):
        pytest.skip("two workers need Redis (TEST_REDIS_URL)")
    out = tmp_path / "fanout.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_commerce_fanout", "--viewers", "6", "--seconds", "3",
         "--rate", "20", "--workers", workers, "--viewer-kind", kind, "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["viewerKind"] == kind
    runs = figures["runs"]
    assert [r["workers"] for r in runs] == [int(w) for w in workers.split(",")]
    for run in runs:
        assert run["viewersReceiving"] == 6
        for phase in ("idle", "fanout"):
            for request in KINDS:
                assert run["phases"][phase][request]["count"] > 0, (phase, request, run["phases"][phase])
            assert len(run["phases"][phase]["runqueueWaitMsPerS"]) == run["workers"]
            # Each worker's event-loop lag, sampled 20 times a second over the phase.
            lags = run["phases"][phase]["loopLag"]
            assert len(lags) == run["workers"] and all(lag["samples"] >= 20 for lag in lags), lags
        fanout = run["phases"]["fanout"]
        delivery = fanout["delivery"]
        assert delivery["viewers"] == 6 and delivery["viewersWithoutPackets"] == 0
        # Every viewer got (nearly) the whole stream: ~30 fps of video, and its packets
        # are the ones its sequence numbers say were sent.
        assert delivery["fps"]["min"] > 15, delivery
        assert delivery["packetsPerViewerSecond"]["min"] > 100, delivery
        assert delivery["lossPercent"]["max"] < 5, delivery
        assert fanout["serverPacketsOutPerSecond"] >= 6 * 100
        assert len(fanout["workerCpu"]) == (run["workers"] if run["workers"] > 1 else 0)
    assert "loss per viewer" in result.stdout
