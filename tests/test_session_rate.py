"""A session that falls below 90% of its frame rate for over 3 s is reported: stats,
/metrics and the log (issue: admission that keeps its promise)."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("prometheus_client")

from server.session import BELOW_RATE_AFTER_S, Session, SessionConfig  # noqa: E402
from server.stats import prometheus_text  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def send(session: Session, clock: Clock, fps: float, seconds: float) -> None:
    """Frames leave at ``fps`` for ``seconds``; the rate is checked every half second."""
    end = clock.t + seconds
    next_check = clock.t + 0.5
    while clock.t < end:
        clock.t += 1.0 / fps
        session._sent_times.append(clock.t)
        if clock.t >= next_check:
            session.check_rate()
            next_check += 0.5


def test_below_rate_is_reported_after_three_seconds(identity, caplog):
    clock = Clock()
    s = Session(identity, None, SessionConfig(fps=25.0), executor=None, ready_lag=2,
                clock=clock)
    s.t0 = clock.t
    send(s, clock, 25.0, 5.0)
    assert s.below_rate() == {"now": False, "for_s": 0.0, "episodes": 0, "seconds_total": 0.0}
    with caplog.at_level(logging.WARNING, logger="etf.session"):
        send(s, clock, 18.0, 2.0)  # below, but not for long enough yet
        assert not s.below_rate()["now"]
        send(s, clock, 18.0, 3.0)
    st = s.stats(public=True)["below_rate"]
    assert st["now"] and st["episodes"] == 1 and st["for_s"] >= BELOW_RATE_AFTER_S, st
    assert any("below its frame rate" in r.message for r in caplog.records)
    text = prometheus_text({"sessions": 1, "max_sessions": 4, "sessions_started": 1,
                            "refused": {}, "uptime_s": 10.0}, [s.stats(public=True)])
    assert 'etf_below_rate{session="' in text and "} 1.0" in text.split("etf_below_rate{")[1]
    send(s, clock, 25.0, 3.0)  # back at its rate
    st = s.below_rate()
    assert not st["now"] and st["episodes"] == 1 and 3.0 <= st["seconds_total"] <= 6.0, st
    send(s, clock, 12.0, 1.5)  # a short dip is not an episode
    send(s, clock, 25.0, 3.0)
    assert s.below_rate()["episodes"] == 1


def test_start_up_does_not_count(identity):
    """The first 3 s of media (the first frames, the clock settling) are not judged."""
    clock = Clock()
    s = Session(identity, None, SessionConfig(fps=25.0), executor=None, ready_lag=2,
                clock=clock)
    s.t0 = clock.t
    send(s, clock, 10.0, 2.9)
    assert s._below_since is None and not s.below_rate()["now"]
