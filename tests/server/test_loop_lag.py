"""The event-loop lag metric: a loop held busy shows as late samples on /metrics."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families


async def _lag_buckets(client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    text = await (await client.get("/metrics")).text()
    return {s.labels["le"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "shopstream_event_loop_lag_seconds" for s in family.samples
            if s.name.endswith("_bucket")}


async def test_a_blocked_loop_is_counted_as_lag(client) -> None:
    await asyncio.sleep(0.2)  # a few samples of an idle loop
    before = await _lag_buckets(client)
    assert before["+Inf"] >= 1
    time.sleep(0.3)  # noqa: ASYNC251 - deliberate: the server's loop (this test's) is blocked for 300 ms
    await asyncio.sleep(0.15)
    after = await _lag_buckets(client)
    late = (after["+Inf"] - after["0.1"]) - (before["+Inf"] - before["0.1"])
    assert late >= 1, (before, after)  # the sample due during the block woke about 250-300 ms late


async def test_garbage_collections_are_timed(client) -> None:
    import gc

    async def collections() -> float:
        text = await (await client.get("/metrics")).text()
        return next(s.value for family in text_string_to_metric_families(text)
                    if family.name == "shopstream_gc_pause_seconds" for s in family.samples
                    if s.name.endswith("_count"))

    before = await collections()
    gc.collect()
    assert await collections() >= before + 1
