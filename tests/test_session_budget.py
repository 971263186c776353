"""The compute budget: how long a frame gets to render once its audio is in before it
leaves with that audio (``SessionConfig.compute_budget_ms``)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.session import Session, SessionConfig, VideoOut


def _session(identity, **config) -> Session:
    s = Session(identity, None, SessionConfig(fps=25.0, **config), executor=None,
                ready_lag=2, clock=lambda: 100.0)
    s.t0 = 100.0
    return s


def test_the_budget_sets_when_frames_and_their_audio_leave(identity):
    # ready at the tick of t0 + (k + 2 + 1) * 40 ms, then the budget
    default = _session(identity)
    assert default.describe()["pipeline_delay_ms"] == 160.0  # one frame period, as before
    assert default._release_at(0.2) == pytest.approx(100.0 + 0.16 + 0.2)
    quick = _session(identity, compute_budget_ms=12.5)
    assert quick.describe()["pipeline_delay_ms"] == 132.5
    assert quick.stats()["pipeline_delay_ms"] == 132.5
    assert quick._release_at(0.2) == pytest.approx(100.0 + 0.1325 + 0.2)


@pytest.mark.parametrize("budget", [0.0, 4.9, 40.1, -10.0])
def test_a_budget_outside_one_frame_is_refused(budget):
    with pytest.raises(ValueError, match="compute budget"):
        SessionConfig(fps=25.0, compute_budget_ms=budget)
    SessionConfig(fps=30.0, compute_budget_ms=33.0)
    with pytest.raises(ValueError, match="compute budget"):
        SessionConfig(fps=30.0, compute_budget_ms=34.0)


def test_a_frame_that_overran_its_budget_leaves_at_once_and_is_timed(identity):
    clock = [100.0]
    s = Session(identity, None, SessionConfig(fps=25.0, compute_budget_ms=10.0),
                executor=None, ready_lag=2, clock=lambda: clock[0])

    async def go():
        s.t0 = clock[0]
        s._task = asyncio.get_running_loop().create_future()  # no tick loop here
        clock[0] = s._release_at(0.0) + 0.015  # the frame came 15 ms after its release
        s.video_queue.put_nowait(VideoOut(0, None, s._release_at(0.0)))
        t = asyncio.get_running_loop().time()
        out = await s.next_video()
        return out, asyncio.get_running_loop().time() - t

    out, waited = asyncio.run(go())
    assert out.index == 0 and waited < 0.01
    late = s.stats()["latency_ms"]["late"]
    assert late["max"] == pytest.approx(15.0, abs=0.01), late
    assert np.isfinite(late["p99"])
