"""Phones -> mouth articulation targets (visemes) and coarticulation.

Each ARPAbet phone maps to target values of the speech parameters of
:mod:`engines.motion.face_motion` (jaw, lips apart, press, stretch, round, labiodental). A 10 ms
track of targets is then blended over neighbouring phones by a symmetric kernel, as in
dominance-based coarticulation models: vowels spread into neighbouring consonants, while
lip closures (/p b m/) and labiodentals (/f v/) have high dominance so the lips really meet
even in fast speech.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engines.motion.face_motion import N_PARAMS, P

SPEECH_PARAMS = ("jaw_open", "lips_part", "lip_press", "lip_stretch", "lip_round", "labiodental")
SPEECH_IDX = np.array([P[n] for n in SPEECH_PARAMS])

# phone: (jaw_open, lips_part, lip_press, lip_stretch, lip_round, labiodental)
_TABLE: dict[str, tuple[float, float, float, float, float, float]] = {
    "SIL": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "P": (0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
    "B": (0.0, 0.0, 1.0, 0.0, 0.0, 0.0),
    "M": (0.0, 0.0, 0.9, 0.0, 0.0, 0.0),
    "F": (0.05, 0.0, 0.0, 0.1, 0.0, 1.0),
    "V": (0.05, 0.0, 0.0, 0.1, 0.0, 0.9),
    "TH": (0.2, 0.35, 0.0, 0.1, 0.0, 0.0),
    "DH": (0.18, 0.3, 0.0, 0.1, 0.0, 0.0),
    "T": (0.22, 0.3, 0.0, 0.15, 0.0, 0.0),
    "D": (0.22, 0.3, 0.0, 0.15, 0.0, 0.0),
    "N": (0.2, 0.25, 0.0, 0.1, 0.0, 0.0),
    "L": (0.28, 0.3, 0.0, 0.1, 0.0, 0.0),
    "S": (0.08, 0.35, 0.0, 0.4, 0.0, 0.0),
    "Z": (0.08, 0.35, 0.0, 0.4, 0.0, 0.0),
    "SH": (0.15, 0.35, 0.0, 0.0, 0.55, 0.0),
    "ZH": (0.15, 0.35, 0.0, 0.0, 0.55, 0.0),
    "CH": (0.15, 0.35, 0.0, 0.0, 0.5, 0.0),
    "JH": (0.15, 0.35, 0.0, 0.0, 0.5, 0.0),
    "K": (0.3, 0.3, 0.0, 0.1, 0.0, 0.0),
    "G": (0.3, 0.3, 0.0, 0.1, 0.0, 0.0),
    "NG": (0.25, 0.25, 0.0, 0.1, 0.0, 0.0),
    "HH": (0.4, 0.35, 0.0, 0.0, 0.0, 0.0),
    "R": (0.22, 0.3, 0.0, 0.0, 0.45, 0.0),
    "W": (0.12, 0.2, 0.0, 0.0, 1.0, 0.0),
    "Y": (0.2, 0.35, 0.0, 0.45, 0.0, 0.0),
    "IY": (0.22, 0.4, 0.0, 0.75, 0.0, 0.0),
    "IH": (0.32, 0.4, 0.0, 0.5, 0.0, 0.0),
    "EH": (0.48, 0.4, 0.0, 0.35, 0.0, 0.0),
    "EY": (0.42, 0.4, 0.0, 0.5, 0.0, 0.0),
    "AE": (0.68, 0.4, 0.0, 0.4, 0.0, 0.0),
    "AA": (0.85, 0.4, 0.0, 0.0, 0.0, 0.0),
    "AH": (0.6, 0.4, 0.0, 0.05, 0.0, 0.0),
    "AO": (0.72, 0.4, 0.0, 0.0, 0.45, 0.0),
    "AW": (0.75, 0.4, 0.0, 0.0, 0.3, 0.0),
    "AY": (0.75, 0.4, 0.0, 0.2, 0.0, 0.0),
    "OW": (0.5, 0.4, 0.0, 0.0, 0.7, 0.0),
    "OY": (0.55, 0.4, 0.0, 0.0, 0.55, 0.0),
    "UH": (0.35, 0.35, 0.0, 0.0, 0.6, 0.0),
    "UW": (0.25, 0.3, 0.0, 0.0, 0.95, 0.0),
    "ER": (0.35, 0.35, 0.0, 0.0, 0.4, 0.0),
}

#: Dominance of each phone class in the blend: closures and labiodentals win over their
#: neighbours, silence is weak so speech onsets are not swallowed.
_DOMINANCE = {"P": 6.0, "B": 6.0, "M": 5.0, "F": 4.0, "V": 4.0, "SIL": 0.6}

PHONES = tuple(_TABLE)
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
#: [n_phones, N_PARAMS] the hand-drawn targets above, as a table.
HAND_TARGETS = np.zeros((len(PHONES), N_PARAMS), dtype=np.float32)
HAND_TARGETS[:, SPEECH_IDX] = np.array([_TABLE[p] for p in PHONES], dtype=np.float32)

#: Per phone, real talking mouths scale the hand table: ``k`` its opening (jaw_open,
#: lips_part), ``j`` its shape (lip_stretch, lip_round), fitted on ../shared/data/talking by
#: ``benchmarks/visemes_real.py --write`` (per-phone numbers, no image). Real rounded vowels
#: (AO, OW, UW, W, R, ER) open far less than the hand table had them, closures and /s/-like
#: consonants a little more; left out person by person it lifts the default engine's
#: correlation with real mouths (benchmarks/results/visemes_real.json).
FIT_PATH = Path(__file__).with_name("visemes_real.json")


def _fitted() -> tuple[np.ndarray, float]:
    fit = json.loads(FIT_PATH.read_text())
    k = np.array([fit["k"].get(p, 1.0) for p in PHONES], np.float32)
    j = np.array([fit["j"].get(p, 1.0) for p in PHONES], np.float32)
    t = HAND_TARGETS.copy()
    t[:, [P["jaw_open"], P["lips_part"]]] *= k[:, None]
    t[:, [P["lip_stretch"], P["lip_round"]]] *= j[:, None]
    return t, float(fit["opening_gain"])


#: [n_phones, N_PARAMS] full-length parameter targets (the fitted table), the opening gain
#: fitted with it, and [n_phones] dominance.
TARGETS, FITTED_OPENING_GAIN = _fitted()
DOMINANCE = np.array([_DOMINANCE.get(p, 1.0) for p in PHONES], dtype=np.float32)
SILENCE = PHONE_INDEX["SIL"]


def phone_id(phone: str) -> int:
    """Index of an ARPAbet phone (stress digits ignored); unknown phones count as silence."""
    return PHONE_INDEX.get(phone.rstrip("012").upper(), SILENCE)


#: Coarticulation kernel over 10 ms rows: +-COART_ROWS rows, Gaussian of sd 50 ms (tuned on
#: the devset clips: real mouths move more smoothly than phone boundaries suggest).
ROW_S = 0.01
COART_ROWS = 10
_k = np.arange(-COART_ROWS, COART_ROWS + 1) * ROW_S
KERNEL = np.exp(-0.5 * (_k / 0.05) ** 2).astype(np.float32)


def blend(targets: np.ndarray, dominance: np.ndarray) -> np.ndarray:
    """Coarticulated parameters at the centre row of a window.

    ``targets`` [2*COART_ROWS+1, N_PARAMS] and ``dominance`` [2*COART_ROWS+1] are the rows
    around the frame's time. Returns [N_PARAMS]: the dominance- and kernel-weighted mean.
    """
    w = KERNEL * dominance
    return (w @ targets) / max(float(w.sum()), 1e-6)
