"""The load test's report: figures from raw samples, the final table, JSON and a PNG plot."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-th percentile (nearest rank) of ``values``, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def parse_metrics(text: str, room: str) -> dict[str, float]:
    """Pick the process and room figures the report needs out of Prometheus text."""
    found = {"cpu_seconds": math.nan, "rss_bytes": math.nan, "room_viewers": 0.0,
             "room_packets_in": 0.0, "room_packets_out": 0.0, "room_drops": 0.0, "http_5xx": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "process_cpu_seconds_total":
                found["cpu_seconds"] = sample.value
            elif name == "process_resident_memory_bytes":
                found["rss_bytes"] = sample.value
            elif name.startswith("shopstream_room_") and labels.get("room") == room:
                key = name.removeprefix("shopstream_").removesuffix("_total")
                if key in found:
                    found[key] = sample.value
            elif name == "shopstream_http_requests_total" and labels.get("status", "").startswith("5"):
                found["http_5xx"] += sample.value
    return found


def combine(nodes: list[dict[str, float]]) -> dict[str, float]:
    """Add up the figures of several nodes (CPU, RSS, viewers, packets, errors)."""
    return {key: sum(n[key] for n in nodes) for key in nodes[0]}


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}{unit}"


def table(report: dict[str, Any]) -> str:
    """Return the human-readable summary of a report."""
    joins, media, chat, drop, server = (report[k] for k in ("joins", "media", "chat", "drop", "server"))
    ms = {"unit": " ms", "scale": 1000.0}
    rows = [
        ("joins", "media viewers joined", f"{joins['media_joined']}/{joins['media_planned']}"
         + (f" ({media['lean_viewers']} lean)" if media.get("lean_viewers") else "")),
        ("", "WS viewers joined", f"{joins['ws_joined']}/{joins['ws_planned']}"),
        ("", "connect p50 / p95", f"{_fmt(joins['connect']['p50'], **ms)} / {_fmt(joins['connect']['p95'], **ms)}"),
        ("", "first decoded frame p50 / p95",
         f"{_fmt(joins['first_frame']['p50'], **ms)} / {_fmt(joins['first_frame']['p95'], **ms)}"),
        ("", "WS welcome p50 / p95",
         f"{_fmt(joins['ws_connect']['p50'], **ms)} / {_fmt(joins['ws_connect']['p95'], **ms)}"),
        ("media", "packets per viewer (min / mean)",
         f"{_fmt(media['packets_min'])} / {_fmt(media['packets_mean'])}"),
        ("", "frames per viewer (min / mean)", f"{_fmt(media['frames_min'])} / {_fmt(media['frames_mean'])}"),
        ("", "viewers without frames", str(media["viewers_without_frames"])),
        ("", "loss (mean / max)", f"{_fmt(media['loss_mean'], ' %', 100, 2)} / {_fmt(media['loss_max'], ' %', 100, 2)}"),
        ("", "freezes >500 ms (total / viewers)", f"{media['freezes']} / {media['viewers_with_freezes']}"
         + (f" (of {media['aiortc_viewers']} aiortc viewers)" if media.get("lean_viewers") else "")),
        ("chat", "sent / delivered share", f"{chat['sent']} / {_fmt(chat['delivered_share'], ' %', 100, 1)}"),
        ("", "latency p50 / p99", f"{_fmt(chat['latency']['p50'], **ms, digits=1)} / {_fmt(chat['latency']['p99'], **ms, digits=1)}"),
        ("drop", "units / buyers", f"{drop['units']} / {drop['buyers']}"),
        ("", "successes / failures", f"{drop['successes']} / {sum(drop['failures'].values())}"),
        ("", "failures by reason", ", ".join(f"{k} {v}" for k, v in drop["failures"].items()) or "-"),
        ("", "oversold", str(drop["oversold"])),
        ("", "checkout latency p50 / p95",
         f"{_fmt(drop['latency']['p50'], **ms)} / {_fmt(drop['latency']['p95'], **ms)}"),
        ("server", "CPU mean / max (% of one core)",
         f"{_fmt(server['cpu_mean'], ' %', 100)} / {_fmt(server['cpu_max'], ' %', 100)}"),
        ("", "RSS start / max", f"{_fmt(server['rss_start'], ' MB', 1e-6)} / {_fmt(server['rss_max'], ' MB', 1e-6)}"),
        ("", "SFU drops / HTTP 5xx", f"{_fmt(server['room_drops'])} / {_fmt(server['http_5xx'])}"),
        ("client", "load-test CPU mean (% of one core)", _fmt(report["client"]["cpu_mean"], " %", 100)),
        ("errors", "by kind", ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "none"),
    ]
    if drop.get("skipped"):
        rows.insert(12, ("drop", "skipped", drop["skipped"]))
    if report.get("nodes"):
        rows[-1:-1] = _node_rows(report)
    width = max(len(r[1]) for r in rows)
    lines = [f"Load test '{report['scenario']['name']}' against {report['scenario']['target']}",
             "-" * (width + 30)]
    for section, label, value in rows:
        lines.append(f"{section:<7} {label:<{width}}  {value}")
    lines.append("-" * (width + 30))
    verdicts = "  ".join(f"{k}: {'ok' if v else 'VIOLATED'}" for k, v in report["invariants"].items())
    lines.append(f"invariants  {verdicts}")
    return "\n".join(lines)


def _node_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return the table's rows for a cluster: each node's viewers, frames, chat and CPU."""
    rows = []
    for index, node in enumerate(report["nodes"]):
        rows.append(("nodes" if index == 0 else "", node["url"],
                     f"media {node['media_joined']}/{node['media_planned']} (without frames "
                     f"{node['viewers_without_frames']}, frames min {_fmt(node['frames_min'])}), "
                     f"WS {node['ws_joined']}, chat {node['chat_received']}/{node['chat_expected']} "
                     f"({_fmt(node['chat_delivered_share'], ' %', 100, 1)}, p99 "
                     f"{_fmt(node['chat_latency']['p99'], ' ms', 1000)}), "
                     f"CPU {_fmt(node['server_cpu_mean'], ' %', 100)}"))
    room = report.get("cluster") or {}
    relays = ", ".join(f"{k} {v}" for k, v in sorted((room.get("relays") or {}).items())) or "-"
    rows.append(("", "origin / relays (viewers)", f"{room.get('origin') or '-'} / {relays}"))
    return rows


def count(values: list[str]) -> dict[str, int]:
    return dict(Counter(values).most_common())


def write(report: dict[str, Any], results_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``<name>-<time>.json`` and a PNG next to it; return both paths."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"loadtest-{report['scenario']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    return json_path, plot(report, folder / f"{stem}.png")


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Plot viewers, server CPU and chat/checkout latency over time (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timeline = report["timeline"]
    t = [p["t"] for p in timeline]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    top.plot(t, [p["media_viewers"] for p in timeline], label="media viewers (client)")
    top.plot(t, [p["ws_viewers"] for p in timeline], label="WS viewers (client)")
    top.plot(t, [p["room_viewers"] for p in timeline], "--", label="room viewers (server)")
    urls = [n["url"] for n in report.get("nodes") or []]
    for index, url in enumerate(urls):  # a cluster: each node's viewers and CPU
        top.plot(t, [p["nodes"][index]["room_viewers"] for p in timeline], ":", label=f"on {url}")
    top.set_ylabel("viewers")
    top.legend(loc="upper left", fontsize=8)
    middle.plot(t, [_pct(p["server_cpu"]) for p in timeline], label="server CPU")
    middle.plot(t, [_pct(p["client_cpu"]) for p in timeline], label="load-test CPU")
    for index, url in enumerate(urls):
        middle.plot(t, [_pct(p["nodes"][index]["server_cpu"]) for p in timeline], ":", label=f"CPU {url}")
    middle.set_ylabel("% of one core")
    twin = middle.twinx()
    twin.plot(t, [_mb(p["rss_bytes"]) for p in timeline], color="grey", linestyle=":", label="server RSS")
    twin.set_ylabel("RSS (MB)")
    middle.legend(loc="upper left", fontsize=8)
    bottom.plot(t, [_ms(p["chat_p50"]) for p in timeline], "o-", markersize=3, label="chat latency p50")
    drop_at = report["drop"].get("at")
    if drop_at is not None:
        for axis in (top, middle, bottom):
            axis.axvline(drop_at, color="red", alpha=0.4)
        p95 = report["drop"]["latency"]["p95"]
        if p95 is not None:
            bottom.plot([drop_at], [p95 * 1000], "rx", label="checkout p95")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the publisher went live")
    bottom.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"Load test '{report['scenario']['name']}'" + (f" over {len(urls)} nodes" if urls else ""))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _pct(value: float | None) -> float:
    return math.nan if value is None else value * 100


def _mb(value: float | None) -> float:
    return math.nan if value is None else value / 1e6


def _ms(value: float | None) -> float:
    return math.nan if value is None else value * 1000
