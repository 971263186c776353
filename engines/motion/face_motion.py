"""Landmark motion as a linear model: named parameters times displacement fields.

Each parameter (a FACS action unit, a speech articulator, a blink) owns a displacement field
over the 68 canonical landmarks, built once per identity from its neutral landmarks. A face
state is a parameter vector ``p`` and its landmarks are ``neutral + p @ fields``: one small
matrix product per frame, no per-landmark Python.

Magnitudes are in units of the canonical inter-ocular distance ``IOD`` and were chosen from
FACS descriptions of each unit's appearance change (which points move, which way), then
checked visually on several faces.
"""

from __future__ import annotations

import numpy as np

from etf_models.canonical_face import IOD
from etf_models.emotions import EMOTIONS

#: Motion parameters in field order. AU numbers follow FACS.
PARAMS: tuple[str, ...] = (
    "jaw_open",  # AU26/27 and speech: jaw drops, lower lip follows
    "lips_part",  # AU25: lips part without the jaw
    "lip_press",  # AU24 / bilabial closure: lips pressed together and thinned
    "lip_stretch",  # AU20 and spread vowels: corners pulled sideways
    "lip_round",  # AU18/22 and rounded vowels: mouth narrows, lips pout
    "labiodental",  # f/v: upper lip lifts off the upper teeth, lower lip under them
    "upper_lip_raise",  # AU10
    "corner_pull",  # AU12: smile
    "corner_depress",  # AU15
    "lower_lip_depress",  # AU16
    "lip_tighten",  # AU23
    "inner_brow_raise",  # AU1
    "outer_brow_raise",  # AU2
    "brow_lower",  # AU4
    "upper_lid_raise",  # AU5
    "cheek_raise",  # AU6
    "lid_tighten",  # AU7
    "nose_wrinkle",  # AU9
    "blink",  # upper lid meets lower lid
)
P = {name: i for i, name in enumerate(PARAMS)}
N_PARAMS = len(PARAMS)

#: Emotion -> action-unit parameters at intensity 1 (FACS prototypes: happy AU6+12,
#: sad AU1+4+15, surprise AU1+2+5+26, fear AU1+2+4+5+20+26, angry AU4+5+7+23,
#: disgust AU9+15+16). Happy adds AU25 (lips apart), as most real smiles show teeth.
EMOTION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"cheek_raise": 1.0, "corner_pull": 1.0, "lips_part": 0.35},
    "sad": {"inner_brow_raise": 1.0, "brow_lower": 0.55, "corner_depress": 1.0},
    "surprise": {
        "inner_brow_raise": 1.0,
        "outer_brow_raise": 1.0,
        "upper_lid_raise": 1.0,
        "jaw_open": 0.45,
    },
    "fear": {
        "inner_brow_raise": 1.0,
        "outer_brow_raise": 0.6,
        "brow_lower": 0.6,
        "upper_lid_raise": 1.0,
        "lip_stretch": 1.0,
        "jaw_open": 0.2,
        "lips_part": 0.4,
    },
    "angry": {"brow_lower": 1.0, "upper_lid_raise": 0.6, "lid_tighten": 1.0, "lip_tighten": 1.0},
    "disgust": {
        "nose_wrinkle": 1.0,
        "corner_depress": 0.6,
        "lower_lip_depress": 0.8,
    },
}

#: [7, N_PARAMS] matrix: emotion one-hot (or blend) @ EMOTION_MATRIX -> AU parameters.
EMOTION_MATRIX = np.zeros((len(EMOTIONS), N_PARAMS), dtype=np.float32)
for _e, _aus in EMOTION_AUS.items():
    for _name, _v in _aus.items():
        EMOTION_MATRIX[EMOTIONS.index(_e), P[_name]] = _v

#: Parameters that a lip closure (bilabial /p b m/) overrides: the lips must meet even in
#: a surprised or disgusted face, or "papa" would not read.
OPENING_PARAMS = np.array([P["jaw_open"], P["lips_part"], P["lower_lip_depress"]])


def _side(neutral: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """+1 for points right of the face's midline (image x), -1 left, 0 on it."""
    mid = neutral[[27, 28, 29, 30, 33, 51, 57, 62, 66, 8], 0].mean()
    s = np.sign(neutral[idx, 0] - mid)
    s[np.abs(neutral[idx, 0] - mid) < 0.05 * IOD] = 0.0
    return s


#: How far the chin drops (IOD) per unit of jaw_open, whose inner lips part by 0.39 IOD.
#: Real talking faces drop the chin (from the nose tip) 0.63x the gap between the lips'
#: middles (the median person of ../shared/data/talking, 13 people, 0.40-0.97;
#: benchmarks/mouth_sheets.py, "chin_drop_over_gap"); 0.42 dropped it 0.95x on a
#: full-loudness "aa", so open vowels stretched the chin and lower cheeks long. 0.28 gives
#: that "aa" 0.63x.
JAW_CHIN_DROP = 0.28


def build_fields(neutral: np.ndarray) -> np.ndarray:
    """Displacement fields [N_PARAMS, 68, 2] (canonical px per unit parameter).

    ``neutral`` [68,2] canonical landmarks of the identity's neutral face. Fields depending
    on geometry (jaw weights, eyelid gaps, sideways directions) are derived from it.
    """
    u = IOD
    f = np.zeros((N_PARAMS, 68, 2), dtype=np.float64)

    def move(param: str, idx: list[int] | np.ndarray, dx: float | np.ndarray, dy):
        f[P[param], idx, 0] += np.asarray(dx) * u
        f[P[param], idx, 1] += np.asarray(dy) * u

    def outward(param: str, idx: list[int], amount: float, dy: float = 0.0):
        """Sideways away from the midline (negative amount: toward it)."""
        ii = np.asarray(idx)
        move(param, ii, _side(neutral, ii) * amount, dy)

    # Jaw: the chin drops most, the jaw line less toward the ears.
    jaw = np.arange(17)
    top, chin = neutral[33, 1], neutral[8, 1]
    w = np.clip((neutral[jaw, 1] - top) / max(chin - top, 1e-3), 0.0, 1.0) ** 1.5
    move("jaw_open", jaw, 0.0, JAW_CHIN_DROP * w)
    move("jaw_open", [65, 66, 67], 0.0, 0.36)
    move("jaw_open", [56, 57, 58], 0.0, 0.38)
    move("jaw_open", [55, 59], 0.0, 0.30)
    move("jaw_open", [48, 54, 60, 64], 0.0, 0.13)
    outward("jaw_open", [48, 54, 60, 64], -0.04)
    move("jaw_open", [61, 62, 63], 0.0, -0.03)
    move("jaw_open", [50, 51, 52], 0.0, -0.015)

    move("lips_part", [65, 66, 67], 0.0, 0.11)
    move("lips_part", [56, 57, 58], 0.0, 0.07)
    move("lips_part", [55, 59], 0.0, 0.04)
    move("lips_part", [61, 62, 63], 0.0, -0.03)
    move("lips_part", [50, 51, 52], 0.0, -0.015)

    move("lip_press", [50, 51, 52], 0.0, 0.035)
    move("lip_press", [56, 57, 58], 0.0, -0.035)
    outward("lip_press", [48, 54], 0.015)

    outward("lip_stretch", [48, 54, 60, 64], 0.11, 0.02)
    outward("lip_stretch", [49, 53, 59, 55, 61, 63, 65, 67], 0.05, 0.01)
    move("lip_stretch", [50, 51, 52], 0.0, 0.01)
    outward("lip_stretch", [4, 5, 11, 12], 0.015)

    # Rounding purses the lips: the outer corners come in, the inner ones further, so the
    # opening becomes a small round hole in the middle (real "oo" mouths in the talking
    # clips, benchmarks/mouth_sheets.py) rather than a lens across the whole mouth.
    outward("lip_round", [48, 54], -0.13)
    outward("lip_round", [60, 64], -0.18)
    outward("lip_round", [49, 53, 59, 55], -0.07)
    outward("lip_round", [61, 63, 65, 67], -0.08)
    move("lip_round", [50, 51, 52], 0.0, -0.03)
    move("lip_round", [56, 57, 58], 0.0, 0.03)
    move("lip_round", [62], 0.0, -0.02)
    move("lip_round", [66], 0.0, 0.05)
    move("lip_round", [65, 67], 0.0, 0.03)

    # /f v/: the lower lip rolls up and in under the upper teeth (it looks thinner) and the
    # upper lip lifts a little, so a sliver of the upper teeth's edge shows; real mouths
    # keep the lips all but closed (not a band of teeth).
    move("labiodental", [61, 62, 63], 0.0, -0.03)
    move("labiodental", [49, 50, 51, 52, 53], 0.0, -0.02)
    move("labiodental", [65, 66, 67], 0.0, -0.01)
    move("labiodental", [56, 57, 58], 0.0, -0.035)
    move("labiodental", [55, 59], 0.0, -0.015)

    move("upper_lip_raise", [50, 51, 52, 61, 62, 63], 0.0, -0.08)
    move("upper_lip_raise", [49, 53], 0.0, -0.05)
    move("upper_lip_raise", [31, 32, 33, 34, 35], 0.0, -0.02)

    move("corner_pull", [48, 54], 0.0, -0.13)
    outward("corner_pull", [48, 54], 0.09)
    move("corner_pull", [60, 64], 0.0, -0.11)
    outward("corner_pull", [60, 64], 0.08)
    move("corner_pull", [49, 53, 59, 55], 0.0, -0.07)
    outward("corner_pull", [49, 53, 59, 55], 0.04)
    move("corner_pull", [61, 63, 65, 67], 0.0, -0.05)
    outward("corner_pull", [61, 63, 65, 67], 0.03)
    move("corner_pull", [50, 52], 0.0, -0.03)
    move("corner_pull", [57, 66], 0.0, -0.01)
    outward("corner_pull", [31, 35], 0.02, -0.01)
    outward("corner_pull", [2, 3, 4, 12, 13, 14], 0.02, -0.015)

    move("corner_depress", [48, 54], 0.0, 0.11)
    outward("corner_depress", [48, 54], -0.01)
    move("corner_depress", [60, 64], 0.0, 0.09)
    move("corner_depress", [49, 53, 59, 55, 61, 63, 65, 67], 0.0, 0.045)
    move("corner_depress", [57, 66], 0.0, -0.015)

    move("lower_lip_depress", [56, 57, 58, 65, 66, 67], 0.0, 0.11)
    move("lower_lip_depress", [55, 59], 0.0, 0.06)
    outward("lower_lip_depress", [55, 59, 65, 67], 0.02)

    outward("lip_tighten", [48, 54, 60, 64], -0.045)
    move("lip_tighten", [50, 51, 52], 0.0, 0.03)
    move("lip_tighten", [56, 57, 58], 0.0, -0.03)

    move("inner_brow_raise", [21, 22], 0.0, -0.15)
    move("inner_brow_raise", [20, 23], 0.0, -0.11)
    move("inner_brow_raise", [19, 24], 0.0, -0.05)
    move("inner_brow_raise", [18, 25], 0.0, -0.02)

    move("outer_brow_raise", [17, 26, 18, 25], 0.0, -0.13)
    move("outer_brow_raise", [19, 24], 0.0, -0.09)
    move("outer_brow_raise", [20, 23], 0.0, -0.04)

    move("brow_lower", [21, 22], 0.0, 0.10)
    move("brow_lower", [20, 23], 0.0, 0.085)
    move("brow_lower", [17, 18, 19, 24, 25, 26], 0.0, 0.06)
    outward("brow_lower", [21, 22], -0.07)
    outward("brow_lower", [20, 23], -0.04)
    move("brow_lower", [37, 38, 43, 44], 0.0, 0.015)

    move("upper_lid_raise", [37, 38, 43, 44], 0.0, -0.075)
    move("upper_lid_raise", [36, 39, 42, 45], 0.0, -0.01)

    move("cheek_raise", [40, 41, 46, 47], 0.0, -0.045)
    move("cheek_raise", [37, 38, 43, 44], 0.0, 0.015)
    move("cheek_raise", [1, 2, 3, 13, 14, 15], 0.0, -0.02)

    move("lid_tighten", [40, 41, 46, 47], 0.0, -0.05)
    move("lid_tighten", [37, 38, 43, 44], 0.0, 0.025)

    move("nose_wrinkle", [31, 32, 33, 34, 35], 0.0, -0.05)
    move("nose_wrinkle", [29, 30], 0.0, -0.02)
    move("nose_wrinkle", [21, 22], 0.0, 0.07)
    move("nose_wrinkle", [20, 23], 0.0, 0.035)
    outward("nose_wrinkle", [21, 22], -0.03)
    move("nose_wrinkle", [49, 50, 51, 52, 53, 61, 62, 63], 0.0, -0.06)
    move("nose_wrinkle", [40, 41, 46, 47], 0.0, -0.025)

    # Blink: the upper lid travels most of the eye's own opening, the lower lid the rest.
    up, low = np.array([37, 38, 43, 44]), np.array([41, 40, 47, 46])
    gap = neutral[low] - neutral[up]
    f[P["blink"], up] += 0.85 * gap
    f[P["blink"], low] -= 0.15 * gap
    return f.astype(np.float32)


def compose(emotion_params: np.ndarray, speech_params: np.ndarray) -> np.ndarray:
    """Combine emotion and speech parameter vectors (each [..., N_PARAMS]) into one.

    Additive, except that a lip closure from speech suppresses every opening the emotion
    asks for, so bilabials close in every emotion while the rest of the face keeps it.
    """
    p = emotion_params + speech_params
    press = np.clip(speech_params[..., P["lip_press"]], 0.0, 1.0)[..., None]
    p[..., OPENING_PARAMS] = (
        speech_params[..., OPENING_PARAMS] + emotion_params[..., OPENING_PARAMS] * (1.0 - press)
    )
    return p


def apply(neutral: np.ndarray, fields: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Landmarks [..., 68, 2] = neutral + params [..., N_PARAMS] @ fields."""
    return neutral + np.tensordot(params, fields, axes=([-1], [0]))


def emotion_params(emotion_weights: np.ndarray, intensity: float | np.ndarray) -> np.ndarray:
    """AU parameters for an emotion blend [..., 7] at an intensity in 0..1."""
    return (np.asarray(emotion_weights, dtype=np.float32) @ EMOTION_MATRIX) * np.asarray(
        intensity, dtype=np.float32
    )[..., None]

