"""How much CPU the machine has free and how much the server uses, over the last seconds.

Read from Linux's /proc on a background thread twice a second: the machine's idle time
(``/proc/stat``: idle + iowait, in cores) and the CPU time of the server's process and its
render processes (``/proc/PID/stat``), as rates over a window of a few seconds. Admission
(``SessionRegistry.overloaded``) divides the server's rate by its sessions to get the
measured cost of one session and admits another only if that much is free. In a
container with a CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) the free CPU is
also capped by what the quota leaves (the quota less the cgroup's own use): the machine may
be idle while the container may not use it. Elsewhere (no /proc) the meter reads nothing
and the rule is off.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_idle_seconds() -> float | None:
    """Idle + iowait CPU seconds of all cores since boot, or None without /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return (int(first[4]) + int(first[5])) / TICK


def stat_seconds(path: str | Path, children: bool = False) -> float | None:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process's, or a thread's
    under ``/proc/PID/task``), or None if it is gone. ``children``: instead those of its
    children that ended and were waited for (and of theirs)."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    k = 13 if children else 11  # utime, stime; cutime, cstime
    return (int(fields[k]) + int(fields[k + 1])) / TICK


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, or None if it is gone."""
    return stat_seconds(f"/proc/{pid}/stat")


def waited_children_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``'s children that ended and were waited for (and
    of theirs), or None if it is gone."""
    return stat_seconds(f"/proc/{pid}/stat", children=True)


class CgroupQuota:
    """A CPU quota on this process's cgroup: the cores it may use and its CPU seconds."""

    def __init__(self, cores: float, usage: Path, scale: float) -> None:
        self.cores = cores
        self._usage, self._scale = usage, scale

    def seconds(self) -> float | None:
        try:
            text = self._usage.read_text()
        except OSError:
            return None
        if self._usage.name == "cpu.stat":  # v2: "usage_usec N" among other lines
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) * self._scale
            return None
        return int(text.split()[0]) * self._scale

    @classmethod
    def find(cls, root: Path = Path("/sys/fs/cgroup")) -> CgroupQuota | None:
        """The quota of the cgroup mounted at ``root`` (v2, then v1), or None."""
        try:
            quota, period = (root / "cpu.max").read_text().split()[:2]
            if quota != "max":
                return cls(int(quota) / int(period), root / "cpu.stat", 1e-6)
            return None
        except (OSError, ValueError):
            pass
        try:
            quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None
        if quota <= 0 or period <= 0:
            return None
        return cls(quota / period, root / "cpuacct" / "cpuacct.usage", 1e-9)


class CpuMeter:
    """Idle cores of the machine and cores used by the server, averaged over ``window_s``."""

    def __init__(self, pids: Callable[[], list[int]], window_s: float = 3.0,
                 interval_s: float = 0.5, quota: CgroupQuota | None | bool = True) -> None:
        self.pids = pids  # the server's render processes (its own pid is added)
        self.window_s = window_s
        self.interval_s = interval_s
        #: the container's CPU quota, if any (True: look it up)
        self.quota = CgroupQuota.find() if quota is True else quota or None
        self._samples: deque[tuple[float, float, dict[int, float], float | None]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.available = machine_idle_seconds() is not None
        self._thread = None
        if self.available:
            self._thread = threading.Thread(target=self._run, name="etf-cpu-meter",
                                            daemon=True)
            self._thread.start()

    def sample(self) -> None:
        t, idle = time.monotonic(), machine_idle_seconds()
        if idle is None:
            return
        used = {}
        for pid in (os.getpid(), *self.pids()):
            s = process_seconds(pid)
            if s is not None:
                used[pid] = s
        group = self.quota.seconds() if self.quota is not None else None
        with self._lock:
            self._samples.append((t, idle, used, group))
            while len(self._samples) > 2 and t - self._samples[1][0] >= self.window_s:
                self._samples.popleft()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def rates(self) -> tuple[float, float] | None:
        """(idle cores of the machine, cores the server uses) over the last window, or None
        until the meter has a window's worth of samples."""
        with self._lock:
            if len(self._samples) < 2:
                return None
            (t0, idle0, used0, g0), (t1, idle1, used1, g1) = self._samples[0], self._samples[-1]
        dt = t1 - t0
        if dt < 0.5 * self.window_s:
            return None
        server = sum(used1[p] - used0[p] for p in used1 if p in used0)
        free = (idle1 - idle0) / dt
        if g0 is not None and g1 is not None:  # what the container's quota leaves
            free = min(free, max(0.0, self.quota.cores - (g1 - g0) / dt))
        return free, server / dt

    def close(self) -> None:
        self._stop.set()
