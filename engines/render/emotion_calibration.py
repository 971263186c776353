"""Emotion fields calibrated through the instrument that measured them.

``etf fit-emotions`` measures each emotion with dlib's 68 points on real MEAD faces. A
landmark regressor reads an extreme expression as less extreme than it is (its shape model
pulls towards the average face), and our warp then moves the photo's skin a little less
than its landmarks. Rendering the measured field as it stands therefore gives a face that
the same instrument reads as weaker than the real faces it was measured on (dlib read a
surprise rendered from the MEAD field as ~0.6 of the field's brow lift).

:func:`instrument_gains` closes that loop: it enrolls real neutral faces (the fit's own
speakers, the neutral clip's typical frame), renders every emotion at intensity 1 with
silent audio, reads the renders back with dlib exactly as the real clips were read, and
finds per emotion and per face region (the brows; the lower face: lips and jaw; see
``REGIONS`` for why the eyes and nose are left as measured) the gain that makes the
read-back displacement equal the measured one. No classifier and no evaluation photo
takes part.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from engines.face.enrollment import EnrollOptions, enroll_image
from engines.face.face_metrics import frame_landmarks
from engines.motion.emotion_model import EmotionModel, emotion_offsets
from engines.motion.emotion_state import EmotionState
from engines.render import texture_warp
from engines.render.pipeline import FaceAnimator
from etf_models.canonical_face import apply_affine, similarity_to_canonical
from etf_models.emotions import EMOTIONS

log = logging.getLogger("etf.emotion_calibration")

#: Face regions calibrated separately: brows, lower face (jaw and lips). The eyes and the
#: nose keep their measured displacement: dlib reads a narrowed eye on our renders as
#: barely narrowed (its eye points hold the average eye shape), and a gain that satisfied
#: it closed happy and sad eyes to slits that no real face in the clips shows; it reads
#: the nose as nearly rigid, and the 2.5x gain that asked for reshaped the nose enough to
#: change who the face is (dlib embedding distance to the photo 0.48 -> 0.65 in angry).
REGIONS = (np.r_[17:27], np.r_[0:17, 48:68])
#: Gains are kept in this range: below 1 would undo a measurement. A region read back at
#: less than 1 / GAIN_RANGE[1] of its field is read too faintly to trust, and keeps its
#: measured size (gain 1): happy's brows, measured rising 0.046 IOD, asked for the whole
#: 2.5x, and at 2.5x they moved the face 0.065 further from its photo in dlib's identity
#: metric (median of the devset photos; max 0.594 against 0.543) with no gain in how an
#: expression classifier reads the smile (10 of 13 photos either way).
GAIN_RANGE = (1.0, 2.5)
#: Frames read back per render (every 4th of 2 s of silence from 0.4 s on: blinks and idle
#: drift are medianed away).
_READ = slice(10, 50, 4)


def _read_back(frames: list[np.ndarray]) -> np.ndarray | None:
    """Median eye-aligned dlib landmarks [68,2] over ``frames``, None if no face is found."""
    # dlib's points are whole pixels (exact in float32); aligned in float64 as fitted
    out = [apply_affine(similarity_to_canonical(lm), lm)
           for lm in frame_landmarks(frames).astype(np.float64) if not np.isnan(lm).any()]
    return np.median(np.stack(out), axis=0) if out else None


def response(model: EmotionModel, still: np.ndarray, name: str = "still") -> np.ndarray | None:
    """(read-back displacement, intended displacement) [2,7,68,2] of every emotion
    rendered on one neutral face ``still`` (RGB uint8), both in canonical pixels; None
    when the face cannot be enrolled or read back."""
    if max(still.shape[:2]) < 400:  # a video frame: upscaled as the built-in face is
        still = cv2.resize(still, None, fx=2, fy=2, interpolation=cv2.INTER_LANCZOS4)
    ident = enroll_image(still, source=name, options=EnrollOptions(log_warnings=False))
    # Geometry only: the expression texture is a separate, calibrated layer.
    warp = texture_warp.prepare(ident, expression=False)
    offsets = emotion_offsets(ident.neutral, model)
    silence = np.zeros(16000 * 2, np.float32)
    read = []
    for emo in EMOTIONS:
        anim = FaceAnimator(ident, emotion=EmotionState(emo, 1.0), warp=warp,
                            emotion_model=model)
        frames = [f.image for f in anim.render_all(silence)][_READ]
        lm = _read_back(frames)
        if lm is None:
            log.warning("%s: no face read back from the %s render", name, emo)
            return None
        read.append(lm)
    read = np.stack(read)
    return np.stack([read - read[0], offsets])


def instrument_gains(model: EmotionModel, stills: dict[str, np.ndarray]) -> np.ndarray:
    """Gains [7, len(REGIONS)] that make renders of ``model`` read back (by dlib, eye-aligned)
    as displaced as the model's fields say, pooled over the neutral faces ``stills``
    (name -> RGB uint8). Least squares per emotion and region: the gain g minimising
    |g * read - intended|, inverted (the renderer is linear in the field)."""
    num = np.zeros((len(EMOTIONS), len(REGIONS)))
    den = np.zeros_like(num)
    for name, still in stills.items():
        r = response(model, still, name)
        if r is None:
            continue
        read, intended = r
        for j, pts in enumerate(REGIONS):
            num[:, j] += (read[:, pts] * intended[:, pts]).sum(axis=(1, 2))
            den[:, j] += (intended[:, pts] ** 2).sum(axis=(1, 2))
    seen = np.divide(num, den, out=np.ones_like(num), where=den > 1e-6)
    gains = untrusted_to_one(1.0 / np.maximum(seen, 1e-6))
    for k, emo in enumerate(EMOTIONS[1:], start=1):
        log.info("%s: read back %s of the field -> gain %s", emo,
                 np.round(seen[k], 2).tolist(), np.round(gains[k], 2).tolist())
    return gains


def untrusted_to_one(gains: np.ndarray) -> np.ndarray:
    """Gains [7, len(REGIONS)] kept in GAIN_RANGE, where one at or beyond its top (a read-back
    too faint to trust) is 1: that region keeps its measured size. Neutral's are 1."""
    g = np.asarray(gains, np.float64)
    out = np.where(g >= GAIN_RANGE[1] - 1e-4, 1.0, np.clip(g, *GAIN_RANGE))
    out[0] = 1.0
    return out.astype(np.float32)


def calibrate(fields: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """``fields`` [7,68,2] scaled region by region by ``gains`` [7, len(REGIONS)]."""
    out = np.asarray(fields, np.float32).copy()
    for j, pts in enumerate(REGIONS):
        out[:, pts] *= gains[:, j, None, None]
    return out
