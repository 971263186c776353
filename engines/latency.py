"""Latency rings: the last N durations of one stage, with p50/p99/max (thread-safe).

Shared by the engines (backend inference times, the batching worker) and the server's
per-session statistics. Fixed size, so memory stays constant however long a server runs.
"""

from __future__ import annotations

import threading

import numpy as np


def quantiles_ms(seconds) -> dict[str, float]:
    """``{"p50": ms, "p99": ms, "max": ms}`` of durations in seconds (zeros when empty)."""
    data = np.asarray(seconds, np.float64)
    if data.size == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    p50, p99 = np.percentile(data, [50, 99])
    return {
        "p50": round(float(p50) * 1e3, 3),
        "p99": round(float(p99) * 1e3, 3),
        "max": round(float(data.max()) * 1e3, 3),
    }


class LatencyRing:
    """The last ``window`` durations (seconds) of one stage; thread-safe."""

    def __init__(self, window: int = 500) -> None:
        self._buf = np.zeros(window, np.float64)
        self._n = 0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._buf[self._n % len(self._buf)] = seconds
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def quantiles_ms(self) -> dict[str, float]:
        """``{"p50": ms, "p99": ms, "max": ms}`` over the window (zeros when empty)."""
        with self._lock:
            data = self._buf[: min(self._n, len(self._buf))].copy()
        return quantiles_ms(data)
