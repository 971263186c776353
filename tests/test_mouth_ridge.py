"""The mouth's opening and width learned from real talking mouths
(engines.render.mouth_ridge), blended with the visemes' in the default landmark engine."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from engines.media.audio_io import load_audio
from engines.motion.face_motion import N_PARAMS, P, apply
from engines.render import mouth_ridge
from engines.render.landmark_default import Loudness, SpeechLandmarkEngine
from engines.render.mouth_ridge import mouth_width
from etf_models.canonical_face import mouth_opening


def test_the_shipped_fit_loads_pinned_and_a_foreign_one_is_refused(tmp_path, monkeypatch):
    m = mouth_ridge.load()
    for r in (m.opening, m.width):
        assert r.w_phone.shape == (len(r.offsets), len(mouth_ridge.PHONES))
        assert r.future_rows <= 4  # at most 40 ms past the anticipated row
    assert not m.opening.from_rest and m.width.from_rest
    fit = json.loads(mouth_ridge.FIT_PATH.read_text())
    changed = tmp_path / "mouth_ridge.json"
    changed.write_text(json.dumps({**fit, "width": {**fit["width"], "bias": 0.5}}))
    monkeypatch.setattr(mouth_ridge, "FIT_PATH", changed)
    with pytest.raises(mouth_ridge.MouthRidgeError, match="SHA-256"):
        mouth_ridge.load()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**fit, "opening": {**fit["opening"],
                                                    "phones": fit["opening"]["phones"][::-1]}}))
    with pytest.raises(mouth_ridge.MouthRidgeError, match="phone set"):
        mouth_ridge.load(other)
    (tmp_path / "half.json").write_text(json.dumps({"opening": fit["opening"]}))
    with pytest.raises(mouth_ridge.MouthRidgeError, match="must hold opening, width"):
        mouth_ridge.load(tmp_path / "half.json")
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(mouth_ridge.MouthRidgeError):
        mouth_ridge.load(tmp_path / "junk.json")


def _landmarks(identity, audio, learned: bool, model=None) -> np.ndarray:
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0, learned_mouth=learned)
    if model is not None:
        eng.mouth_model = model
    eng.push_audio(audio)
    eng.flush()
    return np.array([eng.next_frame()[0] for _ in range(eng.frames_total)])


def test_the_learned_mouth_reshapes_the_visemes_without_losing_them(identity):
    """On the built-in sentence the blends move the mouth differently from the visemes
    alone, keep their timing (correlated) and their amplitude (spread back to it): the
    opening and, separately, the width."""
    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    ours = _landmarks(identity, audio, learned=False)
    blend = _landmarks(identity, audio, learned=True)
    m = mouth_ridge.default_model()
    # the learned opening alone
    opened = _landmarks(identity, audio, learned=True,
                        model=mouth_ridge.MouthRidge(m.opening, None))
    for measure, before, changed in ((mouth_opening, ours, 0.02), (mouth_width, opened, 0.01)):
        a, b = measure(before), measure(blend)
        assert np.abs(b - a).max() > changed, measure.__name__
        assert np.corrcoef(a, b)[0, 1] > 0.7, measure.__name__
    assert 0.75 < np.percentile(mouth_opening(blend), 90) / np.percentile(
        mouth_opening(ours), 90) < 1.3
    # the width narrows about as far as the visemes' and widens further, as real mouths
    # do (benchmarks/mouth_ridge.py: the visemes widened half as far as real people)
    wb, wo = mouth_width(blend), mouth_width(opened)
    rest = float(mouth_width(identity.neutral))
    assert 0.6 < (rest - wb.min()) / (rest - wo.min()) < 1.6
    assert 1.3 < (wb.max() - rest) / (wo.max() - rest) < 3.5


def _held(eng: SpeechLandmarkEngine, identity, phone: str) -> tuple[np.ndarray, np.ndarray]:
    """A frame in the middle of a long held ``phone`` at speaking loudness: (landmarks,
    speech parameters) after the learned blends."""
    eng._phones = np.full(200, mouth_ridge.PHONES.index(phone), np.int16)
    eng._levels = np.full(200, 0.8, np.float32)
    eng._slow_level = 0.8  # speaking (the blends fade out in silence)
    speech = eng.speech_params(1.0)
    eng.articulate(speech, 0.8, eng.opening_gain)
    lm = apply(identity.neutral, eng.fields, speech)
    return eng._learned_mouth(lm, speech, 100), speech


def test_rounded_lips_stay_narrower_than_spread_ones(identity):
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0)
    rest = float(mouth_width(identity.neutral))
    w, w_speech = _held(eng, identity, "W")
    iy, iy_speech = _held(eng, identity, "IY")
    assert float(mouth_width(w)) < rest - 0.04 < rest + 0.01 < float(mouth_width(iy))
    # made by rounding alone, or by stretching alone
    assert w_speech[P["lip_round"]] > 0.2 and abs(w_speech[P["lip_stretch"]]) < 1e-6
    assert iy_speech[P["lip_stretch"]] > 0.2 and abs(iy_speech[P["lip_round"]]) < 1e-6


def test_silence_stays_as_it_is_and_pressed_lips_stay_pressed(identity):
    silent = _landmarks(identity, np.zeros(16000, np.float32), learned=True)
    assert mouth_opening(silent).max() < 0.01
    assert np.abs(mouth_width(silent) - mouth_width(identity.neutral)).max() < 1e-3
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0)
    speech = np.zeros(N_PARAMS, np.float32)
    speech[P["lip_press"]] = 1.0
    lm = identity.neutral.copy()
    eng._phones = np.full(100, mouth_ridge.PHONES.index("AA"), np.int16)
    eng._levels = np.full(100, 0.8, np.float32)
    eng._slow_level = 0.8
    out = eng._learned_mouth(lm, speech.copy(), 50)
    assert np.abs(out - lm).max() == 0.0  # a /p b m/ is left alone: opening and width
    speech[P["lip_press"]] = 0.0
    speech[P["jaw_open"]] = 0.3
    lm = apply(identity.neutral, eng.fields, speech)
    m = eng.mouth_model
    want = m.opening.target(float(mouth_opening(lm)),
                            m.opening.predict(eng._phones, eng._levels, 50, 10, 16,
                                              eng._cepstra))
    out = eng._learned_mouth(lm, speech, 50)
    assert speech[P["jaw_open"]] >= 0.0
    # the width's rounding parts the lips a little too: the jaw made the opening asked
    assert abs(float(mouth_opening(out)) - want) < 0.02


def test_the_loudness_is_read_ahead_of_the_phones_at_no_extra_latency(identity, tmp_path):
    """Live, the recogniser commits phones 60 ms behind the audio while the loudness is
    known at once: the learned mouth reads the loudness that much further ahead (the
    jaw moves before the phones are in), the declared lookahead stays 100 ms, and the
    frames do not depend on how the audio is chunked."""
    from conftest import streamed_landmarks, synth_speech

    live = dict(phone_lookahead_ms=60, coart_future_ms=0)
    eng = SpeechLandmarkEngine(identity.neutral, 25.0, **live)
    assert eng.lookahead_ms == 100.0
    m = eng.mouth_model.opening
    assert m.future_rows <= 4 and m.level_future_rows == eng.LEVEL_LEAD_ROWS == 6
    phones = np.full(200, mouth_ridge.PHONES.index("AA"), np.int16)
    levels = np.full(200, 0.8, np.float32)
    quiet_ahead = levels.copy()
    quiet_ahead[101:] = 0.0  # the sound stops just after the frame's row
    cep = np.zeros((200, eng.envelope.n_cep), np.float32)
    now = m.predict(phones, levels, 100, 0, 6, cep)
    assert m.predict(phones, quiet_ahead, 100, 0, 6, cep) != now  # heard ahead
    assert (m.predict(phones, quiet_ahead, 100, 0, 0, cep)
            == m.predict(phones, levels, 100, 0, 0, cep))
    # the spectral envelope too: read as far ahead as the loudness, no further
    assert m.cep_offsets.max() == 6
    other = cep.copy()
    other[101:] = 1.0
    assert m.predict(phones, levels, 100, 0, 6, other) != now
    assert (m.predict(phones, levels, 100, 0, 0, other)
            == m.predict(phones, levels, 100, 0, 0, cep))

    speech = synth_speech("Bob bought a map of the moon.", tmp_path / "s.wav")
    a = streamed_landmarks(identity.neutral, speech, 320, **live)
    b = streamed_landmarks(identity.neutral, speech, 4000, **live)
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)


def test_the_envelope_settings_must_match_the_weights(tmp_path):
    fit = json.loads(mouth_ridge.FIT_PATH.read_text())
    assert fit["envelope"]["tau_rows"] > 0 and len(fit["envelope"]["mean0"]) == 8
    for r in ("opening", "width"):
        assert np.shape(fit[r]["w_cep"]) == (len(fit[r]["cep_offsets"]), 8)
    bad = {
        "no_envelope": {k: v for k, v in fit.items() if k != "envelope"},
        "short_mean": {**fit, "envelope": {**fit["envelope"], "mean0": [0.0] * 5}},
        "no_offsets": {**fit, "width": {k: v for k, v in fit["width"].items()
                                        if k != "cep_offsets"}},
    }
    for name, d in bad.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        with pytest.raises(mouth_ridge.MouthRidgeError, match="envelope|rows"):
            mouth_ridge.load(tmp_path / f"{name}.json")
    eng = SpeechLandmarkEngine(np.zeros((68, 2), np.float32) + 128.0, idle_amplitude=0.0)
    with pytest.raises(mouth_ridge.MouthRidgeError, match="spectral envelope"):
        eng.mouth_model.opening.predict(np.zeros(10, np.int16), np.zeros(10), 5, 0, 0)


def test_the_learned_mouth_hears_the_spectrum(identity, tmp_path):
    """The same phones and loudness with the spectrum's shape taken away move the mouth
    differently; and the spectrum alone opens an /aa/ wider than an /iy/ (every voice)
    and makes an /uw/ narrower than an /iy/ (on average over the voices: the width
    hears the spectrum less clearly), as vocal tracts do."""
    from conftest import synth_speech

    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    heard = _landmarks(identity, audio, learned=True)
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0)
    eng.envelope.normalise = lambda raw, levels: np.zeros_like(raw)  # a flat spectrum
    eng.push_audio(audio)
    eng.flush()
    flat = np.array([eng.next_frame()[0] for _ in range(eng.frames_total)])
    a, b = mouth_opening(heard), mouth_opening(flat)
    assert np.abs(a - b).max() > 0.01 and np.corrcoef(a, b)[0, 1] > 0.6

    # each vowel said three times after a carrier sentence (the running mean hears the
    # voice first, as in conversation), by four synthetic voices
    m = mouth_ridge.default_model()
    carrier = "This is a short sentence that I say before the word, so you hear my voice."
    parts = {}
    for voice in ("slt", "kal", "awb", "rms"):
        lead = synth_speech(carrier, tmp_path / "carrier.wav", voice=voice, pad_s=0.0)
        for vowel in ("ah", "ee", "oo"):
            tail = synth_speech(f"{vowel} {vowel} {vowel}", tmp_path / "v.wav", voice=voice,
                                pad_s=0.2)
            speech = np.r_[lead, tail]
            loud = Loudness().push(speech)
            env = m.spectral_envelope()
            cep = env.push(speech, loud)
            rows = len(lead) // 160 + np.flatnonzero(loud[len(lead) // 160:] > 0.3)
            for name, ridge in (("opening", m.opening), ("width", m.width)):
                w = mouth_ridge.cepstra_window(cep, rows, ridge.cep_offsets, 6)
                parts[voice, vowel, name] = float(np.mean((w * ridge.w_cep).sum(axis=(1, 2))))
    for voice in ("slt", "kal", "awb", "rms"):
        assert parts[voice, "ah", "opening"] > parts[voice, "ee", "opening"], voice
    mean = {v: np.mean([parts[k] for k in parts if k[1] == v and k[2] == "width"])
            for v in ("ee", "oo")}
    assert mean["oo"] < mean["ee"]


def test_a_long_live_stream_keeps_bounded_rows_and_the_same_frames(identity, monkeypatch):
    """A live stream drops the rows no coming frame reads (HISTORY_ROWS, in steps of
    TRIM_ROWS): its memory stays bounded over hours, and every frame is the one the
    whole stream kept in memory gives. A trimmed stream refuses to replay from its start."""
    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    audio = np.tile(np.r_[audio, np.zeros(8000, np.float32)], 6)  # ~25 s of talk and pauses

    def live(trim: bool):
        if trim:
            monkeypatch.setattr(SpeechLandmarkEngine, "HISTORY_ROWS", 50)
            monkeypatch.setattr(SpeechLandmarkEngine, "TRIM_ROWS", 200)
        eng = SpeechLandmarkEngine(identity.neutral, 25.0, phone_lookahead_ms=60,
                                   coart_future_ms=0)
        frames, longest = [], 0
        for i in range(0, len(audio), 640):
            eng.push_audio(audio[i:i + 640])
            longest = max(longest, len(eng._levels), len(eng._phones), len(eng._cepstra))
            while eng.frames_ready() > 0:
                frames.append(eng.next_frame(None)[0])
        monkeypatch.undo()
        return np.array(frames), longest, eng

    whole, longest_whole, _ = live(False)
    trimmed, longest, eng = live(True)
    assert eng._row0 > 1000 and longest < 500 < longest_whole
    assert trimmed.shape == whole.shape and np.allclose(trimmed, whole, atol=1e-5)
    with pytest.raises(RuntimeError, match="dropped"):
        eng.rewind()


def test_samples_that_are_not_finite_are_silence_and_leave_no_trace(identity):
    """A NaN burst in pushed audio once stayed in the spectral envelope's running mean
    for good, and the learned mouth then asked for a shut mouth in every later word."""
    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    bad = np.r_[np.zeros(4000, np.float32), np.full(400, np.nan, np.float32),
                np.full(100, np.inf, np.float32), np.zeros(4000, np.float32)]
    clean = np.r_[np.zeros(8500, np.float32)]
    runs = []
    for lead in (bad, clean):
        eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0)
        eng.push_audio(np.r_[lead, audio])
        eng.flush()
        runs.append(np.array([eng.next_frame()[0] for _ in range(eng.frames_total)]))
        assert np.isfinite(eng.envelope.mean).all() and np.isfinite(eng._levels).all()
    assert np.isfinite(runs[0]).all()
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-4)
