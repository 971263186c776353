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


def paste_roi(
    photo: np.ndarray, roi_img: np.ndarray, roi: tuple[int, int, int, int], feather: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``roi_img`` [h,w,3] into a copy of ``photo`` (or into ``out``) at ``roi``."""
    x0, y0, w, h = roi
    if out is None:
        out = photo.copy()
    else:
        np.copyto(out, photo)
    base = photo[y0 : y0 + h, x0 : x0 + w]
    blended = base + feather * (roi_img.astype(np.float32) - base)
    out[y0 : y0 + h, x0 : x0 + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
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
