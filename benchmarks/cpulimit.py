"""Give a benchmark's server processes a fixed CPU budget with a cgroup of their own.

On a shared machine the server and the load generator compete for the same cores; a
CPU quota (cgroup v2 ``cpu.max``, or cgroup v1 ``cpu.cfs_quota_us`` where the ``cpu``
controller is still on v1) caps the server at, say, half a core, so "viewers served
at this budget" does not depend on what the load generator or anything else takes.
A quota is a ceiling, not a reservation: :meth:`CpuLimit.prioritize` raises the group's
weight so that other work on a shared machine does not take the budget away. Needs root (or a delegated cgroup); otherwise
:func:`create` raises :class:`CpuLimitUnavailable` saying why.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# A throttled group may overrun its quota by up to a scheduler tick per period: 50 ms makes
# that a smaller share than 20 ms did, while a server capped at half a core pauses for at
# most ~25 ms at a time.
PERIOD_US = 50_000
ROOT = Path("/sys/fs/cgroup")


class CpuLimitUnavailable(RuntimeError):
    """No writable cgroup with a CPU controller here."""


class CpuLimit:
    """One cgroup with a CPU quota; processes are moved in with :meth:`add`."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2

    def set(self, cores: float | None) -> None:
        """Cap the group at ``cores`` (None: no cap)."""
        quota = -1 if cores is None else max(1000, int(cores * PERIOD_US))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def prioritize(self, factor: int = 8) -> None:
        """Weigh the group ``factor`` times the default against other work on the machine.

        A quota is only a ceiling; on a machine shared with other work a budgeted
        process may not get it. A higher weight (v2 ``cpu.weight``, v1 ``cpu.shares``)
        makes the budget what it gets, while the quota still caps it.
        """
        if self.v2:
            (self.path / "cpu.weight").write_text(str(100 * factor))
        else:
            (self.path / "cpu.shares").write_text(str(1024 * factor))

    def add(self, pid: int) -> None:
        """Move a process (all of its threads) into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> tuple[int, int]:
        """Return (periods, periods in which the group was throttled) so far."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))

    def remove(self) -> None:
        """Move the group's processes back to the parent and delete the group."""
        with contextlib.suppress(OSError):
            pids = (self.path / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def create(name: str) -> CpuLimit:
    """Create the cgroup ``name`` under the CPU controller's hierarchy (v2 first, then v1)."""
    name = f"{name}-{os.getpid()}"
    reasons = []
    v2_controllers = ROOT / "cgroup.controllers"
    if v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
        try:
            subtree = ROOT / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu")
            path = ROOT / name
            path.mkdir()
            return CpuLimit(path, v2=True)
        except OSError as exc:
            reasons.append(f"cgroup v2 at {ROOT}: {exc}")
    else:
        reasons.append(f"no cgroup v2 cpu controller at {ROOT}")
    v1 = ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists():
        try:
            path = v1 / name
            path.mkdir()
            return CpuLimit(path, v2=False)
        except OSError as exc:
            reasons.append(f"cgroup v1 at {v1}: {exc}")
    else:
        reasons.append(f"no cgroup v1 cpu controller at {v1}")
    raise CpuLimitUnavailable("; ".join(reasons))
