"""Play a live-shopping event against a running server and report what it held.

Run ``shopstream loadtest [--scenario smoke] [--viewers 50 ...]`` (or
``python -m benchmarks.loadtest``). One publisher (ffmpeg WHIP or aiortc), viewers
joining over WHEP at a given rate (a share on WebSocket events only), chat over the
events channel and a flash drop; progress every second, then a table, JSON and a PNG
in ``benchmarks/results/``. With ``--nodes`` (``--scenario cluster``) the viewers are
spread over a cluster's nodes and the report has a row and an invariant per node. Everything is bounded: each phase has a deadline and
every peer, socket and subprocess is closed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks import report as reporting
from benchmarks.peers import LeanMediaViewer, MediaViewer, Publisher
from benchmarks.scenario import Scenario, ScenarioError, add_arguments, from_arguments
from benchmarks.shop import (API, Account, Api, EventsClient, LoadError, Show, add_shoppers, buy_now, set_up,
                             within)

CHATTERS = 5  # shopper accounts that chat, when there is chat but no drop
LIVE_TIMEOUT = 30.0
STOP_SECONDS = 10.0  # for the load tasks to end once cancelled, and for each closing step
METRICS_SECONDS = 5.0
CHAT_GRACE = 1.0  # seconds before the end when chat stops, so its deliveries can be counted
# In a cluster, chat must reach the viewers of every node: each node's delivered share
# must be at least this (a message lost between nodes shows there, not in the average).
CHAT_DELIVERED_MIN = 0.99


@dataclass
class ChatLog:
    """Chat messages sent by the load test and when each recipient got them."""

    # text -> (sent at, sender, the viewers connected then: the only ones it is expected at)
    sent: dict[str, tuple[float, int, frozenset[int]]] = field(default_factory=dict)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent at, latency)
    received: int = 0
    by_recipient: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # latencies

    def recipient(self, index: int) -> Callable[[str, float], None]:
        def on_chat(message: str, now: float) -> None:
            entry = self.sent.get(message)
            # A viewer who connected after the send may get it too; it was not expected
            # there, so counting it would push the delivered share over 100 %.
            if entry is not None and index in entry[2]:
                self.received += 1
                self.by_recipient[index].append(now - entry[0])
                self.latencies.append((entry[0], now - entry[0]))
        return on_chat

    def expected(self) -> Counter[int]:
        """Return how many messages each recipient should have got."""
        return Counter(index for _, _, recipients in self.sent.values() for index in recipients)


class LoadTest:
    """One run of a scenario; :meth:`run` returns the report."""

    def __init__(self, scenario: Scenario, log: Callable[[str], None]) -> None:
        self.s = scenario
        self.log = log
        # One client per node (the target first): each viewer talks to its own node.
        self.apis = [Api(url) for url in scenario.node_urls]
        self.api = self.apis[0]
        self.viewer_nodes: list[int] = []  # the node of each entry of self.viewers
        self.node_of: dict[int, int] = {}  # viewer index -> node
        self.admin: Account | None = None
        self.cluster_room: dict[str, Any] | None = None  # the room in the admin cluster view
        self.show: Show | None = None
        self.publisher: Publisher | None = None
        self.viewers: list[MediaViewer | LeanMediaViewer] = []
        self.lean_receiver: Any = None  # benchmarks.lean.LeanReceiver, made with the first lean viewer
        self.events: dict[int, EventsClient] = {}
        self.shopper_events: dict[int, EventsClient] = {}
        self.ws_joined = 0
        self.chat = ChatLog()
        self.errors: list[str] = []
        self.drop: dict[str, Any] = {"units": 0, "buyers": 0, "successes": 0, "failures": {},
                                     "latency": reporting.spread([]), "oversold": 0, "at": None}
        self.samples: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.has_events = self.has_checkout = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = False  # loops end on it too: a cancellation alone can be lost
        self.stopped = False  # _stop() ran to its end: close() has only the HTTP client left
        self.media_figures: list[dict[str, Any]] = []
        self.final_metrics: dict[str, float] | None = None
        self.final_nodes: list[dict[str, float]] = []

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        s = self.s
        self.show = await set_up(self.api, livestream_id=s.livestream_id, stream_key=s.stream_key,
                                 drop_units=s.drop_units)
        self.has_events = self.api.has(f"{API}/livestreams/{{id}}/events")
        self.has_checkout = self.api.has(f"{API}/checkout/session")
        if not self.has_events:
            self.show.notes.append("no events route: WS viewers and chat are skipped")
        if not (self.has_events or self.has_checkout) and self.show.variant_id:
            self.show.notes.append("no buy-now route (events or checkout): the drop is skipped")
            self.show.variant_id = None
        for note in self.show.notes:
            self.log(f"note: {note}")
        shoppers = s.buyers if self.show.variant_id else 0
        if s.chat_rate > 0 and self.has_events:
            shoppers = max(shoppers, min(CHATTERS, s.viewers))
        self.log(f"setup: livestream {self.show.livestream_id}; signing up {shoppers} shopper(s)")
        await add_shoppers(self.api, self.show, min(shoppers, s.viewers))
        self.log(f"setup: {len(self.show.shoppers)} shopper(s) signed up; starting the {s.publisher} publisher")
        await self._start_publisher()
        self.t0 = time.monotonic()
        self.log(f"live: {s.media_viewers} media ({s.lean_viewers} lean) + {s.ws_viewers} WS viewers at {s.join_rate}/s, "
                 f"{s.duration:.0f} s" + (f", over {len(self.apis)} nodes" if len(self.apis) > 1 else ""))
        for name, coro in (("sample", self._sample()), ("join", self._join_all()),
                           ("chat", self._chat()), ("drop", self._drop())):
            self._spawn(coro, name)
        try:
            await asyncio.sleep(s.duration)
        finally:
            await self._stop()
        return await self._report()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.errors.append(exc.code if isinstance(exc, LoadError) else f"crash:{type(exc).__name__}")
            self.log(f"error in {task.get_name()}: {exc!r}")

    async def _start_publisher(self) -> None:
        s, show = self.s, self.show
        assert show is not None
        if s.publisher == "none":
            return
        bearer = show.stream_key or (show.seller.token if show.seller else "")
        self.publisher = Publisher(s.publisher, s.target, show.livestream_id, bearer)
        await self.publisher.start(self.api.http, width=s.width, height=s.height, fps=s.fps,
                                   video_kbps=s.video_kbps, audio_kbps=s.audio_kbps,
                                   seconds=s.duration + LIVE_TIMEOUT)
        deadline = time.monotonic() + LIVE_TIMEOUT
        while time.monotonic() < deadline:
            failure = self.publisher.failure()
            if failure:
                raise LoadError("publisher", failure)
            text = await self.api.request("GET", "/metrics", timeout=METRICS_SECONDS)
            figures = reporting.parse_metrics(text, show.livestream_id)
            if figures["room_packets_in"] > 0:
                self.log(f"publisher: media reaches the SFU ({figures['room_packets_in']:.0f} packets)")
                await asyncio.sleep(1.0)  # a first keyframe has arrived at the SFU by now
                return
            await asyncio.sleep(0.25)
        raise LoadError("publisher", f"no media reached the SFU within {LIVE_TIMEOUT:.0f} s")

    async def _join_all(self) -> None:
        s, show = self.s, self.show
        assert show is not None
        joins = []
        for index in range(s.viewers):
            await asyncio.sleep(max(0.0, self.t0 + index / s.join_rate - time.monotonic()))
            account = show.shoppers[index] if index < len(show.shoppers) else None
            ws_only = index >= s.media_viewers
            joins.append(self._spawn(self._join(index, ws_only, account), f"join-{index}"))
        await asyncio.gather(*joins, return_exceptions=True)
        self.log(f"all {s.viewers} viewers attempted to join at t={time.monotonic() - self.t0:.1f} s")

    async def _join(self, index: int, ws_only: bool, account: Any) -> None:
        show = self.show
        assert show is not None
        node = self.node_of[index] = index % len(self.apis)
        api = self.apis[node]
        if not ws_only:
            viewer: MediaViewer | LeanMediaViewer
            if self.s.is_lean(index):
                if self.lean_receiver is None:
                    from benchmarks.lean import LeanReceiver

                    self.lean_receiver = LeanReceiver()
                viewer = LeanMediaViewer(api.base, show.livestream_id, self.lean_receiver)
            else:
                viewer = MediaViewer(api.base, show.livestream_id, self.s.decode_first_frames)
            self.viewers.append(viewer)
            self.viewer_nodes.append(node)
            try:
                await viewer.join(api.http)
            except LoadError as exc:
                viewer.failed = exc.code  # counted once, in the report's join errors
                self.log(f"viewer {index}: {exc}")
                return
        if (ws_only or account is not None) and self.has_events:
            events = EventsClient(api, show.livestream_id, account, self.chat.recipient(index))
            self.events[index] = events
            await events.connect()
            if ws_only:
                self.ws_joined += 1
            if account is not None:
                self.shopper_events[index] = events

    async def _chat(self) -> None:
        s = self.s
        if s.chat_rate <= 0 or not self.has_events:
            return
        counter = itertools.count()
        while not self.stopping:
            n = next(counter)
            at = self.t0 + 1.0 + n / s.chat_rate
            if at > self.t0 + s.duration - CHAT_GRACE:
                break  # a message sent as the show stops could not arrive: it would count as lost
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if self.stopping:
                break
            senders = [i for i, e in self.shopper_events.items() if e.connect_seconds is not None]
            if not senders:
                continue
            sender = senders[n % len(senders)]
            recipients = frozenset(i for i, e in self.events.items() if e.connect_seconds is not None and i != sender)
            text = f"lt:{n}:{sender}"
            self.chat.sent[text] = (time.monotonic(), sender, recipients)
            try:
                await self.shopper_events[sender].send("chat:send", {"message": text})
            except LoadError as exc:
                self.errors.append(f"chat:{exc.code}")
                self.log(f"error: chat from shopper {sender}: {exc}")

    async def _drop(self) -> None:
        s, show = self.s, self.show
        assert show is not None
        if s.drop_at < 0 or show.variant_id is None:
            self.drop["skipped"] = "no drop product" if s.drop_at >= 0 else "disabled"
            return
        await asyncio.sleep(max(0.0, self.t0 + s.drop_at - time.monotonic()))
        self.drop.update(at=time.monotonic() - self.t0, units=s.drop_units)
        assert show.seller is not None
        if self.api.has(f"{API}/seller/livestreams/{{id}}/highlight"):
            try:
                await self.api.request("POST", f"{API}/seller/livestreams/{show.livestream_id}/highlight",
                                       json={"productId": show.product_id}, headers=show.seller.headers)
            except LoadError as exc:
                self.errors.append(f"highlight:{exc.code}")
                self.log(f"error: highlighting the drop product: {exc}")
        buyers = show.shoppers[: s.buyers]
        self.drop["buyers"] = len(buyers)
        self.log(f"drop: {len(buyers)} buyers for {s.drop_units} units")

        async def press(index: int) -> tuple[str, float]:
            started = time.monotonic()
            try:
                await buy_now(self.api, self.shopper_events.get(index), show, buyers[index])
                outcome = "ok"
            except LoadError as exc:
                outcome = exc.code
                if exc.code != "out_of_stock":
                    self.log(f"drop: buyer {index}: {exc}")
            return outcome, time.monotonic() - started

        results = await asyncio.gather(*(press(i) for i in range(len(buyers))))
        self.drop["successes"] = sum(1 for outcome, _ in results if outcome == "ok")
        self.drop["failures"] = reporting.count([o for o, _ in results if o != "ok"])
        self.drop["latency"] = reporting.spread([t for _, t in results])
        self.log(f"drop: {self.drop['successes']} sold, failures {self.drop['failures'] or 'none'}")

    async def _sample(self) -> None:
        """Read `/metrics` once a second and print a progress line."""
        assert self.show is not None
        last_cpu, last_client, last_wall = [math.nan] * len(self.apis), time.process_time(), time.monotonic()
        while not self.stopping:
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - last_wall)))
            now = time.monotonic()
            try:
                nodes = await self._read_metrics(METRICS_SECONDS)
            except LoadError as exc:
                self.errors.append("metrics")
                self.log(f"error: reading /metrics: {exc}")
                last_wall = now
                continue
            figures = reporting.combine(nodes)
            client = time.process_time()
            wall = now - last_wall
            cpus = [None if math.isnan(before) else (n["cpu_seconds"] - before) / wall
                    for n, before in zip(nodes, last_cpu, strict=True)]
            recent = [lat for at, lat in self.chat.latencies if at >= now - 2.0]
            sample = {
                "t": round(now - self.t0, 2),
                "media_viewers": sum(1 for v in self.viewers if v.connected_at is not None and not v.failed),
                "ws_viewers": self.ws_joined,
                "room_viewers": figures["room_viewers"],
                "server_cpu": None if None in cpus else sum(c for c in cpus if c is not None),
                "client_cpu": (client - last_client) / wall,
                "rss_bytes": figures["rss_bytes"] if not math.isnan(figures["rss_bytes"]) else None,
                "frames": sum(v.video.frames for v in self.viewers),
                "chat_p50": reporting.percentile(recent, 50),
                **{k: figures[k] for k in ("room_packets_out", "room_drops", "http_5xx")},
                "nodes": [{"room_viewers": n["room_viewers"], "server_cpu": c}
                          for n, c in zip(nodes, cpus, strict=True)],
            }
            self.samples.append(sample)
            last_cpu, last_client, last_wall = [n["cpu_seconds"] for n in nodes], client, now
            self.log(
                f"t={sample['t']:5.1f}s viewers {sample['media_viewers']}+{sample['ws_viewers']}ws "
                f"(room {sample['room_viewers']:.0f}) frames {sample['frames']} "
                f"chat p50 {_ms(sample['chat_p50'])} server cpu {_pct(sample['server_cpu'])} "
                f"rss {_mb(sample['rss_bytes'])} client cpu {_pct(sample['client_cpu'])} "
                f"errors {len(self.errors)}"
            )

    # --- stopping and reporting ---------------------------------------------------------

    async def _cancel_tasks(self) -> None:
        """Stop the load tasks; name any that outlive STOP_SECONDS (an error, not a hang)."""
        self.stopping = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        for task in pending:
            self.tasks.discard(task)
            self.errors.append(f"stuck:{task.get_name()}")
            self.log(f"error: task {task.get_name()} did not stop within {STOP_SECONDS:.0f} s: "
                     f"{task.get_stack(limit=1)}")

    async def _bounded(self, what: str, coros: list[Any], seconds: float = 2 * STOP_SECONDS) -> None:
        """Run closing steps at once; log the ones that fail or hang (cleanup goes on)."""
        if not coros:
            return
        outcomes = await asyncio.gather(*(within(seconds, c, what) for c in coros), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.log(f"warning: {what}: {outcome!r}")

    async def _stop(self) -> None:
        """Cancel the load, leave every session, stop the publisher."""
        self.log(f"stop: show over at t={time.monotonic() - self.t0:.1f} s; stopping the load")
        await self._cancel_tasks()
        self.media_figures = [v.figures() for v in self.viewers]
        self.final_metrics = await self._metrics_or_none()
        if len(self.apis) > 1:
            await self._read_cluster_view()
        self.log(f"stop: leaving {len(self.viewers)} media and {len(self.events)} events session(s)")
        await self._bounded("leaving a WHEP session", [v.leave(self.api.http) for v in self.viewers])
        await self._close_lean_receiver()
        await self._bounded("closing an events socket", [e.close() for e in self.events.values()])
        if self.publisher is not None:
            self.log("stop: stopping the publisher")
            failure = self.publisher.failure()
            if failure:
                self.errors.append("publisher")
                self.log(f"error: {failure}")
            await self._bounded("stopping the publisher", [self.publisher.stop()])
        self.stopped = True
        self.log("stop: done")

    async def _close_lean_receiver(self) -> None:
        receiver, self.lean_receiver = self.lean_receiver, None
        if receiver is not None:
            await self._bounded("stopping the lean viewers' receiver", [receiver.close()])

    async def _read_metrics(self, timeout: float) -> list[dict[str, float]]:
        """Read every node's `/metrics` at once; return each node's figures (target first)."""
        assert self.show is not None
        texts = await asyncio.gather(*(api.request("GET", "/metrics", timeout=timeout) for api in self.apis))
        return [reporting.parse_metrics(text, self.show.livestream_id) for text in texts]

    async def _metrics_or_none(self) -> dict[str, float] | None:
        try:
            self.final_nodes = await self._read_metrics(2 * METRICS_SECONDS)
        except LoadError as exc:
            self.log(f"warning: final /metrics read failed: {exc}")
            return None
        return reporting.combine(self.final_nodes)

    async def _admin(self) -> Account:
        """Log in as the admin (once) for the inventory check and the cluster view."""
        if self.admin is None:
            self.admin = await self.api.login(self.s.admin_email, self.s.admin_password)
        return self.admin

    async def _read_cluster_view(self) -> None:
        """Record the room's origin, relays and viewers from `GET /admin/cluster`.

        Read while every viewer is still connected: registrations are a heartbeat old.
        """
        assert self.show is not None
        try:
            admin = await self._admin()
            view = await self.api.request("GET", f"{API}/admin/cluster", headers=admin.headers,
                                          timeout=METRICS_SECONDS)
        except LoadError as exc:
            self.log(f"warning: the admin cluster view could not be read: {exc}")
            return
        self.cluster_room = next((r for r in view.get("rooms", []) if r.get("id") == self.show.livestream_id),
                                 {"id": self.show.livestream_id, "origin": None})
        self.log(f"cluster: origin {self.cluster_room.get('origin')}, relays {self.cluster_room.get('relays')}")

    async def _check_inventory(self) -> None:
        """Verify oversold = 0: stock read back through the API and the admin invariant check."""
        show, s = self.show, self.s
        if show is None or show.product_id is None:
            return
        self.log("check: reading the drop variant's stock back and running the admin inventory check")
        product = None
        if self.api.has(f"{API}/products/{{id}}"):
            try:
                product = await self.api.request("GET", f"{API}/products/{show.product_id}")
            except LoadError as exc:
                self.drop["stock_after_error"] = exc.code
                self.log(f"error: reading the drop product back: {exc}")
        if product is not None:
            stock = next((v["stock"] for v in product.get("variants", []) if v["id"] == show.variant_id), None)
            self.drop["stock_after"] = stock
            if stock is not None and (stock < 0 or stock + self.drop["successes"] > s.drop_units):
                self.drop["oversold"] = max(1, self.drop["successes"] - s.drop_units)
        self.drop["oversold"] = max(self.drop["oversold"], self.drop["successes"] - s.drop_units)
        if self.api.has(f"{API}/admin/inventory/check"):
            try:
                admin = await self._admin()
                check = await self.api.request("GET", f"{API}/admin/inventory/check", headers=admin.headers)
            except LoadError as exc:
                self.drop["inventory_check"] = f"not run: {exc.code}"
                return
            self.drop["inventory_check"] = check
            if not _clean(check):
                self.drop["oversold"] = max(1, self.drop["oversold"])

    async def _report(self) -> dict[str, Any]:
        await self._check_inventory()
        s = self.s
        media = self.media_figures
        joined = [m for m in media if m["failed"] is None and m["connect_s"] is not None]
        self.errors += [f"join:{m['failed']}" for m in media if m["failed"]]
        first = self.samples[0] if self.samples else {}
        last = self.final_metrics or {}
        cpus = [p["server_cpu"] for p in self.samples if p["server_cpu"] is not None]
        rss = [p["rss_bytes"] for p in self.samples if p["rss_bytes"] is not None]
        delivered_expected = sum(len(r) for _, _, r in self.chat.sent.values())
        server_5xx = (last.get("http_5xx", 0.0) - first.get("http_5xx", 0.0)) if first else 0.0
        if server_5xx:
            self.errors += ["server_5xx"] * int(server_5xx)
        ws_times = [e.connect_seconds for e in self.events.values() if e.connect_seconds is not None]
        for events in self.events.values():
            self.errors += [f"event:{code}" for code in events.errors]
        frames = [m["frames"] for m in joined]
        packets = [m["video_packets"] + m["audio_packets"] for m in joined]
        losses = [m["loss"] for m in joined if m["loss"] is not None]
        full = [m for m in joined if m.get("kind") != "lean"]  # first-frame and freeze figures
        report = {
            "scenario": s.as_dict(),
            "notes": self.show.notes if self.show else [],
            "livestream_id": self.show.livestream_id if self.show else None,
            "joins": {
                "media_planned": s.media_viewers, "media_joined": len(joined),
                "ws_planned": s.ws_viewers if self.has_events else 0, "ws_joined": self.ws_joined,
                "connect": reporting.spread([m["connect_s"] for m in joined]),
                "first_frame": reporting.spread([m["first_frame_s"] for m in joined if m["first_frame_s"] is not None]),
                "first_packet": reporting.spread([m["first_packet_s"] for m in joined if m["first_packet_s"] is not None]),
                "ws_connect": reporting.spread(ws_times),
            },
            "media": {
                "viewers_without_frames": sum(1 for f in frames if f == 0) + (s.media_viewers - len(joined)),
                "frames_min": min(frames, default=None), "frames_mean": _mean(frames),
                "packets_min": min(packets, default=None), "packets_mean": _mean(packets),
                "loss_mean": _mean(losses), "loss_max": max(losses, default=None),
                "freezes": sum(m["freezes"] for m in full),
                "viewers_with_freezes": sum(1 for m in full if m["freezes"]),
                "lean_viewers": len(joined) - len(full), "aiortc_viewers": len(full),
                "client_socket_drops": sum(m.get("socket_drops", 0) for m in joined),
                "per_viewer": media,
            },
            "chat": {
                "sent": len(self.chat.sent), "received": self.chat.received,
                "delivered_share": self.chat.received / delivered_expected if delivered_expected else None,
                "latency": reporting.spread([lat for _, lat in self.chat.latencies]),
            },
            "drop": self.drop,
            "server": {
                "cpu_mean": _mean(cpus), "cpu_max": max(cpus, default=None),
                "rss_start": rss[0] if rss else None, "rss_max": max(rss, default=None),
                "room_drops": last.get("room_drops"), "http_5xx": server_5xx,
            },
            "client": {"cpu_mean": _mean([p["client_cpu"] for p in self.samples])},
            "timeline": self.samples,
            "errors": reporting.count(self.errors),
        }
        report["invariants"] = {
            "every_viewer_got_frames": s.media_viewers == 0 or (
                len(joined) == s.media_viewers and report["media"]["viewers_without_frames"] == 0),
            "no_oversell": self.drop["oversold"] == 0 and self.drop["successes"] <= max(s.drop_units, 0),
            "no_server_errors": server_5xx == 0 and "publisher" not in self.errors,
        }
        if len(self.apis) > 1:
            report["nodes"] = nodes = self._nodes_report()
            report["cluster"] = self.cluster_room
            chatting = s.chat_rate > 0 and self.has_events
            report["invariants"]["chat_delivered_on_every_node"] = not chatting or chat_reached_every_node(nodes)
        return report

    def _nodes_report(self) -> list[dict[str, Any]]:
        """Return each node's part of the show: its viewers and their frames, chat, CPU."""
        s, count = self.s, len(self.apis)
        expected = self.chat.expected()
        nodes = []
        for node, url in enumerate(s.node_urls):
            planned = sum(1 for i in range(s.media_viewers) if i % count == node)
            joined = [m for m, n in zip(self.media_figures, self.viewer_nodes, strict=False)
                      if n == node and m["failed"] is None and m["connect_s"] is not None]
            frames = [m["frames"] for m in joined]
            here = [i for i, n in self.node_of.items() if n == node]
            chat_expected = sum(expected[i] for i in here)
            latencies = [lat for i in here for lat in self.chat.by_recipient.get(i, [])]
            cpus = [p["nodes"][node]["server_cpu"] for p in self.samples if p["nodes"][node]["server_cpu"] is not None]
            nodes.append({
                "url": url, "media_planned": planned, "media_joined": len(joined),
                "viewers_without_frames": sum(1 for f in frames if f == 0) + planned - len(joined),
                "frames_min": min(frames, default=None),
                "ws_joined": sum(1 for i in here if i >= s.media_viewers and i in self.events
                                 and self.events[i].connect_seconds is not None),
                "chat_expected": chat_expected, "chat_received": len(latencies),
                "chat_delivered_share": len(latencies) / chat_expected if chat_expected else None,
                "chat_latency": reporting.spread(latencies),
                "server_cpu_mean": _mean(cpus),
                "room_viewers_max": max((p["nodes"][node]["room_viewers"] for p in self.samples), default=None),
            })
        return nodes

    async def close(self) -> None:
        """Release everything, also after a failed run (each step bounded)."""
        await self._cancel_tasks()
        if self.publisher is not None and not self.stopped:
            await self._bounded("stopping the publisher", [self.publisher.stop()])
        if not self.stopped:
            await self._bounded("closing an events socket", [e.close() for e in self.events.values()])
            await self._bounded("closing a viewer", [v.leave(self.api.http) for v in self.viewers])
        await self._close_lean_receiver()
        for api in self.apis:
            with contextlib.suppress(Exception):  # noqa: BLE001 - best-effort cleanup
                await within(STOP_SECONDS, api.close(), "closing the HTTP client")


def chat_reached_every_node(nodes: list[dict[str, Any]]) -> bool:
    """Say whether every node had chat recipients and they got (nearly) all of it."""
    return all(n["chat_expected"] and n["chat_received"] >= CHAT_DELIVERED_MIN * n["chat_expected"] for n in nodes)


def _clean(check: Any) -> bool:
    """Read an inventory check answer: `ok: true`, or no non-empty list of problems."""
    if isinstance(check, dict):
        if "ok" in check:
            return bool(check["ok"])
        return not any(isinstance(v, list) and v for v in check.values())
    return True


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f}MB"


async def run(scenario: Scenario, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one scenario and return its report (the caller prints or writes it)."""
    log = log or (lambda line: print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True))
    test = LoadTest(scenario, log)
    try:
        return await test.run()
    finally:
        await test.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shopstream loadtest", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the load test from the command line; exit 1 if an invariant is violated."""
    args = parser().parse_args(argv)
    try:
        scenario = from_arguments(args)
    except ScenarioError as exc:
        print(f"scenario error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        # Lean viewers take their sockets from the loop (pause_reading), which uvloop's UDP
        # transport cannot do: with any, the run uses the default asyncio loop.
        factory = None if scenario.lean_viewers else uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(run(scenario))
    except LoadError as exc:
        print(f"load test failed: {exc}", file=sys.stderr)
        return 2
    except aiohttp.ClientError as exc:
        print(f"load test failed: cannot reach {scenario.target}: {exc}", file=sys.stderr)
        return 2
    print(reporting.table(result), flush=True)
    json_path, png_path = reporting.write(result, scenario.results_dir)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else " (no PNG: matplotlib missing)"))
    return 0 if all(result["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
