"""The eyeball stays round: eyes that widen show white above the iris, eyes that narrow
cover it.

The mesh warp moves the lids with the landmarks and stretches everything between them,
iris included: a surprised upper lid drags the iris into a tall oval instead of baring
the white above it, and a squint or a smile squashes the iris flat instead of sliding
the lids over it. Real lids slide over a rigid eyeball. So inside each eye's opening
(the lid margins' curve through the six landmarks) the photo's eyeball is drawn rigidly,
moved only as the eye's corners move (a similarity); the warp keeps the lids and the
skin around them.

Where the opening now reaches past the photo's own (a lid raised above where the photo
shows it), there is nothing in the photo to draw, so it is filled: the iris's hidden cap
from the iris mirrored about its horizontal diameter (an iris is close to symmetric;
its catch-lights are not copied, they sit elsewhere), the white from the photo's own
sclera colour, shaded darker under the upper lid and toward the corners as real eyes
are. The band of lash shadow just under the photo's upper lid moves up with the lid
(it fades out of the eyeball as the lid rises) instead of staying behind as a second
lid line.

Everything is measured from the photo once (:func:`prepare_eyes`); per frame it costs
one small resample per eye (:func:`paint_eyes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from etf_models.canonical_face import EYE_L_RING, EYE_R_RING
from etf_models.mouth_patch import coverage, smooth_ring

#: dlib's eye rings (image-left eye first) and each one's corners within the ring.
EYE_RINGS = (EYE_R_RING, EYE_L_RING)
_UPPER = [1, 2]  # ring positions of the upper-lid points
_LOWER = [5, 4]
#: Points per ring edge of the lid-margin curve.
_PER_EDGE = 4
#: The lash line's shadow under the upper lid and the lower lid's wet rim above it, as
#: shares of the photo's eye opening: they move with their lids.
LASH_SHARE = 0.2
MARGIN_SHARE = 0.12
#: An iris's radius against the eye's corner-to-corner width when the photo has no iris
#: points (11.7 mm across an eye ~29 mm wide).
IRIS_PER_WIDTH = 0.2
#: The white's shading: darkest just under the upper lid (its shadow), over this share of
#: the opening; and toward the corners.
LID_SHADOW = (0.7, 0.2)
CORNER_SHADE = 0.14
#: Lids that keep the photo's eye shape within this (px, after the eye's own move and
#: turn) are drawn by the warp as they are.
RIGID_PX = 0.35


@dataclass(frozen=True)
class Eyeball:
    """One eye as the photo shows it, in ROI pixels."""

    ring: np.ndarray  # [6] landmark indices
    src_ring: np.ndarray  # [6,2] the photo's lid-margin points
    origin: np.ndarray  # [2] the patch's top-left in ROI pixels
    #: [ph,pw,9] float32: the photo's RGB; the fill's RGB (what the photo cannot show:
    #: the iris's hidden cap, the white); the photo's eyeball (coverage of its opening);
    #: the margin bands under the upper lid and above the lower one (part of it)
    patch: np.ndarray
    iris: np.ndarray  # [3] centre x, y and radius
    sclera: np.ndarray  # [3] RGB
    iris_colour: np.ndarray  # [3] RGB
    opening: float  # upper to lower lid, px
    #: the white was measured in the photo (False: too little of it shows; ``sclera`` is
    #: then a guess)
    sclera_measured: bool = False
    #: [3] RGB: the median of the white's brightest tenth (the light falling on the eye,
    #: what the teeth's colour is taken from; ``sclera``, the fill's, is its typical white)
    white_top: np.ndarray | None = None


def _ring_curve(ring: np.ndarray) -> np.ndarray:
    return smooth_ring(ring, _PER_EDGE)


def _shifted(mask: np.ndarray, dy: float) -> np.ndarray:
    """``mask`` moved down by ``dy`` pixels (up if negative), zero where it came from."""
    return cv2.warpAffine(mask, np.float32([[1, 0, 0], [0, 1, dy]]), mask.shape[::-1])


def _fallback_iris(rgb: np.ndarray, inside: np.ndarray, width: float) -> np.ndarray | None:
    """The iris as the darkest part of the opening: centroid of its darkest third."""
    lum = rgb.mean(axis=2)
    ys, xs = np.nonzero(inside > 0.5)
    if len(xs) < 12:
        return None
    v = lum[ys, xs]
    dark = v <= np.quantile(v, 0.33)
    return np.array([xs[dark].mean(), ys[dark].mean(), IRIS_PER_WIDTH * width])


def prepare_eyes(image: np.ndarray, lm_roi: np.ndarray,
                 irises: np.ndarray | None = None) -> tuple[Eyeball, ...]:
    """Both eyes of the photo ``image`` (ROI pixels, RGB uint8) with its 68 landmarks in
    ROI pixels; ``irises`` [2,3] (x, y, radius in ROI pixels, image-left eye first) from
    the dense mesh's iris points, or None to find them in the photo."""
    h, w = image.shape[:2]
    out = []
    for k, ring in enumerate(EYE_RINGS):
        pts = lm_roi[ring].astype(np.float64)
        width = float(np.hypot(*(pts[3] - pts[0])))
        opening = float((pts[_LOWER, 1] - pts[_UPPER, 1]).mean())
        # room to sample from when the eye moves (head motion) or opens past the photo
        m = 0.6 * width
        x0, y0 = (int(max(0, np.floor(v - m))) for v in pts.min(0))
        x1 = int(min(w, np.ceil(pts[:, 0].max() + m)))
        y1 = int(min(h, np.ceil(pts[:, 1].max() + m)))
        if x1 - x0 < 4 or y1 - y0 < 4 or opening <= 1.0:
            continue
        rgb = image[y0:y1, x0:x1].astype(np.float32)
        local = _ring_curve(pts) - (x0, y0)
        inside = coverage(rgb.shape[:2], local)
        # the photo's eyeball reaches a little under its lid-margin curve: the frame's own
        # opening ends on photo pixels, the fill begins only where it truly opens wider
        grown = cv2.GaussianBlur(cv2.dilate(inside, np.ones((3, 3), np.uint8)), (0, 0), 0.8)
        # the lid margins' bands: the opening's top LASH_SHARE (the lashes' shadow) and
        # bottom MARGIN_SHARE (the lower lid's wet rim), each the opening minus itself
        # moved in by that much; they leave the eyeball as their lid moves away
        grown = np.minimum(grown, 1.0)
        rows = np.arange(rgb.shape[0])[:, None] < local[:, 1].mean()
        lash = np.clip(grown - _shifted(grown, LASH_SHARE * opening), 0.0, 1.0) * rows
        rim = np.clip(grown - _shifted(grown, -MARGIN_SHARE * opening), 0.0, 1.0) * ~rows
        iris = None
        if irises is not None:
            c = np.asarray(irises[k], np.float64)
            cx, cy = int(round(c[0] - x0)), int(round(c[1] - y0))
            if 0 <= cy < inside.shape[0] and 0 <= cx < inside.shape[1] and inside[cy, cx] > 0.5 \
                    and 0.1 * width < c[2] < 0.35 * width:
                iris = np.array([c[0] - x0, c[1] - y0, c[2]])
        if iris is None:
            iris = _fallback_iris(rgb, inside, width)
        if iris is None:
            continue
        yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
        r = np.hypot(xx - iris[0], yy - iris[1]) / iris[2]
        core = (inside > 0.9) & (lash < 0.1) & (rim < 0.1)
        iris_px = rgb[core & (r > 0.55) & (r < 0.9)]  # the iris's own colour, not the pupil
        white_px = rgb[core & (r > 1.15)]
        iris_colour = np.median(iris_px, axis=0) if len(iris_px) else np.array([70.0, 55, 45])
        if len(white_px) >= 6:
            lum = white_px.mean(axis=1)
            sclera = np.median(white_px[lum >= np.median(lum)], axis=0)
            # the light on the eye: its brightest tenth of white, clear of lash shadow
            white_top = np.median(white_px[lum >= np.percentile(lum, 90)], axis=0)
        else:  # a narrow eye shows no white to measure: a dim off-white at the skin's light
            sclera = np.array([205.0, 196.0, 188.0]) * min(1.0, rgb.mean() / 150.0)
            white_top = sclera
        cols = np.full((rgb.shape[1], 3), np.nan)
        white = core & (r > 1.15) & (rgb.mean(axis=2) >= rgb[core].mean(axis=1).mean())
        for x in np.flatnonzero(white.any(axis=0)):
            cols[x] = np.median(rgb[white[:, x], x], axis=0)
        have = ~np.isnan(cols[:, 0])
        # the white down each column (across the iris: from beside it), so a revealed
        # white keeps the photo's pinker corners
        sclera_row = None
        if have.sum() >= 3:
            xs = np.arange(len(cols))
            sclera_row = np.stack([np.interp(xs, xs[have], cols[have, ch]) for ch in range(3)], 1)
            sclera_row = cv2.GaussianBlur(sclera_row[None].astype(np.float32), (0, 0),
                                          0.08 * width)[0]
        if sclera_row is None:
            sclera_row = np.tile(sclera.astype(np.float32), (rgb.shape[1], 1))
        masks = np.dstack([rgb, grown, lash, rim]).astype(np.float32)
        fill = _fill(masks, iris, iris_colour, sclera_row, pts[[0, 3], 0] - x0)
        patch = np.dstack([rgb, fill, grown, lash, rim]).astype(np.float32)
        iris = iris + (x0, y0, 0.0)
        out.append(Eyeball(ring=ring, src_ring=pts, origin=np.array([x0, y0], np.float64),
                           patch=patch, iris=iris, sclera=sclera.astype(np.float32),
                           iris_colour=iris_colour.astype(np.float32), opening=opening,
                           sclera_measured=len(white_px) >= 6,
                           white_top=np.asarray(white_top, np.float32)))
    return tuple(out)


#: The points the eyeballs move with: the four eye corners, at the eyeballs' depth (a
#: least-squares similarity over both eyes; an expression moves each corner a little, the
#: pair hardly).
SKULL = np.r_[36, 39, 42, 45]


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """(c, d) of the least-squares similarity dst = c src + d (complex) over points."""
    z, w = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    zm, wm = z.mean(), w.mean()
    zc = z - zm
    c = complex((np.conj(zc) @ (w - wm)) / max(float(np.vdot(zc, zc).real), 1e-9))
    return c, complex(wm - c * zm)


def paint_eyes(eyes: tuple[Eyeball, ...], out: np.ndarray, dst: np.ndarray,
               src: np.ndarray) -> None:
    """Redraw each eye's opening in ``out`` (ROI RGB uint8, in place) for the frame's
    landmarks ``dst`` [68,2] in ROI pixels; ``src`` [68,2]: the photo's."""
    if not eyes:
        return
    H, W = out.shape[:2]
    skull = None  # the eyeballs' move, fitted once a frame needs it
    for eye in eyes:
        d = dst[eye.ring].astype(np.float64)
        opening = float((d[_LOWER, 1] - d[_UPPER, 1]).mean())
        if opening < 0.08 * eye.opening:
            continue  # shut: the lids are all there is
        ring = d[:, 0] + 1j * d[:, 1]
        own, own_off = _similarity(eye.src_ring, d)
        if np.abs(own * (eye.src_ring[:, 0] + 1j * eye.src_ring[:, 1]) + own_off - ring
                  ).max() < RIGID_PX:
            continue  # the lids kept the photo's shape: the warp draws this eye as it is
        if skull is None:
            skull = _similarity(src[SKULL], dst[SKULL])
        c, off = skull
        moved = c * (eye.src_ring[:, 0] + 1j * eye.src_ring[:, 1]) + off
        curve = _ring_curve(d)
        lo = np.maximum(np.floor(curve.min(0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(curve.max(0)).astype(int) + 2, (W, H))
        if (hi - lo < 2).any():
            continue
        bw, bh = int(hi[0] - lo[0]), int(hi[1] - lo[1])
        # box pixel -> photo ROI pixel -> patch pixel: z = (z' - off) / c
        ci = 1.0 / c
        t = ci * (complex(lo[0], lo[1]) - off) - complex(*eye.origin)
        A = np.array([[ci.real, -ci.imag, t.real], [ci.imag, ci.real, t.imag]], np.float64)
        got = cv2.warpAffine(eye.patch, A, (bw, bh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # how far the upper lid rose above where the photo's would be now, and the lower
        # one fell (px)
        rise = float((moved[_UPPER].imag - d[_UPPER, 1]).mean())
        drop = float((d[_LOWER, 1] - moved[_LOWER].imag).mean())
        band = eye.opening * abs(c)
        fade = float(np.clip(rise / max(LASH_SHARE * band, 1e-3), 0.0, 1.0))
        fade_low = float(np.clip(drop / max(MARGIN_SHARE * band, 1e-3), 0.0, 1.0))
        valid = np.clip(got[..., 6] - fade * got[..., 7] - fade_low * got[..., 8], 0.0, 1.0)
        # the lids' margins (lashes, wet rim) as the warp draws them, moved with the lids,
        # stay: the eyeball shows inside them
        inset = np.where(_UPPER_HALF, fade * LASH_SHARE, -fade_low * MARGIN_SHARE) * band * 0.7
        alpha = coverage((bh, bw), curve + np.c_[np.zeros_like(inset), _LID_PROFILE * inset] - lo)
        img = got[..., :3]
        if ((1.0 - valid) * alpha).max() > 0.05:  # the opening reaches past the photo's
            valid = cv2.GaussianBlur(valid, (0, 0), max(0.6, 0.06 * band))[..., None]
            img = img * valid + got[..., 3:6] * _lid_shadow(curve - lo, (bh, bw)) * (1.0 - valid)
        box = out[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
        a = alpha[..., None]
        out[lo[1]:hi[1], lo[0]:hi[0]] = np.clip(box * (1 - a) + img * a + 0.5, 0, 255
                                                 ).astype(np.uint8)


#: Along the lid-margin curve (``_ring_curve``: corner, upper lid, corner, lower lid):
#: which samples are on the upper lid, and how far each is from the corners (0 there).
_K = np.arange(12 * _PER_EDGE // 2)
_UPPER_HALF = _K <= 3 * _PER_EDGE
_LID_PROFILE = np.sin(np.pi * np.where(_UPPER_HALF, _K, _K - 3 * _PER_EDGE) / (3 * _PER_EDGE))


def _lid_shadow(curve: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[bh,bw,1] the upper lid's shadow on the eyeball, darkest at its margin."""
    bh, bw = shape
    upper = curve[: 3 * _PER_EDGE + 1]  # corner 0 along the upper lid to corner 3
    order = np.argsort(upper[:, 0])
    lid_y = np.interp(np.arange(bw, dtype=np.float32), upper[order, 0], upper[order, 1])
    span = max(float(curve[:, 1].max() - curve[:, 1].min()), 1.0)
    below = np.clip((np.arange(bh, dtype=np.float32)[:, None] - lid_y[None, :])
                    / (LID_SHADOW[1] * span), 0.0, 1.0)
    return (LID_SHADOW[0] + (1.0 - LID_SHADOW[0]) * below * below * (3 - 2 * below))[..., None]


def _sample(patch: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return cv2.remap(patch, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _fill(patch: np.ndarray, iris: np.ndarray, iris_colour: np.ndarray,
          sclera: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """What the photo cannot show, everywhere on the patch [ph,pw,6] (RGB, eyeball,
    upper and lower margin bands), made once: the iris's hidden cap and the white (its
    colour down each column ``sclera`` [pw,3], a little darker toward the corners)."""
    ph, pw = patch.shape[:2]
    py, px = np.mgrid[0:ph, 0:pw].astype(np.float32)
    ix, iy, radius = iris
    dx, dy = px - ix, py - iy
    r = np.hypot(dx, dy) / radius
    # iris: mirrored about its horizontal diameter where the photo has the other half,
    # else turned a quarter about its centre onto its sides (an iris is radial)
    mirror = _sample(patch, px, 2 * iy - py)
    turned = _sample(patch, ix + np.where(dx >= 0, -dy, dy), iy + np.abs(dx))
    mv = np.clip(mirror[..., 3] - mirror[..., 4] - mirror[..., 5], 0.0, 1.0)[..., None]
    tv = np.clip(turned[..., 3] - turned[..., 4] - turned[..., 5], 0.0, 1.0)[..., None] \
        * (1.0 - mv)
    rim = np.clip((r - 0.75) / 0.25, 0.0, 1.0)[..., None]  # the darker limbal ring
    flat = iris_colour * (1.0 - 0.35 * rim)
    iris_img = mirror[..., :3] * mv + turned[..., :3] * tv + flat * (1.0 - mv - tv)
    cx, half = corners.mean(), max(abs(corners[1] - corners[0]) / 2, 1.0)
    white = sclera[None, :, :] * (1.0 - CORNER_SHADE * np.clip(np.abs(px - cx) / half, 0, 1)
                                  ** 2)[..., None]
    inside_iris = np.clip((1.0 - r) / 0.08 + 0.5, 0.0, 1.0)[..., None]
    return (iris_img * inside_iris + white * (1.0 - inside_iris)).astype(np.float32)
