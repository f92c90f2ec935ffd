"""The load test's own bookkeeping: it ends when told (a cancel is never lost, a stuck task
is named) and counts chat deliveries only where they were expected."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from benchmarks import loadtest
from benchmarks.loadtest import LoadTest
from benchmarks.scenario import build
from benchmarks.shop import LoadError, within


async def _cancel_as_it_completes(wait: Callable[[Awaitable[Any]], Awaitable[Any]]) -> asyncio.Task[None]:
    """Cancel a task in the very tick its awaited future completes (how the show ended)."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def loop_body() -> None:
        await wait(future)
        await asyncio.sleep(30)  # reached only if the cancel was lost

    task = asyncio.ensure_future(loop_body())
    await asyncio.sleep(0)  # the task now waits on the future
    future.set_result(1)
    task.cancel()
    await asyncio.wait([task], timeout=1)
    return task


async def test_within_keeps_a_cancel_that_meets_a_completed_future() -> None:
    task = await _cancel_as_it_completes(lambda aw: within(5, aw, "test"))
    assert task.cancelled()


async def test_wait_for_loses_that_cancel_on_this_python() -> None:
    """Why `within` exists: on 3.11 this task runs on (3.12 fixed wait_for)."""
    task = await _cancel_as_it_completes(lambda aw: asyncio.wait_for(aw, 5))
    try:
        if sys.version_info >= (3, 12):
            assert task.cancelled()
        else:
            assert not task.done()
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=1)


async def test_within_names_what_timed_out() -> None:
    with pytest.raises(LoadError, match="the thing: no answer within 0.05 s") as caught:
        await within(0.05, asyncio.sleep(1), "the thing")
    assert caught.value.code == "timeout"


async def test_a_task_that_will_not_stop_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadtest, "STOP_SECONDS", 0.2)
    lines: list[str] = []
    test = LoadTest(build("smoke"), lines.append)

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # swallows the stop's cancel (as wait_for did) and goes on
        await asyncio.sleep(10)

    task = test._spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)
    await test._cancel_tasks()
    try:
        assert test.errors == ["stuck:stubborn"]
        assert any("task stubborn did not stop" in line for line in lines), lines
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=1)
        await test.api.close()


def test_chat_counts_a_delivery_only_where_it_was_expected() -> None:
    from benchmarks.loadtest import ChatLog

    log = ChatLog()
    log.sent["hi"] = (1.0, 0, frozenset({1}))  # sender 0; only viewer 1 was connected
    for index in (0, 1, 2):  # the sender's echo and a late joiner's copy do not count
        log.recipient(index)("hi", 1.5)
    assert log.received == 1 and log.latencies == [(1.0, 0.5)]


def test_chat_must_reach_the_viewers_of_every_node() -> None:
    from benchmarks.loadtest import chat_reached_every_node

    def node(expected: int, received: int) -> dict[str, int]:
        return {"chat_expected": expected, "chat_received": received}

    assert chat_reached_every_node([node(200, 200), node(200, 199)])
    assert not chat_reached_every_node([node(200, 200), node(200, 150)])  # lost on one node
    assert not chat_reached_every_node([node(200, 200), node(0, 0)])  # a node nobody chatted to
