"""The mouth interior the default renderer shows between parted lips: learned from real mouths.

A small conditional generator (:mod:`etf_models.mouth_interior`, trained by ``etf fit-mouth``
on the real talking and MEAD clips) maps the frame's lip shape, the jaw's drop and the
lips' colour to the interior's colour relative to the lips, on a 64x48 patch anchored to
the resting mouth (:mod:`etf_models.mouth_patch`). Here its ONNX export runs in OpenCV's
DNN module (no extra dependency), one network per thread, about 2 ms a frame on one core,
and only while the lips are apart. The patch is coloured with the photo's own lips, warped
into the output and laid in where the inner lips part.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache

import cv2
import numpy as np

from etf_models import mouth_patch as mp
from etf_models.canonical_face import IOD

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "etf_models", "weights", "mouth_interior.onnx")
WEIGHTS_SHA256 = "6d0015e6ebc594bcb69c3473c64f35aec4447f65e53503af8aa0e0a6aef5afd4"
#: below this inner-lip gap (canonical pixels) nothing shows between the lips
MIN_GAP = 0.01 * IOD


class MouthModelError(RuntimeError):
    pass


@lru_cache(maxsize=4)
def _checked(path: str) -> bytes:
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise MouthModelError(f"the mouth model {path} cannot be read: {e}") from e
    if path == WEIGHTS and hashlib.sha256(data).hexdigest() != WEIGHTS_SHA256:
        raise MouthModelError(f"{path} does not match its pinned SHA-256; rebuild it with "
                              "`etf fit-mouth` or restore it from the repository")
    return data


class MouthModel:
    """The learned interior: ``patch(landmarks, rest, lip_colour)`` -> (canonical -> patch
    2x3, RGB [48,64,3] float32). Safe to share between threads."""

    def __init__(self, path: str = WEIGHTS):
        self.path = path
        self._onnx = _checked(path)
        self._local = threading.local()
        self._local.net = self._read()  # a file that is no network fails here, by name

    def _read(self):
        try:
            return cv2.dnn.readNetFromONNX(np.frombuffer(self._onnx, np.uint8))
        except cv2.error as e:
            raise MouthModelError(f"{self.path} is not a mouth-interior network: {e}") from e

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self._read()
        return net

    def patch(self, landmarks: np.ndarray, rest: np.ndarray, lip_colour: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        m, cond = mp.conditions(landmarks, rest, lip_colour)
        net = self._net()
        net.setInput(cond[None])
        ratio = net.forward()[0].transpose(1, 2, 0)
        colour = np.exp(np.clip(ratio, -4.0, 1.5)) * np.asarray(lip_colour, np.float32)
        return m, np.clip(colour, 0.0, 255.0).astype(np.float32)


def _dim_to(colour: np.ndarray, landmarks: np.ndarray, rest: np.ndarray, m: np.ndarray,
            cap: float) -> np.ndarray:
    """Dim the whole patch so its brightest interior (the teeth, 95th percentile of
    luminance inside the parted lips) is no brighter than ``cap``, then roll off what still
    exceeds it. One gain for the patch keeps the teeth's shading and gaps; clipping each
    pixel at the cap flattened them into a slab."""
    pts = landmarks @ m[:, :2].T + m[:, 2]
    inside = mp.coverage(colour.shape[:2], mp.smooth_ring(pts[mp.INNER_RING])) > 0.5
    lum = colour.mean(-1)
    if inside.any():
        top = float(np.percentile(lum[inside], 95))
        if top > cap:
            colour = colour * (cap / top)
            lum = lum * (cap / top)
    over = lum > cap
    if over.any():  # a soft knee: at most a quarter of the way from the cap to white
        k = np.where(over, (cap + (255.0 - cap) * np.tanh((lum - cap) / max(255.0 - cap, 1.0))
                            * 0.25) / np.maximum(lum, 1.0), 1.0)
        colour = colour * k[..., None]
    return colour


@lru_cache(maxsize=1)
def default_model() -> MouthModel:
    return MouthModel()


def paint(out: np.ndarray, landmarks: np.ndarray, dst: np.ndarray, rest: np.ndarray,
          lip_colour: np.ndarray, roi_to_canon: np.ndarray, teeth_colour: np.ndarray,
          model: MouthModel | None = None) -> None:
    """Lay the learned interior into ``out`` (in place) where the inner lips part.

    ``landmarks``: the frame's canonical points [68,2]; ``dst``: the same in ``out``'s
    pixels; ``rest``: the face's resting canonical points; ``roi_to_canon``: 2x3 from
    ``out``'s pixels to canonical; ``teeth_colour``: the brightest the interior may be
    (teeth in this photo's light): pale lips would otherwise scale the model's teeth, which
    it draws relative to the lips, past white."""
    if mp.inner_gap(landmarks) < MIN_GAP:
        return
    h, w = out.shape[:2]
    ring = mp.smooth_ring(dst[mp.INNER_RING])
    lo = np.maximum(np.floor(ring.min(0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(ring.max(0)).astype(int) + 3, (w, h))
    if (hi <= lo).any():
        return
    bh, bw = int(hi[1] - lo[1]), int(hi[0] - lo[0])
    alpha = mp.coverage((bh, bw), ring - lo)
    if alpha.max() <= 0:
        return
    m, colour = (model or default_model()).patch(landmarks, rest, lip_colour)
    colour = _dim_to(colour, landmarks, rest, m, float(np.mean(teeth_colour)))
    # box pixel -> output pixel (+lo) -> canonical -> patch pixel
    a = roi_to_canon
    to_patch = m[:, :2] @ a[:, :2]
    shift = m[:, :2] @ (a[:, :2] @ lo + a[:, 2]) + m[:, 2]
    inside = cv2.warpAffine(colour, np.c_[to_patch, shift], (bw, bh),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    box = out[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
    al = alpha[..., None]
    out[lo[1]:hi[1], lo[0]:hi[0]] = np.clip(box * (1 - al) + inside * al + 0.5, 0,
                                            255).astype(np.uint8)
