"""The spectral envelope the learned mouth reads (engines.audio.spectral_envelope)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from engines.audio.spectral_envelope import SpectralEnvelope
from engines.media.audio_io import load_audio
from engines.render.landmark_default import Loudness


def _speech() -> np.ndarray:
    return load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)


def _streamed(audio: np.ndarray, chunk: int, mean0: np.ndarray) -> np.ndarray:
    env, loud = SpectralEnvelope(mean0), Loudness()
    rows = [env.push(audio[i : i + chunk], loud.push(audio[i : i + chunk]))
            for i in range(0, len(audio), chunk)]
    return np.vstack(rows)


def test_rows_are_the_loudness_rows_however_the_audio_is_chunked():
    audio = _speech()
    mean0 = np.zeros(8)
    whole = _streamed(audio, len(audio), mean0)
    assert whole.shape == (len(audio) // 160, 8)
    for chunk in (160, 320, 333, 4000):
        assert np.allclose(_streamed(audio, chunk, mean0), whole, atol=1e-4), chunk
    # a chunk shorter than a row gives no row and loses nothing
    env = SpectralEnvelope(mean0)
    assert env.raw(audio[:100]).shape == (0, 8)
    assert np.allclose(np.vstack([env.raw(audio[100:1000]), env.raw(audio[1000:3200])]),
                       SpectralEnvelope(mean0).raw(audio[:3200]), atol=1e-4)


def test_each_row_is_its_own_32_ms_ending_where_its_loudness_row_ends():
    """Row r hears only audio up to sample 160 (r + 1): what follows cannot change it."""
    audio = _speech()
    env = SpectralEnvelope(np.zeros(8))
    a = env.raw(audio[:8000])
    b = SpectralEnvelope(np.zeros(8)).raw(np.r_[audio[:8000], np.ones(1600, np.float32)])
    assert np.array_equal(a, b[:50])
    # a tone's row differs from the silence before it from the row its window reaches
    tone = np.r_[np.zeros(1600), 0.3 * np.sin(np.arange(1600) * 0.3)].astype(np.float32)
    rows = SpectralEnvelope(np.zeros(8)).raw(tone)
    assert np.allclose(rows[:7], rows[0]) and not np.allclose(rows[10], rows[0])


def test_the_running_mean_follows_loud_rows_only_and_quiet_rows_are_zero():
    raw = np.tile(np.arange(8, dtype=np.float32), (2000, 1)) + 5.0
    env = SpectralEnvelope(np.zeros(8), tau_rows=100.0, gate=0.1)
    quiet = env.normalise(raw[:500], np.zeros(500))
    # nothing heard: the mean stays, and silence's rows say nothing (zero)
    assert np.allclose(quiet, 0.0) and np.allclose(env.mean, 0.0)
    loud = env.normalise(raw[500:], np.full(1500, 0.5))
    # a steady voice fades to zero: its own colour drops out, at the time constant
    assert np.abs(loud[-1]).max() < 1e-3
    assert 0.3 < loud[100, 7] / raw[0, 7] < 0.45  # e^-1 after tau rows


def test_bad_settings_and_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match="mean0"):
        SpectralEnvelope(np.zeros(0))
    with pytest.raises(ValueError, match="tau_rows"):
        SpectralEnvelope(np.zeros(8), tau_rows=0.5)
    with pytest.raises(ValueError, match="loudness rows"):
        SpectralEnvelope(np.zeros(8)).push(np.zeros(1600, np.float32), np.zeros(3))
