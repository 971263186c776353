"""How much CPU the machine has free and how much the server uses, over the last seconds.

Read from Linux's /proc on a background thread twice a second: the machine's idle time
(``/proc/stat``: idle + iowait, in cores) and the CPU time of the server's process and its
render processes (``/proc/PID/stat``), as rates over a window of a few seconds. Admission
(``SessionRegistry.overloaded``) divides the server's rate by its sessions to get the
measured cost of one session and admits another only if that much is free. Elsewhere
(no /proc) the meter reads nothing and the rule is off.
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


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuMeter:
    """Idle cores of the machine and cores used by the server, averaged over ``window_s``."""

    def __init__(self, pids: Callable[[], list[int]], window_s: float = 3.0,
                 interval_s: float = 0.5) -> None:
        self.pids = pids  # the server's render processes (its own pid is added)
        self.window_s = window_s
        self.interval_s = interval_s
        self._samples: deque[tuple[float, float, dict[int, float]]] = deque()
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
        with self._lock:
            self._samples.append((t, idle, used))
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
            (t0, idle0, used0), (t1, idle1, used1) = self._samples[0], self._samples[-1]
        dt = t1 - t0
        if dt < 0.5 * self.window_s:
            return None
        server = sum(used1[p] - used0[p] for p in used1 if p in used0)
        return (idle1 - idle0) / dt, server / dt

    def close(self) -> None:
        self._stop.set()
