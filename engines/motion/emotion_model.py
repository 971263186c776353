"""Emotion geometry learned from real faces, retargeted to an identity.

The shipped file ``etf_models/weights/emotion_mead.npz`` (built by ``etf fit-emotions`` from
MEAD clips, see :mod:`engines.recordings.emotion_fit`) holds per-emotion landmark
displacements at MEAD's strongest level, expression ratio images and the template face they
live on. This module turns them into what one identity needs, once:

* :func:`emotion_offsets`: ``E`` [7,68,2] canonical displacements at intensity 1, so a
  frame's emotion is ``vector @ E`` (a blend of emotions is the blend of their offsets).
  Per face region it takes the measured field or the hand-made FACS field (``GEOMETRY``
  says which, chosen by what an expression classifier read on held-out renders).
* :func:`close_lips`: the part of an emotion offset that parts the lips, removed as far as
  speech presses them (p, b, m close in every emotion).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from engines.motion.face_motion import EMOTION_MATRIX, build_fields
from etf_models.canonical_face import (
    BROW_L,
    BROW_R,
    EYE_L,
    EYE_R,
    JAW,
    LIP_INNER,
    LIP_OUTER,
    LOWER_INNER,
    MIRROR_68,
    NOSE,
    UPPER_INNER,
)
from etf_models.emotions import EMOTIONS

MODEL_FILE = "emotion_mead.npz"
#: The shipped file is pinned: a different file is refused, never silently used.
MODEL_SHA256 = "6a557e6c4fbd59b6c54e75e6209746419918c3430d178304001d3ae7068545bf"

#: Which geometry each face region takes: "mead" (measured) or "facs" (hand-made).
GEOMETRY: dict[str, str] = {"brows": "mead", "eyes": "mead", "nose": "mead", "mouth": "mead",
                            "jaw": "mead"}
_REGION_POINTS = {
    "brows": np.r_[BROW_R, BROW_L],
    "eyes": np.r_[EYE_R, EYE_L],
    "nose": NOSE,
    "mouth": np.r_[LIP_OUTER, LIP_INNER],
    "jaw": JAW,
}
_LOWER_LIP = np.r_[55:60, 65:68]


class EmotionModelError(RuntimeError):
    """The emotion model file is missing, damaged or foreign."""


@dataclass(frozen=True)
class EmotionModel:
    """The fitted MEAD emotion model (see module docstring)."""

    fields: np.ndarray  # [7,68,2] canonical px at intensity 1; neutral row zero
    ratio: np.ndarray  # [7,R,R] float32 luminance ratio on the template; neutral all 1
    template: np.ndarray  # [68 + 10, 2] template landmarks + forehead points (canonical)
    source: str
    sha256: str

    @classmethod
    def load(cls, path=None, sha256: str | None = MODEL_SHA256) -> EmotionModel:
        """Load ``path`` (default: the shipped file, checked against its pinned hash)."""
        if path is None:
            path = files("etf_models") / "weights" / MODEL_FILE
        elif isinstance(path, str):
            path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise EmotionModelError(f"emotion model {path} cannot be read: {e}") from None
        digest = hashlib.sha256(raw).hexdigest()
        if sha256 is not None and digest != sha256:
            raise EmotionModelError(f"emotion model {path} has SHA-256 {digest}, not the pinned "
                                    f"{sha256}: the file is damaged or not this version's")
        import io

        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                fields = np.asarray(z["fields"], np.float32)
                ratio = np.asarray(z["ratio"], np.float32)
                template = np.asarray(z["template"], np.float32)
                source = str(z["source"])
        except (ValueError, KeyError, OSError) as e:
            raise EmotionModelError(f"emotion model {path} is not an emotion model: {e}") from None
        n = len(EMOTIONS)
        if fields.shape != (n, 68, 2) or ratio.ndim != 3 or len(ratio) != n or \
                template.shape != (78, 2):
            raise EmotionModelError(f"emotion model {path} has the wrong shapes "
                                    f"(fields {fields.shape}, ratio {ratio.shape})")
        return cls(fields, ratio, template, source, digest)


@lru_cache(maxsize=1)
def default_model() -> EmotionModel:
    """The shipped emotion model, loaded once per process."""
    return EmotionModel.load()


def _spread(pts: np.ndarray, axis: int) -> float:
    return float(np.ptp(pts[:, axis]))


def retarget(fields: np.ndarray, template: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Measured fields [..,68,2] (on the template face) scaled to an identity's proportions.

    Canonical space already equalises the eye distance; what differs between faces is the
    mouth's width, the eyes' opening and the lower face's height, so each region's
    displacements are scaled by that region's size on the identity over the template's
    (clipped to 0.7..1.4: a photo's odd landmark must not make a grotesque expression).
    """
    t, n = template[:68], neutral

    def ratio(a: float, b: float) -> float:
        return float(np.clip(a / max(b, 1e-3), 0.7, 1.4))

    sx = np.ones(68, np.float32)
    sy = np.ones(68, np.float32)
    mouth = np.r_[LIP_OUTER, LIP_INNER]
    sx[mouth] = ratio(_spread(n[LIP_OUTER], 0), _spread(t[LIP_OUTER], 0))
    sy[mouth] = ratio(_spread(n[LIP_OUTER], 1), _spread(t[LIP_OUTER], 1))
    lower = ratio(n[8, 1] - n[33, 1], t[8, 1] - t[33, 1])
    sy[JAW] = lower
    sx[JAW] = ratio(_spread(n[JAW], 0), _spread(t[JAW], 0))
    for eye in (EYE_R, EYE_L):
        sy[eye] = ratio(_spread(n[eye], 1), _spread(t[eye], 1))
    brow_h = ratio((n[np.r_[EYE_R, EYE_L], 1].mean() - n[17:27, 1].mean()),
                   (t[np.r_[EYE_R, EYE_L], 1].mean() - t[17:27, 1].mean()))
    sy[17:27] = brow_h
    return fields * np.stack([sx, sy], axis=-1)


def symmetric(fields: np.ndarray) -> np.ndarray:
    """Displacement fields [..,68,2] made left-right symmetric: each point moves as the mean
    of itself and its mirrored partner (x negated), so a point on the midline moves only up
    or down. Three speakers' own asymmetries and what is left of their head turns do not
    belong to the expression (the surprise measured moved the right inner brow 0.058 IOD
    outward and the left 0.032, the mouth's right corner 0.063 inward and its left 0.029)."""
    mirrored = fields[..., MIRROR_68, :] * np.array([-1.0, 1.0], np.float32)
    return (0.5 * (fields + mirrored)).astype(np.float32)


def emotion_offsets(neutral: np.ndarray, model: EmotionModel | None = None,
                    geometry: dict[str, str] | None = None,
                    fields: np.ndarray | None = None) -> np.ndarray:
    """``E`` [7,68,2]: each emotion's landmark displacement at intensity 1 for this face.

    ``fields``: the face's FACS fields (:func:`build_fields` of ``neutral``) when the
    caller has them already."""
    geometry = GEOMETRY if geometry is None else geometry
    neutral = np.asarray(neutral, np.float32)
    fields = build_fields(neutral) if fields is None else fields
    facs = np.tensordot(EMOTION_MATRIX, fields, axes=([1], [0]))
    if all(v == "facs" for v in geometry.values()):
        return facs.astype(np.float32)
    model = model or default_model()
    mead = retarget(symmetric(model.fields), model.template, neutral)
    out = facs.copy()
    for region, pts in _REGION_POINTS.items():
        if geometry.get(region, "facs") == "mead":
            out[:, pts] = mead[:, pts]
    return out.astype(np.float32)


def close_lips(offset: np.ndarray, press: float) -> np.ndarray:
    """An emotion offset [68,2] with its lip parting undone by ``press`` in 0..1.

    The lower lip (and the jaw below it, in proportion) is lifted by the part of the
    offset that opens the inner lips, so a bilabial closes however open the emotion is.
    """
    if press <= 0.0:
        return offset
    gap = float(offset[LOWER_INNER, 1].mean() - offset[UPPER_INNER, 1].mean())
    if gap <= 0.0:
        return offset
    out = offset.copy()
    lift = min(press, 1.0) * gap
    out[_LOWER_LIP, 1] -= lift
    out[JAW[5:12], 1] -= lift * np.array([0.3, 0.6, 0.85, 1.0, 0.85, 0.6, 0.3], np.float32)
    return out
