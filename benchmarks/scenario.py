"""Load-test scenarios: one dataclass, read from TOML or JSON files, overridden by flags.

A scenario file holds the fields of :class:`Scenario` at its top level (or under a
``[scenario]`` table), with the same names: ``viewers = 50``, ``join_rate = 10``.
Unknown keys are refused so that a typo never silently runs the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

SCENARIOS = Path(__file__).parent / "scenarios"
# In a source checkout results go next to the benchmarks; an installed package must not
# write into site-packages (often read-only, as in the container), so there: ./loadtest-results.
_CHECKOUT = (Path(__file__).parent.parent / "pyproject.toml").exists()
RESULTS = Path(__file__).parent / "results" if _CHECKOUT else Path("loadtest-results")


class ScenarioError(ValueError):
    """A scenario file or flag holds a value the load test cannot run with."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What to play against the server: a publisher, viewers, chat and a flash drop."""

    name: str = "default"
    target: str = "http://127.0.0.1:8080"
    duration: float = 45.0  # seconds of show after the publisher is live
    # Viewers: all join within the ramp at `join_rate` per second.
    viewers: int = 20
    join_rate: float = 5.0
    ws_share: float = 0.25  # share of viewers on WebSocket events only (no media)
    decode_first_frames: bool = True  # decode until the first frame to time it
    # Share of the media viewers that are lean (benchmarks/lean.py: packets counted at the
    # socket, no SRTP; several times cheaper, so one client core holds a large audience).
    # The rest are aiortc viewers, spread over the ramp: first-frame and freeze figures
    # come from them. 0 = every media viewer is an aiortc viewer.
    lean_share: float = 0.0
    # Publisher: an aiortc peer (VP8 + Opus) or ffmpeg's WHIP muxer (H.264 + Opus). The
    # ffmpeg publisher is dropped by the SFU after ~35 s (ICE consent expires: see
    # benchmarks/README.md), so it is the default only for short scenarios.
    publisher: str = "aiortc"
    video_kbps: int = 600
    audio_kbps: int = 48
    width: int = 640
    height: int = 360
    fps: int = 30
    # Chat: messages per second across the room, sent by shoppers over the events channel.
    chat_rate: float = 2.0
    # Flash drop: at `drop_at` seconds the seller highlights the product and
    # `buy_share` of the viewers press buy-now at once; K = `drop_units`.
    drop_at: float = 25.0
    drop_units: int = 10
    buy_share: float = 0.5
    # Use an existing livestream (for example the demo's) instead of creating one.
    livestream_id: str = ""
    stream_key: str = ""
    # An admin login for the inventory invariant check (the demo admin by default).
    admin_email: str = "admin@demo.shopstream.test"
    admin_password: str = "demo-admin-pass"
    allow_remote: bool = False  # refuse any target but loopback unless set
    # A cluster: the other nodes' base URLs, comma separated. Setup and the publisher go
    # to `target`; viewers, chatters and buyers are spread over target + nodes in turn.
    nodes: str = ""
    results_dir: str = str(RESULTS)

    def validate(self) -> Scenario:
        """Return self, or raise ScenarioError naming the bad field."""
        checks = {
            "duration": self.duration > 0,
            "viewers": self.viewers >= 0,
            "join_rate": self.join_rate > 0,
            "ws_share": 0.0 <= self.ws_share <= 1.0,
            "lean_share": 0.0 <= self.lean_share <= 1.0,
            "buy_share": 0.0 <= self.buy_share <= 1.0,
            "publisher": self.publisher in ("ffmpeg", "aiortc", "none"),
            "video_kbps": 50 <= self.video_kbps <= 20_000,
            "audio_kbps": 6 <= self.audio_kbps <= 510,
            "fps": 1 <= self.fps <= 60,
            "chat_rate": self.chat_rate >= 0,
            "drop_units": self.drop_units >= 0,
            "drop_at": self.drop_at < self.duration,
        }
        for name, ok in checks.items():
            if not ok:
                raise ScenarioError(f"{name}: {getattr(self, name)!r} is out of range")
        for url in self.node_urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ScenarioError(f"node {url!r} is not an http(s) base URL")
            if parts.hostname not in ("127.0.0.1", "localhost", "::1") and not self.allow_remote:
                raise ScenarioError(
                    f"target {url!r} is not loopback; pass --allow-remote to load another host"
                )
        if len(set(self.node_urls)) != len(self.node_urls):
            raise ScenarioError(f"nodes: {self.nodes!r} names a node twice (or the target)")
        return self

    @property
    def node_urls(self) -> list[str]:
        """Return the base URLs of every node: the target first, then `nodes`."""
        return [self.target.rstrip("/")] + [u.strip().rstrip("/") for u in self.nodes.split(",") if u.strip()]

    @property
    def ws_viewers(self) -> int:
        return round(self.viewers * self.ws_share)

    @property
    def media_viewers(self) -> int:
        return self.viewers - self.ws_viewers

    @property
    def lean_viewers(self) -> int:
        return round(self.media_viewers * self.lean_share)

    def is_lean(self, index: int) -> bool:
        """Say whether media viewer `index` (in join order) is lean; the aiortc ones are spread evenly."""
        media, full = self.media_viewers, self.media_viewers - self.lean_viewers
        if not 0 <= index < media:
            return False
        return (index * full) // media == ((index + 1) * full) // media

    @property
    def buyers(self) -> int:
        return round(self.viewers * self.buy_share) if self.drop_at >= 0 else 0

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("admin_password")  # never written into results
        return values


FIELDS = {f.name: f for f in dataclasses.fields(Scenario)}


def load(path: str | Path) -> dict[str, Any]:
    """Read a scenario file (``.toml`` or ``.json``) into field values."""
    path = Path(path)
    if not path.exists() and (SCENARIOS / f"{path}.toml").exists():
        path = SCENARIOS / f"{path}.toml"  # `--scenario smoke` names a ready one
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    data = data.get("scenario", data)
    data.setdefault("name", path.stem)
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ScenarioError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
    return data


def build(path: str | Path | None = None, **overrides: Any) -> Scenario:
    """Return the scenario of ``path`` (or the defaults) with non-None overrides applied."""
    values: dict[str, Any] = load(path) if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in values.items():
        kind = type(FIELDS[name].default)
        if kind is float and isinstance(value, int):
            values[name] = float(value)
        elif not isinstance(values[name], kind):
            raise ScenarioError(f"{name}: expected {kind.__name__}, got {value!r}")
    return Scenario(**values).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--scenario`` and one flag per scenario field (flags override the file)."""
    parser.add_argument("--scenario", help="scenario file (TOML/JSON) or a ready one: smoke, max_2core, drop, cluster")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        else:
            cast = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, dest=name, type=cast, default=None,
                                help=f"default {f.default!r}" if name != "admin_password" else None)


def from_arguments(args: argparse.Namespace) -> Scenario:
    """Build the scenario that parsed flags describe."""
    return build(args.scenario, **{name: getattr(args, name, None) for name in FIELDS})
