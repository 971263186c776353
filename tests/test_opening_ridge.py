"""The mouth's opening learned from real talking mouths (engines.render.opening_ridge),
blended with the visemes' in the default landmark engine."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from engines.media.audio_io import load_audio
from engines.motion.face_motion import N_PARAMS, P
from engines.render import opening_ridge
from engines.render.landmark_default import SpeechLandmarkEngine
from etf_models.canonical_face import mouth_opening


def test_the_shipped_fit_loads_pinned_and_a_foreign_one_is_refused(tmp_path, monkeypatch):
    m = opening_ridge.load()
    assert m.w_phone.shape == (len(m.offsets), len(opening_ridge.PHONES))
    assert m.future_rows <= 4  # at most 40 ms past the anticipated row
    fit = json.loads(opening_ridge.FIT_PATH.read_text())
    changed = tmp_path / "opening_ridge.json"
    changed.write_text(json.dumps({**fit, "bias": fit["bias"] + 0.01}))
    monkeypatch.setattr(opening_ridge, "FIT_PATH", changed)
    with pytest.raises(opening_ridge.OpeningRidgeError, match="SHA-256"):
        opening_ridge.load()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**fit, "phones": fit["phones"][::-1]}))
    with pytest.raises(opening_ridge.OpeningRidgeError, match="phone set"):
        opening_ridge.load(other)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(opening_ridge.OpeningRidgeError, match="not an opening model"):
        opening_ridge.load(tmp_path / "junk.json")


def _openings(identity, audio, learned: bool) -> np.ndarray:
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0, learned_opening=learned)
    eng.push_audio(audio)
    eng.flush()
    return mouth_opening(np.array([eng.next_frame()[0] for _ in range(eng.frames_total)]))


def test_the_learned_opening_reshapes_the_visemes_opening_without_losing_it(identity):
    """On the built-in sentence the blend moves the mouth differently from the visemes
    alone, keeps their timing (correlated) and their amplitude (spread back to it)."""
    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    ours = _openings(identity, audio, learned=False)
    blend = _openings(identity, audio, learned=True)
    assert np.abs(blend - ours).max() > 0.02
    assert np.corrcoef(blend, ours)[0, 1] > 0.7
    assert 0.75 < np.percentile(blend, 90) / np.percentile(ours, 90) < 1.3


def test_silence_stays_shut_and_pressed_lips_stay_pressed(identity):
    assert _openings(identity, np.zeros(16000, np.float32), learned=True).max() < 0.01
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0)
    speech = np.zeros(N_PARAMS, np.float32)
    speech[P["lip_press"]] = 1.0
    lm = identity.neutral.copy()
    assert eng._learned_opening(lm, speech.copy(), 0) is lm  # a /p b m/ is left alone
    speech[P["lip_press"]] = 0.0
    speech[P["jaw_open"]] = 0.3
    eng._phones = np.full(100, opening_ridge.PHONES.index("AA"), np.int16)
    eng._levels = np.full(100, 0.8, np.float32)
    eng._slow_level = 0.8  # speaking (the blend fades out in silence)
    from engines.motion.face_motion import apply

    lm = apply(identity.neutral, eng.fields, speech)
    out = eng._learned_opening(lm, speech, 50)
    assert speech[P["jaw_open"]] >= 0.0
    assert abs(float(mouth_opening(out)) - eng.opening_model.target(
        float(mouth_opening(lm)), eng.opening_model.predict(eng._phones, eng._levels, 50, 10))
    ) < 0.01
