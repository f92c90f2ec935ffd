"""bench_cluster --quick runs every phase (hop, client cost, delay, saturation under cgroups,
projection) end to end on real processes, and leaves no cgroup behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_cluster, cpulimit

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cluster_quick_measures_every_phase() -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_cluster", "--quick"], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads((bench_cluster.RESULTS / "bench_cluster-quick.json").read_text())
    hop = figures["hop"]
    assert hop["matched_packets"] > 100
    # The hop's parts (from both servers' traces) add up to it, packet by packet and in the tail.
    assert hop["parts"]["packets"] > 50
    tail = hop["parts"]["tail"]
    parts = ("origin_order", "to_relay_forwarder", "relay_fanout", "kernel_difference")
    assert abs(tail["hop"] - sum(tail[k] for k in parts)) < 1e-3
    assert hop["with_join_catch_up"]["matched_packets"] >= hop["matched_packets"]
    lean = figures["client"]["lean"]
    assert lean["packets"] > 1000 and lean["client_us_per_packet"] > 0
    for label in ("one_worker", "two_workers"):
        delay = figures["delay"][label]
        assert delay["timed_packets"] > 100
        assert 0 < delay["delay_p50_ms"] <= delay["delay_p99_ms"] <= delay["delay_max_ms"]
        # Every timed packet was split by its worker's trace, and the parts of the tail add up.
        parts = delay["parts"]
        assert parts["packets"] == delay["timed_packets"]
        assert abs(parts["total"]["p99"] - delay["delay_p99_ms"]) < 1e-6
        tail = parts["tail"]
        assert abs(tail["total"] - sum(tail[k] for k in ("socket_wait", "ingress", "in_fanout", "kernel"))) < 1e-3
        assert all(w["count"][0] >= 0 for w in delay["gc_per_worker"])
        for frames in delay["frames_per_worker"]:  # whole frames: last packet in minus last packet sent
            assert frames["frames"] > 10 and 0 < frames["p50_ms"] <= frames["p99_ms"]
    assert figures["delay"]["two_workers"]["server_viewers"][1] > 0  # viewers did reach the relay worker
    saturation = figures["saturation"]
    if "skipped" in saturation:
        assert "no CPU budget" in saturation["skipped"]
    else:
        for label in ("one_worker", "two_workers"):
            steps = saturation[label]["steps"]
            assert steps and steps[0]["viewers"] > 0
            # Capped: no step used much more than its budget (the quota holds).
            assert all(max(s["server_cpu_share"]) < 1.5 * saturation[label]["budget_cores_each"] for s in steps)
        leftovers = [p for p in (cpulimit.ROOT / "cpu").glob("shopstream-bench-*")] + list(
            cpulimit.ROOT.glob("shopstream-bench-*"))
        assert not leftovers
    assert figures["projection"]["rows"][0]["viewers"] > 0
    assert "projection (from the measured costs, not measured)" in result.stdout
