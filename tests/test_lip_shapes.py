"""The lips' shape learned from real talking mouths (engines.render.lip_shapes), applied by
the default landmark engine after it has decided the mouth's opening and width."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from engines.media.audio_io import load_audio
from engines.render import lip_shapes
from engines.render.landmark_default import SpeechLandmarkEngine
from engines.render.mouth_ridge import mouth_width
from etf_models.canonical_face import mouth_opening

TALKING = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking"
# index in lip_shapes.POINTS (48..67) of: mouth corners, upper and lower inner lip middles,
# outer lower lip middle
CORNERS, UPPER_IN, LOWER_IN, LOWER_OUT = [0, 6], 14, 18, 9


def test_the_shipped_fit_loads_pinned_and_a_foreign_one_is_refused(tmp_path, monkeypatch):
    m = lip_shapes.load()
    assert m.basis.shape == (3, 20, 2)
    fit = json.loads(lip_shapes.FIT_PATH.read_text())
    changed = tmp_path / "lip_shapes.json"
    fit["opening"][0][0] += 0.01
    changed.write_text(json.dumps(fit))
    monkeypatch.setattr(lip_shapes, "FIT_PATH", changed)
    with pytest.raises(lip_shapes.LipShapesError, match="SHA-256"):
        lip_shapes.load()
    (tmp_path / "half.json").write_text(json.dumps({"opening": fit["opening"]}))
    with pytest.raises(lip_shapes.LipShapesError, match="not a lip-shape fit"):
        lip_shapes.load(tmp_path / "half.json")
    (tmp_path / "short.json").write_text(json.dumps({k: v[:5] for k, v in fit.items()}))
    with pytest.raises(lip_shapes.LipShapesError, match="3 x 20 x 2"):
        lip_shapes.load(tmp_path / "short.json")
    (tmp_path / "junk.json").write_text("[1, 2")
    with pytest.raises(lip_shapes.LipShapesError):
        lip_shapes.load(tmp_path / "junk.json")


def test_the_shapes_move_the_lips_as_real_lips_move():
    """Opening mostly lowers the lower lip, lifts the upper about a third as far, keeps the lower
    lip's thickness (its outer edge drops about as far as its inner one); widening moves
    the corners out, narrowing in; all left-right symmetric (the fit is made so)."""
    b = lip_shapes.load().basis
    op, wide, narrow = b
    assert op[LOWER_IN, 1] > 0.5 and -0.5 * op[LOWER_IN, 1] < op[UPPER_IN, 1] < 0.0
    assert 0.6 < op[LOWER_OUT, 1] / op[LOWER_IN, 1] < 1.6
    # widening: corners apart (x grows on the image-right corner, shrinks on the left);
    # narrowing has the negative regressor: corners come together as the width shrinks
    assert wide[CORNERS[1], 0] - wide[CORNERS[0], 0] > 0.5
    assert narrow[CORNERS[1], 0] - narrow[CORNERS[0], 0] > 0.5
    from etf_models.canonical_face import MIRROR_68

    mirror = MIRROR_68[lip_shapes.POINTS] - lip_shapes.POINTS[0]
    np.testing.assert_allclose(b[:, mirror] * [-1.0, 1.0], b, atol=2e-6)


def test_the_shape_keeps_the_opening_and_width_and_rest_is_the_faces_own(identity):
    m = lip_shapes.load()
    n = identity.neutral.astype(np.float64)
    lips = m.shape(n, 0.0, 0.0)
    np.testing.assert_allclose(lips, n[lip_shapes.POINTS] - n[lip_shapes.ANCHOR], atol=1e-9)
    for d_open in (0.02, 0.1, 0.2, 0.3):
        for d_width in (-0.15, -0.05, 0.0, 0.05, 0.15):
            lm = n.copy()
            lm[lip_shapes.POINTS] = n[lip_shapes.ANCHOR] + m.shape(n, d_open, d_width)
            got_o = mouth_opening(lm) - mouth_opening(n)
            got_w = mouth_width(lm) - mouth_width(n)
            assert abs(got_o - d_open) < 0.01 and abs(got_w - d_width) < 0.003, \
                (d_open, d_width, got_o, got_w)
    # a mouth starting to open opens as far as asked: with the step fading in only from
    # 0.03, the first frame of a word opened 0.003-0.004 short and read as still shut
    # (benchmarks/live_latency.py: the visible opening came a frame later)
    for d_open in (0.03, 0.04):
        lm = n.copy()
        lm[lip_shapes.POINTS] = n[lip_shapes.ANCHOR] + m.shape(n, d_open, 0.0)
        assert abs(mouth_opening(lm) - mouth_opening(n) - d_open) < 0.0015, d_open
    # continuous in the opening (the correcting step fades in): no frame jumps
    steps = np.diff([m.shape(n, d, 0.02) for d in np.arange(0.0, 0.12, 0.002)], axis=0)
    size = np.abs(steps).max(axis=(1, 2))
    assert size.max() < 2.0 * np.median(size), size
    # applying reshapes only the lips, by the weight asked, and weight 0 changes nothing
    lm = n.copy()
    lm[lip_shapes.POINTS] = n[lip_shapes.ANCHOR] + m.shape(n, 0.2, -0.05)
    lm[lip_shapes.POINTS[:12], 1] += 2.0  # lips the fields shaped otherwise
    assert m.apply(lm, n, 0.0) is lm
    full, half = m.apply(lm, n, 1.0), m.apply(lm, n, 0.5)
    others = np.setdiff1d(np.arange(68), lip_shapes.POINTS)
    np.testing.assert_array_equal(full[others], lm[others])
    np.testing.assert_allclose(half[lip_shapes.POINTS],
                               0.5 * (full + lm)[lip_shapes.POINTS], atol=1e-9)


def _engine(identity, audio, lips: bool) -> np.ndarray:
    eng = SpeechLandmarkEngine(identity.neutral, idle_amplitude=0.0, learned_lips=lips)
    eng.push_audio(audio)
    eng.flush()
    return np.array([eng.next_frame()[0] for _ in range(eng.frames_total)])


def test_the_engine_reshapes_lips_in_speech_only_keeping_its_opening(identity):
    """On the built-in sentence the learned shape changes the lips while the mouth
    speaks, keeps the opening and width the engine decided, and leaves the leading
    silence and the rest of the face alone."""
    audio = load_audio(str(resources.files("engines.audio.assets") / "hello.wav"), 16000)
    audio = np.concatenate([np.zeros(8000, np.float32), audio])
    fields, learned = _engine(identity, audio, False), _engine(identity, audio, True)
    others = np.setdiff1d(np.arange(68), lip_shapes.POINTS)
    np.testing.assert_array_equal(learned[:, others], fields[:, others])
    np.testing.assert_array_equal(learned[:10], fields[:10])  # 0.4 s of silence first
    moved = np.abs(learned - fields)[:, lip_shapes.POINTS].max(axis=(1, 2))
    speaking = mouth_opening(fields) - mouth_opening(identity.neutral) > 0.05
    assert speaking.sum() > 10 and np.median(moved[speaking]) > 0.5  # canonical px
    assert np.abs(mouth_opening(learned) - mouth_opening(fields))[speaking].max() < 0.012
    assert np.abs(mouth_width(learned) - mouth_width(fields)).max() < 0.005


@pytest.mark.skipif(not TALKING.is_dir(), reason="needs ../shared/data/talking")
def test_the_fit_is_rebuilt_from_the_clips_and_beats_rest_held_out():
    """benchmarks/lip_shapes.py's fit on everyone is the shipped file; left out person
    by person, the shape at each real frame's own opening and width is nearer the real
    lips than the rest face's, for every person."""
    from benchmarks.lip_shapes import SHARDS, fit, real_frames, regressors
    from benchmarks.lipsync_talking import ensure_shards, load_clips

    ensure_shards(TALKING, SHARDS, 2)
    clips = load_clips(TALKING, SHARDS, None)
    reals = [real_frames(c) for c in clips]
    shipped = lip_shapes.load()
    np.testing.assert_allclose(fit(reals).basis, shipped.basis, atol=1e-6)
    for person in sorted({c["person"] for c in clips}):
        model = fit([r for r, c in zip(reals, clips, strict=True) if c["person"] != person])
        mine = [r for r, c in zip(reals, clips, strict=True) if c["person"] == person]
        real = np.concatenate([r["lips"] for r in mine])
        pred = np.concatenate([np.tensordot(regressors(r["open"], r["width"]), model.basis, 1)
                               for r in mine])
        err = np.linalg.norm(pred - real, axis=-1).mean()
        assert err < 0.8 * np.linalg.norm(real, axis=-1).mean(), person
