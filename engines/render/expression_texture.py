"""Expression texture: the skin changes of an emotion (folds, furrows, forehead lines).

A warp moves skin but cannot crease it. The emotion model (:mod:`engines.motion.emotion_model`)
holds expression ratio images measured on real faces: per emotion, how much brighter or
darker each patch of a neutral face's skin gets (a smile's cheek bulge and nasolabial
folds, the furrow between angry brows, forehead lines in surprise and fear, a disgusted
nose's wrinkles). They live on a template face; :func:`prepare` carries them, once per
identity, onto the warp's source pixels through the photo's own landmarks, so they sit on
this face's cheeks and brows and then move with the warp like the rest of its skin.

The ratio multiplies the photo's own colour, so the change takes the identity's skin tone
and light. The same maps, applied inversely, take a photo's own smile out of its texture
(:func:`prepare` with the amount enrollment removed from the landmarks).

Per frame, :meth:`ExpressionTexture.source` returns the source pixels for the current
emotion blend: a cached image while the emotion holds, and one multiply over the face's
box while it changes (a transition, or intensity being moved).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.face.identity import Identity
from engines.motion.emotion_model import EmotionModel, default_model
from engines.motion.face_motion import P
from etf_models.canonical_face import CANON_SIZE, apply_affine
from etf_models.emotions import EMOTIONS

#: A photo whose smile needed this much AU12 taken out of its landmarks smiles like MEAD's
#: level 3: its texture is divided by the whole happy ratio (less smile, less of it).
FULL_SMILE_AU12 = 0.7
#: How much of the smile's shading is taken out: the photo's smile is measured from its
#: landmarks, not its skin, so part is left rather than overshooting into a frown's shadows.
NEUTRALISE_STRENGTH = 0.7


@dataclass(frozen=True, eq=False)
class ExpressionMaps:
    """Ratio maps of one identity in its warp's source ROI."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the ROI: where any map differs from 1
    delta: np.ndarray  # [7, bh, bw] float32: ratio - 1 per emotion (neutral all 0)
    base: np.ndarray  # [h, w, 3] uint8: the neutralised source image


def _template_coords(state, model: EmotionModel) -> np.ndarray:
    """For every ROI pixel its position [h,w,2] on the template (canonical pixels)."""
    h, w = state.shape
    lm_src = state.src_vertices[:68]
    tpl_roi = apply_affine(state.canon_to_roi, model.template[:68]).astype(np.float32)
    from engines.render.texture_warp import vertex_displacement

    delta = vertex_displacement(state, tpl_roi - lm_src)
    pos = state.grid + (state.weights @ delta).reshape(h, w, 2)
    a = state.roi_to_canon.astype(np.float32)
    return np.stack([a[0, 0] * pos[..., 0] + a[0, 1] * pos[..., 1] + a[0, 2],
                     a[1, 0] * pos[..., 0] + a[1, 1] * pos[..., 1] + a[1, 2]], axis=-1)


def prepare(state, identity: Identity, model: EmotionModel | None = None,
            neutralise: bool = True) -> ExpressionMaps:
    """Carry the model's ratio images onto one identity's warp source (once).

    ``state`` is the identity's :class:`engines.render.texture_warp.WarpState`. With
    ``neutralise``, a photo that smiles has its smile's shading divided out of ``base``.
    """
    model = model or default_model()
    h, w = state.shape
    coords = _template_coords(state, model) * (model.ratio.shape[-1] / CANON_SIZE)
    maps = np.stack([
        cv2.remap(r, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR,
                  borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
        for r in model.ratio.astype(np.float32)
    ]) - 1.0
    active = np.abs(maps).max(axis=0) > 2e-3
    if active.any():
        ys, xs = np.nonzero(active)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    else:
        box = (0, 0, 1, 1)
    x0, y0, x1, y1 = box
    base = state.image
    smile = float(identity.expression[P["corner_pull"]]) / FULL_SMILE_AU12
    if neutralise and smile > 0.05:
        # Only the smile's darkening (folds, the crease under the eyes) is lifted out: a
        # cheek's highlight divided out of a photo whose cheek sits a little elsewhere
        # than the template's left a dark smudge on the built-in face.
        k = EMOTIONS.index("happy")
        r = 1.0 + NEUTRALISE_STRENGTH * min(smile, 1.0) * np.minimum(maps[k], 0.0)
        base = np.clip(base.astype(np.float32) / r[..., None] + 0.5, 0, 255).astype(np.uint8)
    return ExpressionMaps(box=box, delta=np.ascontiguousarray(maps[:, y0:y1, x0:x1]),
                          base=base)


class ExpressionTexture:
    """One stream's expression texture: source pixels for the current emotion blend.

    Built from a warp's ``expression`` maps; None (a warp prepared without them) gives a
    texture whose :meth:`source` is None, i.e. the warp's own pixels."""

    def __init__(self, maps: ExpressionMaps | None) -> None:
        self.maps = maps
        self._image = None if maps is None else maps.base.copy()
        self._key: np.ndarray | None = None
        if maps is not None:  # per stream, once: the face box as floats and its headroom
            x0, y0, x1, y1 = maps.box
            self._region = maps.base[y0:y1, x0:x1].astype(np.float32)
            # The largest gain each pixel takes before its brightest channel clips.
            self._headroom = 255.0 / np.maximum(self._region.max(axis=-1), 1.0)

    def source(self, emotion: np.ndarray | None) -> np.ndarray | None:
        """Source ROI pixels [h,w,3] uint8 for the blend vector [7] (None: neutral), or
        None without maps. The returned buffer is reused: valid until the next call."""
        if self.maps is None:
            return None
        w = np.zeros(len(EMOTIONS), np.float32) if emotion is None else \
            np.asarray(emotion, np.float32)
        w = np.round(w, 3)  # below a thousandth no pixel changes: keep the cache
        if self._key is not None and np.array_equal(w, self._key):
            return self._image
        self._key = w
        x0, y0, x1, y1 = self.maps.box
        live = np.flatnonzero(w[1:]) + 1  # a transition mixes one or two emotions, not six
        gain = np.ones(self.maps.delta.shape[1:], np.float32)
        for k in live:
            gain += w[k] * self.maps.delta[k]
        # Where a bright skin would clip, the gain stops at the pixel's headroom, so its
        # three channels scale together: the hue stays the skin's (clipping one channel
        # turns a lit cheek grey or cyan).
        np.minimum(gain, self._headroom, out=gain)
        self._image[y0:y1, x0:x1] = (self._region * gain[..., None]).astype(np.uint8)
        return self._image
