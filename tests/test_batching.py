"""The per-device BatchWorker (engines/neural/batching.py): batching, fairness, the latency
bound, capacity and failure isolation."""

from __future__ import annotations

import threading
import time

import pytest

from engines.neural.batching import BatchWorker, CapacityError, aligned_start


class Recorder:
    """A step that records each batch and can be held back to build up a queue."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads: list) -> list:
        self.gate.wait(5)
        self.batches.append(list(payloads))
        time.sleep(self.delay)
        return [("done", p) for p in payloads]


def _worker(step, **kw) -> BatchWorker:
    kw.setdefault("max_batch", 8)
    kw.setdefault("capacity", 8)
    return BatchWorker(step, **kw)


def test_frames_due_together_run_as_one_batch():
    rec = Recorder()
    w = _worker(rec, max_wait_s=1.0)  # only "everyone has a frame" can dispatch early
    for s in "abc":
        w.open(s)
    t0 = time.perf_counter()
    futs = [w.submit(s, (s, 0)) for s in "abc"]
    assert [f.result(2) for f in futs] == [("done", (s, 0)) for s in "abc"]
    assert time.perf_counter() - t0 < 0.5  # did not wait for max_wait
    assert [sorted(p[0] for p in b) for b in rec.batches] == [["a", "b", "c"]]
    assert w.stats()["mean_batch"] == 3.0
    w.stop()


def test_added_latency_is_bounded_when_sessions_are_missing():
    rec = Recorder()
    w = _worker(rec, max_wait_s=0.03)
    for s in "abc":
        w.open(s)
    t0 = time.perf_counter()
    w.submit("a", 1).result(2)  # b and c never send: dispatched after max_wait alone
    waited = time.perf_counter() - t0
    assert 0.025 <= waited < 0.25
    assert rec.batches == [[1]]
    assert w.latency["wait"].quantiles_ms()["max"] < 250
    w.stop()


def test_round_robin_is_fair_to_sessions_without_a_backlog():
    rec = Recorder()
    w = _worker(rec, max_batch=3, max_wait_s=0.001)
    for s in "abc":
        w.open(s)
    rec.gate.clear()  # hold the first batch in the engine so a backlog builds up behind it
    first = w.submit("a", ("a", -1))
    time.sleep(0.05)
    futs = [w.submit("a", ("a", i)) for i in range(5)]
    futs += [w.submit("b", ("b", 0)), w.submit("c", ("c", 0))]
    rec.gate.set()
    first.result(2)
    for f in futs:
        f.result(2)
    second = rec.batches[1]
    # A's backlog does not crowd out B and C: one frame each, A's oldest first.
    assert sorted(second) == [("a", 0), ("b", 0), ("c", 0)]
    a_frames = [p[1] for b in rec.batches for p in b if p[0] == "a"]
    assert a_frames == [-1, 0, 1, 2, 3, 4]  # a session's frames stay in order
    w.stop()


def test_more_sessions_than_batch_rotate_who_goes_first():
    rec = Recorder()
    w = _worker(rec, max_batch=2, max_wait_s=0.001)
    for s in "abc":
        w.open(s)
    rec.gate.clear()
    w.submit("a", "a0")
    time.sleep(0.05)
    futs = [w.submit(s, s + str(i)) for i in (1, 2) for s in "abc"]
    rec.gate.set()
    for f in futs:
        f.result(2)
    served_first = [b[0][0] for b in rec.batches[1:]]
    assert len(set(served_first)) > 1  # not always the same session at the head
    assert all(len(b) <= 2 for b in rec.batches)
    w.stop()


def test_capacity_refuses_with_a_message_and_frees_on_close():
    w = _worker(Recorder(), capacity=2)
    w.open("a")
    w.open("b")
    w.open("a")  # re-opening is harmless
    with pytest.raises(CapacityError, match=r"at capacity \(2 sessions"):
        w.open("c")
    assert w.stats()["refused"] == 1
    w.close("a")
    w.open("c")
    assert w.sessions == 2
    with pytest.raises(KeyError):
        w.submit("a", 1)
    w.stop()
    with pytest.raises(CapacityError, match="stopped"):
        w.open("d")


def test_a_failing_batch_fails_its_frames_and_the_worker_goes_on():
    calls = []

    def step(payloads):
        calls.append(payloads)
        if "bad" in payloads:
            raise ValueError("engine exploded")
        return payloads

    w = _worker(step, max_wait_s=0.001)
    w.open("a")
    with pytest.raises(ValueError, match="exploded"):
        w.submit("a", "bad").result(2)
    assert w.submit("a", "good").result(2) == "good"
    w.stop()


def test_closing_a_session_cancels_its_waiting_frames():
    rec = Recorder()
    w = _worker(rec, max_wait_s=1.0)
    w.open("a")
    w.open("b")
    rec.gate.clear()
    w.submit("a", 0)
    time.sleep(0.05)
    pending = w.submit("a", 1)
    w.close("a")
    rec.gate.set()
    assert pending.cancelled()
    w.stop()


def test_overloaded_when_p99_exceeds_the_period():
    w = _worker(Recorder(delay=0.002), max_wait_s=0.0005)
    w.open("a")
    for i in range(60):
        w.submit("a", i).result(2)
    assert w.overloaded(period_s=1.0) is None
    assert "saturated" in w.overloaded(period_s=0.001)
    w.stop()


def test_aligned_start_puts_sessions_on_one_grid():
    p = 0.04
    a, b = aligned_start(100.013, p), aligned_start(100.031, p)
    assert a == b and 100.031 <= a < 100.031 + p
    assert aligned_start(100.04, p) == pytest.approx(100.04)
