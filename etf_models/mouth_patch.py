"""The mouth patch: where the learned mouth interior lives and what it is conditioned on.

Shared by training (``engines.recordings.mouth_fit``) and the renderer
(``engines.render.mouth_model``) so both see the same inputs.

The patch is a small axis-aligned grid in the canonical face frame, anchored to the
*resting* mouth and moved only with the head (the skull): the upper teeth hang from the
skull, so in patch coordinates they stay put while the lips and the jaw move over them.
Its size is the resting mouth's width, so every face's mouth fills it alike.

Conditioning channels [C, H, W] (float32):
  0  inner-lip coverage (where the interior shows), anti-aliased
  1  outer-lip coverage (the lips' extent: how thick they are around the opening)
  2  x across the patch, -1..1           3  y down the patch, in mouth widths
  4  the jaw's drop below rest, in mouth widths (the lower teeth ride on the jaw)
  5-7 log of the lips' colour (the light and skin the interior must match)

Colours are predicted relative to the lips' colour: ``log(pixel / lips)`` per channel,
so the model never needs to know the scene's brightness or white balance.
"""

from __future__ import annotations

import cv2
import numpy as np

PATCH_W, PATCH_H = 64, 48
#: patch extent in resting-mouth widths: x in [-X_HALF, X_HALF], y in [Y_TOP, Y_TOP + span]
X_HALF = 0.75
Y_TOP = -0.45
STEP = 2 * X_HALF / PATCH_W  # mouth widths per patch pixel (square pixels)
N_COND = 8

INNER_RING = np.arange(60, 68)
OUTER_RING = np.arange(48, 60)


def smooth_ring(points: np.ndarray, per_edge: int = 4) -> np.ndarray:
    """Closed Catmull-Rom curve through a ring of points: lips are round, not polygons."""
    p = np.asarray(points, np.float64)
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    t = (np.arange(per_edge) / per_edge)[:, None, None]
    t2, t3 = t * t, t * t * t
    c = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
               + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
    return c.transpose(1, 0, 2).reshape(-1, 2)


def coverage(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """Anti-aliased polygon coverage in 0..1, polygon in pixel coordinates of ``shape``
    (pixel centres at integers)."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 8).astype(np.int32)], 255, cv2.LINE_AA, shift=3)
    return m.astype(np.float32) / 255.0


def patch_frame(landmarks: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """2x3 affine canonical -> patch pixels for a frame's landmarks [68,2] over the face's
    resting landmarks [68,2] (both canonical)."""
    head = landmarks[27:31].mean(0) - rest[27:31].mean(0)  # the skull's shift (nose bridge)
    width = float(np.hypot(*(rest[54] - rest[48])))
    origin = rest[[60, 64]].mean(0) + head
    k = 1.0 / (STEP * width)  # patch pixels per canonical pixel
    # patch x = (cx - ox) k + W/2 - 0.5 ; patch y = (cy - oy) k - Y_TOP / STEP - 0.5
    return np.array([[k, 0.0, -origin[0] * k + PATCH_W / 2 - 0.5],
                     [0.0, k, -origin[1] * k - Y_TOP / STEP - 0.5]])


def conditions(landmarks: np.ndarray, rest: np.ndarray, lip_colour: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """(canonical -> patch 2x3, channels [N_COND, PATCH_H, PATCH_W] float32)."""
    m = patch_frame(landmarks, rest)
    pts = landmarks @ m[:, :2].T + m[:, 2]
    shape = (PATCH_H, PATCH_W)
    c = np.empty((N_COND, PATCH_H, PATCH_W), np.float32)
    c[0] = coverage(shape, smooth_ring(pts[INNER_RING]))
    c[1] = coverage(shape, smooth_ring(pts[OUTER_RING]))
    c[2] = np.linspace(-1, 1, PATCH_W, dtype=np.float32)[None]
    c[3] = (Y_TOP + (np.arange(PATCH_H, dtype=np.float32) + 0.5) * STEP)[:, None]
    width = float(np.hypot(*(rest[54] - rest[48])))
    head = landmarks[27:31].mean(0) - rest[27:31].mean(0)
    c[4] = (landmarks[8, 1] - rest[8, 1] - head[1]) / width
    c[5:8] = np.log(np.maximum(np.asarray(lip_colour, np.float32), 4.0) / 128.0)[:, None, None]
    return m, c


def inner_gap(landmarks: np.ndarray) -> float:
    """Mean vertical gap of the inner lips (canonical pixels)."""
    return float((landmarks[[67, 66, 65], 1] - landmarks[[61, 62, 63], 1]).mean())


def lip_colour(image: np.ndarray, lm: np.ndarray) -> np.ndarray | None:
    """Median RGB of the lips (between the outer and inner lip rings) in ``image``, with
    landmarks ``lm`` [68,2] in that image's pixels; None when too few pixels show."""
    h, w = image.shape[:2]
    outer = coverage((h, w), lm[OUTER_RING]) > 0.5
    inner = coverage((h, w), lm[INNER_RING]) > 0.0
    mask = outer & ~inner
    if mask.sum() < 8:
        return None
    return np.median(image[mask].reshape(-1, 3), axis=0).astype(np.float32)
