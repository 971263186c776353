"""Spontaneous blinks drawn from real talking people's (engines.motion.idle.Blinker,
measured by benchmarks/blinks_real.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.motion.idle import Blinker

FPS = 25.0


def _blinks(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(closure per frame, start times, lengths) of a Blinker's blinks."""
    b = Blinker(np.random.default_rng(seed))
    closed, starts, lengths = [], [], []
    for x in np.arange(int(seconds * FPS)) / FPS:
        closed.append(b.at(x))
        if not starts or b.start != starts[-1]:
            starts.append(b.start)
            lengths.append(b.dur)
    return np.array(closed), np.array(starts), np.array(lengths)


def test_blinks_come_as_often_and_as_irregularly_as_real_ones():
    closed, starts, lengths = _blinks(1800.0, seed=3)
    rate = len(starts) / 30.0
    assert 19.0 < rate < 26.0, rate  # real talking people: 22 a minute
    gaps = np.diff(starts)
    assert gaps.min() >= Blinker.DURATION_S[0] + Blinker.REOPEN - 1e-9
    p10, p50, p90 = np.percentile(gaps, [10, 50, 90])
    assert 1.5 < p50 < 2.6 and p90 / p10 > 4.0, (p10, p50, p90)  # not a metronome
    assert Blinker.DURATION_S[0] <= lengths.min() and lengths.max() <= Blinker.DURATION_S[1]
    assert 0.2 < np.median(lengths) < 0.33, np.median(lengths)
    assert closed.max() > 0.99 and (closed > 0.5).mean() < 0.08  # open most of the time


def test_each_blink_closes_fast_and_opens_slower():
    b = Blinker(np.random.default_rng(0))
    b.start, b.dur = 1.0, 0.3
    t = np.linspace(0.9, 1.4, 501)
    c = np.array([b.at(x) for x in t])
    peak = t[np.argmax(c)]
    assert abs(peak - (1.0 + 0.35 * 0.3)) < 0.002
    assert c[0] == 0.0 and c[-1] == 0.0


DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/talking")
def test_the_shipped_constants_are_what_the_real_clips_give(tmp_path):
    import json

    from benchmarks import blinks_real

    blinks_real.main(["-o", str(tmp_path / "b.json")])
    got = json.loads((tmp_path / "b.json").read_text())["fitted"]
    assert got == {"gap_log": list(Blinker.GAP_LOG), "duration_log": list(Blinker.DURATION_LOG)}
