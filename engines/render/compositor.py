"""Paste-back: put a rendered face back into the full-resolution photo.

Two entry points, one per kind of texture engine output:
  * ``paste_roi``: a region rendered directly in photo pixels (the default warp engine),
    blended with its feathered border weight;
  * ``paste_crop``: a canonical 256x256 crop (the neural engines' contract), mapped back by
    the inverse of the enrollment similarity and blended through the feathered face mask.
The background outside the blend weight is the untouched photo.
"""

from __future__ import annotations

import cv2
import numpy as np

from engines.face.identity import Identity


def solid_box(feather: np.ndarray) -> tuple[int, int, int, int] | None:
    """The rectangle (x0, y0, x1, y1), end-exclusive, where a feathered border weight
    [h,w,1] is exactly 1 (what ``paste_roi`` copies instead of blending), or None."""
    f = feather[..., 0]
    h, w = f.shape
    rows = np.flatnonzero(f[:, w // 2] == 1.0)
    cols = np.flatnonzero(f[h // 2, :] == 1.0)
    if rows.size == 0 or cols.size == 0:
        return None
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    if not np.all(f[box[1] : box[3], box[0] : box[2]] == 1.0):
        return None  # not one solid rectangle: blend everything
    return box


def paste_roi(
    photo: np.ndarray, roi_img: np.ndarray, roi: tuple[int, int, int, int], feather: np.ndarray,
    out: np.ndarray | None = None, solid: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Blend ``roi_img`` [h,w,3] into a copy of ``photo`` (or into ``out``) at ``roi``.

    ``solid``: where ``feather`` is exactly 1 (:func:`solid_box`): copied, not blended, so
    only the border band is blended (the same pixels, a fifth of the work at 512x512)."""
    x0, y0, w, h = roi
    if out is None:
        out = photo.copy()
    else:
        np.copyto(out, photo)
    dst = out[y0 : y0 + h, x0 : x0 + w]
    if solid is None:
        parts = [(0, 0, w, h)]
    else:
        sx0, sy0, sx1, sy1 = solid
        dst[sy0:sy1, sx0:sx1] = roi_img[sy0:sy1, sx0:sx1]
        parts = [(0, 0, w, sy0), (0, sy1, w, h), (0, sy0, sx0, sy1), (sx1, sy0, w, sy1)]
    for a0, b0, a1, b1 in parts:
        if a1 <= a0 or b1 <= b0:
            continue
        base = photo[y0 + b0 : y0 + b1, x0 + a0 : x0 + a1]
        blended = base + feather[b0:b1, a0:a1] * (roi_img[b0:b1, a0:a1].astype(np.float32) - base)
        dst[b0:b1, a0:a1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def paste_crop(identity: Identity, crop: np.ndarray) -> np.ndarray:
    """Map a canonical crop [256,256,3] back into the photo through the face mask."""
    photo = identity.photo
    h, w = photo.shape[:2]
    inv = identity.from_canonical
    face = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = identity.photo_face_mask[..., None]
    out = photo.astype(np.float32) + mask * (face.astype(np.float32) - photo)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
