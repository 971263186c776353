"""Each emotion moves the landmark regions that FACS says it moves; intensity scales it."""

from __future__ import annotations

import numpy as np
import pytest

from engines.motion import face_motion as M
from engines.motion.emotion_state import EmotionState, parse_intensity
from etf_models.canonical_face import IOD, mouth_opening
from etf_models.emotions import EMOTIONS, emotion_one_hot

# Image y grows downward: "up" is negative dy.


def _face(identity, emotion: str, intensity: float = 1.0) -> np.ndarray:
    fields = M.build_fields(identity.neutral)
    return M.apply(
        identity.neutral, fields, M.emotion_params(emotion_one_hot(emotion), intensity)
    )


def _dy(identity, lm, idx) -> float:
    """Mean vertical motion of points, in IOD (negative = up)."""
    return float((lm[idx, 1] - identity.neutral[idx, 1]).mean() / IOD)


BROWS_INNER, BROWS_OUTER = [20, 21, 22, 23], [17, 18, 25, 26]
CORNERS, UPPER_LIDS, LOWER_LIDS = [48, 54], [37, 38, 43, 44], [40, 41, 46, 47]


def _brow_gap(lm) -> float:
    return float((lm[22, 0] - lm[21, 0]) / IOD)


def test_happy_raises_lip_corners_and_cheeks(identity):
    lm = _face(identity, "happy")
    assert _dy(identity, lm, CORNERS) < -0.08  # AU12
    assert _dy(identity, lm, LOWER_LIDS) < -0.02  # AU6 pushes the lower lids up
    width = np.ptp(lm[CORNERS, 0]) - np.ptp(identity.neutral[CORNERS, 0])
    assert width > 0.08 * IOD


def test_sad_raises_inner_brows_and_lowers_corners(identity):
    lm = _face(identity, "sad")
    assert _dy(identity, lm, [21, 22]) < -0.05  # AU1
    assert _dy(identity, lm, CORNERS) > 0.08  # AU15
    assert _brow_gap(lm) < _brow_gap(identity.neutral)  # AU4 draws the brows together


def test_surprise_raises_brows_opens_eyes_and_jaw(identity):
    lm = _face(identity, "surprise")
    assert _dy(identity, lm, BROWS_INNER) < -0.08 and _dy(identity, lm, BROWS_OUTER) < -0.08
    assert _dy(identity, lm, UPPER_LIDS) < -0.05  # AU5
    assert mouth_opening(lm) > mouth_opening(identity.neutral) + 0.1  # AU26
    assert _dy(identity, lm, [8]) > 0.1


def test_fear_widens_eyes_stretches_lips_and_knits_brows(identity):
    lm = _face(identity, "fear")
    assert _dy(identity, lm, UPPER_LIDS) < -0.05
    assert _dy(identity, lm, [21, 22]) < -0.03  # AU1 over AU4
    assert _brow_gap(lm) < _brow_gap(identity.neutral)  # AU4
    assert np.ptp(lm[CORNERS, 0]) > np.ptp(identity.neutral[CORNERS, 0]) + 0.1 * IOD  # AU20


def test_angry_lowers_brows_tightens_lids_and_lips(identity):
    lm = _face(identity, "angry")
    assert _dy(identity, lm, BROWS_INNER) > 0.05  # AU4
    assert _brow_gap(lm) < _brow_gap(identity.neutral) - 0.1
    assert _dy(identity, lm, LOWER_LIDS) < -0.03  # AU7
    assert np.ptp(lm[CORNERS, 0]) < np.ptp(identity.neutral[CORNERS, 0])  # AU23 narrows


def test_disgust_wrinkles_nose_and_lowers_lower_lip(identity):
    lm = _face(identity, "disgust")
    assert _dy(identity, lm, [31, 32, 33, 34, 35]) < -0.03  # AU9
    assert _dy(identity, lm, [50, 51, 52]) < -0.03  # AU9 lifts the upper lip
    assert _dy(identity, lm, [56, 57, 58]) > 0.05  # AU16
    assert _dy(identity, lm, CORNERS) > 0.03  # AU15


def test_intensity_zero_is_neutral_and_scales_linearly(identity):
    for e in EMOTIONS:
        np.testing.assert_allclose(_face(identity, e, 0.0), identity.neutral, atol=1e-6)
    half = _face(identity, "happy", 0.5) - identity.neutral
    full = _face(identity, "happy", 1.0) - identity.neutral
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-5)


def test_lip_closure_wins_over_an_open_emotion(identity):
    """A bilabial closes the lips even in surprise; the brows keep the emotion."""
    fields = M.build_fields(identity.neutral)
    emo = M.emotion_params(emotion_one_hot("surprise"), 1.0)
    speech = np.zeros(M.N_PARAMS, np.float32)
    speech[M.P["lip_press"]] = 1.0
    lm = M.apply(identity.neutral, fields, M.compose(emo, speech))
    assert mouth_opening(lm) < 0.02
    assert _dy(identity, lm, BROWS_OUTER) < -0.08


def test_unknown_emotion_and_bad_intensity():
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        emotion_one_hot("joy")
    for bad in ("1.5", "-0.1", "loud", "nan"):
        with pytest.raises(ValueError):
            parse_intensity(bad)
    assert parse_intensity("low") == 0.5 and parse_intensity("high") == 1.0


def test_emotion_transition_blends_without_jump():
    s = EmotionState("neutral")
    s.set("happy", 1.0, at=1.0, transition_s=0.25)
    target = M.emotion_params(emotion_one_hot("happy"), 1.0)
    np.testing.assert_allclose(s.params_at(1.0), 0.0, atol=1e-6)
    mid = s.params_at(1.125)
    assert 0.3 < mid[M.P["corner_pull"]] < 0.7
    np.testing.assert_allclose(s.params_at(1.25), target)
    # Switching mid-transition starts from where the face is, not from the old target.
    s.set("sad", at=1.3)
    np.testing.assert_allclose(s.params_at(1.3), target, atol=1e-6)


def test_open_vowel_drops_the_chin_as_real_faces_do(identity):
    """Real talking faces drop the chin (from the nose tip) ~0.63x the gap between the lips'
    middles (benchmarks/results/mouth_sheets.json, 13 people 0.40-0.97); the hand-made jaw
    dropped it 0.95x and stretched the chin long."""
    import json
    from pathlib import Path

    from engines.render.landmark_default import SpeechLandmarkEngine

    p = SpeechLandmarkEngine.viseme("AA")
    d = M.apply(identity.neutral, M.build_fields(identity.neutral), p) - identity.neutral
    ratio = (d[8, 1] - d[30, 1]) / (d[66, 1] - d[62, 1])
    real = json.loads((Path(__file__).parents[1] / "benchmarks" / "results"
                       / "mouth_sheets.json").read_text())["chin_drop_over_gap"]
    assert abs(ratio - real["real_median_person"]) < 0.1, (ratio, real["real_median_person"])
    assert d[66, 1] - d[62, 1] > 0.2 * IOD  # and the mouth still opens


def test_visemes_are_the_ones_fitted_to_real_mouths():
    """The shipped viseme table is the hand table scaled by the fit on real talking mouths
    (benchmarks/visemes_real.py --write), and the fit says what the real mouths say: rounded
    vowels open far less than the hand table had them, lip closures still close."""
    import json
    from pathlib import Path

    from engines.render import visemes as V
    from engines.render.landmark_default import SpeechLandmarkEngine

    res = json.loads((Path(__file__).parents[1] / "benchmarks" / "results"
                      / "visemes_real.json").read_text())
    shipped = json.loads(V.FIT_PATH.read_text())
    assert shipped["k"] == res["fit_all"]["k"] and shipped["j"] == res["fit_all"]["j"]
    assert SpeechLandmarkEngine.opening_gain == shipped["opening_gain"]
    # the fit, left out person by person, beats the hand table on real mouths
    s = res["summary"]
    assert s["fitted_held_out"]["median_corr"] > s["hand_table"]["median_corr"] + 0.05
    jaw = M.P["jaw_open"]
    for rounded in ("OW", "UW", "AO"):
        i = V.PHONE_INDEX[rounded]
        assert V.TARGETS[i, jaw] < 0.5 * V.HAND_TARGETS[i, jaw], rounded
    for shut in ("P", "B", "M"):
        assert V.TARGETS[V.PHONE_INDEX[shut], M.P["lip_press"]] >= 0.9
