"""The per-device worker: one thread owns the GPU and runs the frames of all sessions that
are due together, as one batch per engine call.

- **Batching**: a batch is dispatched as soon as every open session has a frame waiting,
  or ``max_batch`` frames wait, or the oldest waiting frame has waited ``max_wait_s`` (the
  bound on the latency batching adds). Live sessions tick on one shared grid
  (:func:`aligned_start`), so their frames arrive together and the first rule fires.
- **Fairness**: each batch takes one frame per session in round-robin order, starting after
  the session served first last time; a session with a backlog (catching up after a
  hiccup) gets a second slot only when everyone else with a frame waiting has one.
- **Capacity**: ``open(session)`` refuses sessions beyond ``capacity`` with
  :class:`CapacityError` and a message saying so, instead of slowing every session down.
  ``overloaded(period_s)`` says when the measured p99 (wait + compute) no longer fits a
  frame period, so a server can refuse newcomers before its sessions miss frames.

The worker knows nothing about faces: ``step(payloads) -> results`` does the work (for the
neural engines, ``engines.neural.live.NeuralFrameStep``). Results come back as
``concurrent.futures.Future``s (``asyncio.wrap_future`` in the server).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

from engines.latency import LatencyRing

log = logging.getLogger("etf.batching")


class CapacityError(RuntimeError):
    """No room for another session (the message says why)."""


def aligned_start(now: float, period: float) -> float:
    """The next instant on the shared tick grid (multiples of ``period`` on the monotonic
    clock) at or after ``now``: sessions started on it tick together and batch together."""
    return math.ceil(now / period) * period


class _Job:
    __slots__ = ("payload", "future", "submitted")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.future: Future = Future()
        self.submitted = time.perf_counter()


class BatchWorker:
    """See the module docstring. Thread-safe; ``step`` runs on the worker's own thread."""

    def __init__(self, step: Callable[[list], list], max_batch: int, capacity: int,
                 max_wait_s: float = 0.004, name: str = "etf-device") -> None:
        if max_batch < 1 or capacity < 1:
            raise ValueError("max_batch and capacity must be at least 1")
        self.step = step
        self.max_batch = max_batch
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self._queues: dict[Hashable, collections.deque[_Job]] = {}
        self._order: list[Hashable] = []  # round-robin order of open sessions
        self._rr = 0
        self._cond = threading.Condition()
        self._stopped = False
        self.latency = {k: LatencyRing(2000) for k in ("wait", "step", "total")}
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.refused = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ----- sessions ----------------------------------------------------------------------

    def open(self, session: Hashable) -> None:
        """Admit a session, or raise :class:`CapacityError`."""
        with self._cond:
            if self._stopped:
                raise CapacityError("the device worker has stopped")
            if session in self._queues:
                return
            if len(self._queues) >= self.capacity:
                self.refused += 1
                raise CapacityError(f"the GPU worker is at capacity ({self.capacity} sessions "
                                    "at full frame rate); try again later")
            self._queues[session] = collections.deque()
            self._order.append(session)

    def close(self, session: Hashable) -> None:
        """Remove a session; its frames still waiting are cancelled."""
        with self._cond:
            queue = self._queues.pop(session, None)
            if queue is None:
                return
            i = self._order.index(session)
            self._order.pop(i)
            if i < self._rr:
                self._rr -= 1
            for job in queue:
                job.future.cancel()
            self._cond.notify()

    @property
    def sessions(self) -> int:
        return len(self._queues)

    def submit(self, session: Hashable, payload: Any) -> Future:
        """Queue one frame's inputs; the future gets ``step``'s result for it."""
        job = _Job(payload)
        with self._cond:
            queue = self._queues.get(session)
            if queue is None:
                raise KeyError(f"session {session!r} is not open on this worker")
            queue.append(job)
            self._cond.notify()
        return job.future

    # ----- the worker thread ---------------------------------------------------------------

    def _ready(self) -> bool:
        waiting = [q for q in self._queues.values() if q]
        if not waiting:
            return False
        if len(waiting) >= len(self._queues) or sum(map(len, waiting)) >= self.max_batch:
            return True
        oldest = min(q[0].submitted for q in waiting)
        return time.perf_counter() - oldest >= self.max_wait_s

    def _take(self) -> list[_Job]:
        """Up to max_batch jobs, one per session per round, rotating who goes first."""
        batch: list[_Job] = []
        n = len(self._order)
        start = self._rr % n if n else 0
        while len(batch) < self.max_batch:
            took = False
            for k in range(n):
                queue = self._queues[self._order[(start + k) % n]]
                if queue and len(batch) < self.max_batch:
                    batch.append(queue.popleft())
                    took = True
            if not took:
                break
        self._rr = start + 1
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._ready():
                    waiting = [q[0].submitted for q in self._queues.values() if q]
                    timeout = None
                    if waiting:
                        timeout = max(0.0, min(waiting) + self.max_wait_s - time.perf_counter())
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                batch = self._take()
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = self.step([j.payload for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"step returned {len(results)} results for "
                                       f"{len(batch)} inputs")
            except Exception as e:  # one failing batch fails its frames, not the worker
                log.exception("batch of %d failed", len(batch))
                for j in batch:
                    j.future.set_exception(e)
                continue
            t1 = time.perf_counter()
            self.batch_sizes[len(batch)] += 1
            self.latency["step"].add(t1 - t0)
            for j, r in zip(batch, results, strict=True):
                self.latency["wait"].add(t0 - j.submitted)
                self.latency["total"].add(t1 - j.submitted)
                j.future.set_result(r)

    def stop(self) -> None:
        """Stop the thread; waiting frames are cancelled."""
        with self._cond:
            self._stopped = True
            for q in self._queues.values():
                for job in q:
                    job.future.cancel()
                q.clear()
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # ----- reporting ---------------------------------------------------------------------

    def overloaded(self, period_s: float) -> str | None:
        """Why another session would not fit (p99 wait + compute over one frame period)."""
        if self.latency["total"].count < 50:
            return None
        p99 = self.latency["total"].quantiles_ms()["p99"]
        if p99 > period_s * 1e3:
            return (f"the GPU worker is saturated (p99 {p99:.1f} ms per frame, over the "
                    f"{period_s * 1e3:.1f} ms frame period); try again later")
        return None

    def stats(self) -> dict:
        n = sum(self.batch_sizes.values())
        mean = sum(k * v for k, v in self.batch_sizes.items()) / n if n else 0.0
        return {"sessions": self.sessions, "capacity": self.capacity,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1e3,
                "batches": n, "mean_batch": round(mean, 2), "refused": self.refused,
                "latency_ms": {k: r.quantiles_ms() for k, r in self.latency.items()}}
