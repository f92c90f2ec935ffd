"""Run N server processes on one HTTP port and restart any that dies.

`shopstream serve --workers N` starts this supervisor. It prepares the database once
(the embedded PostgreSQL, when no DATABASE_URL is given, runs for the supervisor's
lifetime) and starts N copies of `shopstream serve` with `SHOPSTREAM_WORKER_INDEX`
set. Each worker binds the shared port with SO_REUSEPORT (the kernel spreads new
connections over them), its own private port (`WORKER_PORT_BASE + index`, where other
workers' relays reach it) and its own slice of `ICE_PORT_RANGE`, and runs its own SFU.
A worker that exits is started again after a short back-off; SIGTERM/SIGINT stop all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from server.config import Settings

log = logging.getLogger("shopstream.workers")

RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0)
STOP_TIMEOUT_SECONDS = 20.0


def worker_command() -> list[str]:
    """Return the command that runs one worker (this interpreter, this package)."""
    return [sys.executable, "-c", "from server.cli import main; main()", "serve"]


class Supervisor:
    """Keep `count` worker processes running until stopped."""

    def __init__(self, settings: Settings, dsn: str, argv: Sequence[str] = ()) -> None:
        self.settings = settings
        self.count = settings.worker_count
        self.dsn = dsn
        self.argv = list(argv)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = [0] * self.count
        self._stopping = False
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Stop every worker and do not restart them (a signal handler calls this)."""
        # Set at once, not when run() wakes up: Ctrl-C also reaches the workers (same
        # process group), and one that exits first must not be restarted.
        self._stopping = True
        self._stop.set()

    def environment(self, index: int) -> dict[str, str]:
        """Return a worker's environment: the supervisor's, with its index and the database."""
        settings = self.settings
        env = dict(os.environ)
        env.update({
            "SHOPSTREAM_WORKERS": str(self.count),
            "SHOPSTREAM_WORKER_INDEX": str(index),
            "SHOPSTREAM_HOST": settings.host,
            "SHOPSTREAM_PORT": str(settings.port),
            "SHOPSTREAM_DATA_DIR": str(settings.data_dir),
            "DATABASE_URL": self.dsn,
            # The same secret in every worker: tokens and relay grants work across them.
            "JWT_SECRET": settings.jwt_secret.get(),
        })
        return env

    async def start(self, index: int) -> None:
        """Start worker `index`."""
        proc = await asyncio.create_subprocess_exec(
            *worker_command(), *self.argv, env=self.environment(index),
            stdin=asyncio.subprocess.DEVNULL,
        )
        self.procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    async def run(self) -> None:
        """Run the workers until :meth:`request_stop`, restarting any that exits."""
        for index in range(self.count):
            await self.start(index)
        watchers = {asyncio.ensure_future(self._watch(i)) for i in range(self.count)}
        await self._stop.wait()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, index: int) -> None:
        while True:
            proc = self.procs[index]
            started = time.monotonic()
            code = await proc.wait()
            if self._stopping:
                return
            # A worker that ran for a while gets restarted at once; one that keeps
            # failing at start is retried more slowly.
            if time.monotonic() - started > 30:
                self.restarts[index] = 0
            delay = RESTART_BACKOFF_SECONDS[min(self.restarts[index], len(RESTART_BACKOFF_SECONDS) - 1)]
            self.restarts[index] += 1
            log.warning("worker %d (pid %d) exited with %s: restarting in %.1f s",
                        index, proc.pid, code, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self.start(index)
