"""The default texture engine: a mesh warp of the enrolled photo with a synthesized mouth.

Per identity (``prepare``), once:
  * a working region (ROI) of the photo around the face, with fixed anchor points on its
    border so hair, shoulders and background stay put;
  * the Delaunay mesh of the photo's own landmarks plus those anchors, and for every ROI
    pixel its barycentric weights in that mesh, as a sparse matrix ``B`` [pixels, vertices];
  * colours of the lips, lids and teeth, taken from the photo.

Per frame (``render_roi``): landmark displacements ``delta`` [vertices,2] become a dense,
piecewise-linear displacement field ``B @ delta`` (exactly the piecewise-affine map of the
mesh). The backward map that ``cv2.remap`` needs is its inverse, found by two fixed-point
steps (x_src = x - d(x_src)), which converge for the smooth, small displacements of a
talking face. Then the mouth interior (cavity, upper and lower teeth, tongue) is painted
wherever the lips have parted, and eyelids are shaded over closing eyes. All of it is
vectorised over pixels; nothing per pixel runs in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np
from scipy import sparse
from scipy.spatial import Delaunay

from engines.face.identity import Identity
from engines.render import eyeball, mouth_model
from engines.render.compositor import solid_box
from etf_models import mouth_patch
from etf_models.canonical_face import (
    CANON_SIZE,
    INNER_LIP_RING,
    IOD,
    LIP_OUTER,
    LOWER_INNER,
    UPPER_INNER,
    apply_affine,
    barycentric_matrix,
    barycentric_weights,
    invert_affine,
)

#: The ROI is the canonical frame grown by this fraction on each side, so a dropped jaw
#: stretches the neck over a long distance instead of squashing it.
ROI_MARGIN = 0.18
ANCHORS_PER_SIDE = 9
#: Fill vertices between the landmarks, on a triangular lattice this far apart (IOD): the
#: 68 points alone leave long triangles (nose to mouth corner, cheek to jaw) whose
#: piecewise-linear field bends only along their edges, which a smile or a dropped jaw
#: showed as creases. The fill vertices move with a thin-plate spline of the landmarks'
#: motion (``fill_weights``), so the skin between them bends smoothly.
FILL_SPACING = 0.16
#: No fill vertex this close (IOD) to a landmark or inside the lips and eyes (grown by it):
#: there the landmarks' own triangles hold the shapes the mouth and lids are drawn from.
FILL_CLEARANCE = 0.08
#: The spline's smoothing (on IOD-scaled points): the inner lips of a closed-mouth photo
#: sit a pixel apart and part in opposite directions; an exact spline would ripple the
#: skin around them.
FILL_SMOOTHING = 1e-3
#: Off the face (outside the landmarks' hull) a fill vertex's motion fades to nothing over
#: this distance (IOD), as the landmarks' own mesh faded it toward the still border.
FILL_FADE = 1.0
#: Upper incisors' edge below the relaxed upper lip line, and the tooth layout, in IOD.
TEETH_EDGE_BELOW_LIP = 0.09
#: how tall the upper incisors' crowns are (about 10.5 mm against ~63 mm between the eyes)
CROWN_HEIGHT = 0.17
#: Where the gaps between upper teeth are (IOD from the midline, as seen from the front:
#: the arch foreshortens the side teeth), and the lower teeth's, which are narrower.
TEETH_BOUNDS = np.array([0.0, 0.135, 0.25, 0.34, 0.42, 0.49, 0.55, 0.6])
LOWER_TEETH_BOUNDS = np.array([0.0, 0.085, 0.17, 0.26, 0.34, 0.42, 0.49, 0.55, 0.6])
#: Real mouths against their own lips (``etf fit-mouth``'s ``interior_colours``, the median
#: over the 23 training people of ../shared/data/talking and MEAD; benchmarks/results/
#: mouth_model.json): the teeth's highlight is the lips' colour times TEETH_OVER_LIP (a
#: warm white in the lips' own light), no more saturated than TEETH_MAX_SATURATION (three
#: people in four; lipstick would otherwise tint them); the cavity's darkest tenth is the
#: lips' colour times CAVITY_OVER_LIP (a dark red, not black).
TEETH_OVER_LIP = np.array([1.232, 1.764, 1.756])
TEETH_MAX_SATURATION = 0.283
#: Real teeth against the whites of the same person's eyes (the brightest 8% of the open
#: mouth's interior over the brightest tenth of the eyes' white, ``Eyeball.white_top``;
#: benchmarks/teeth_light.py, 13 people)
TEETH_OVER_SCLERA = np.array([1.1, 1.104, 1.07])
#: ... and taken down to TEETH_LEVEL of it: TEETH_OVER_LIP is the teeth's highlight, and
#: ours showed it over the whole row, the upper teeth's bands 1.2-1.55x the lips against
#: real mouths' 0.9-1.24 (benchmarks/mouth_profile.py; fitted on the mouth model's training
#: people: 0.8 fitted best, but dimmed that far a white row turned putty grey beside real
#: smiles in benchmarks/mouth_sheets.py, so 0.9).
TEETH_LEVEL = 0.9
#: ... measured where the lips part 0.08 IOD or more; as they part, light reaches further in
#: (``teeth_by_gap``, the same report): the highlight over the lips' luminance by gap (IOD).
TEETH_GAP = np.array([0.03, 0.05, 0.07, 0.1, 0.15, 0.24])
TEETH_LIGHT = np.array([0.899, 0.944, 1.1, 1.27, 1.443, 1.655])
TEETH_LIGHT_OPEN = 1.475  # teeth_over_lip_luminance: TEETH_OVER_LIP's own light
CAVITY_OVER_LIP = np.array([0.48, 0.373, 0.303])
#: The open mouth's make-up, set against real mouths band by band from the upper lip down
#: (benchmarks/mouth_profile.py: real openings are mostly teeth and tongue, a dark void
#: only in a few people): the cavity's light over its darkest tenth, at the back and added
#: toward its floor; the tongue's colour over the lips', how far it rises (per IOD the
#: opening exceeds 0.1 IOD below the teeth) and its cover; the lower teeth's tint (a plain
#: dim white read cyan beside red lips); how much rounded lips shade the teeth (at inner
#: lips 0.65 of their resting width and narrower); the upper lip's shade on the teeth and
#: how far it reaches (IOD); how much darker each tooth is at its sides than down its
#: middle.
CAV_BASE, CAV_DOWN = 0.85, 0.45
#: (the tongue: about the lips' own light and a little less red than them, as the lower
#: bands of real open mouths are; it was 0.85, 0.76, 0.76: a dark red lump)
TONGUE_OVER_LIP = np.array([0.97, 0.937, 0.937])
TONGUE_RISE = 0.5
TONGUE_ALPHA = 0.92
LOWER_TEETH_TINT = np.array([0.92, 0.84, 0.76])
ROUND_SHADE = 1.0
#: ... from inner lips this narrow against their resting width (a jaw opened alone narrows
#: them to 0.91, and an aa keeps its teeth lit), fully at ROUND_FULL: the fitted visemes
#: round an oo to 0.82 of the resting width (W 0.82, OW 0.86), and with the shade reaching
#: full only at 0.65 (the roundest real frames) an oo showed its teeth 70% lit, a grey
#: putty slot beside real rounded mouths' dark openings (benchmarks/mouth_sheets.py).
ROUND_FROM, ROUND_FULL = 0.9, 0.82
LIP_SHADE, LIP_SHADE_DEPTH = 0.08, 0.05
TOOTH_ROUND = 0.06
#: Seen beside real smiles (MEAD's happy clips, the talking clips' open mouths), the teeth
#: were a comb: every tooth 15% darker at its sides and a gap line down its full height
#: made even bars across the whole opening. Real teeth part visibly only near the biting
#: edge, and the row falls into the mouth's shadow from the canines on (the arch turns
#: away): the gaps fade out above the edge (to GAP_ABOVE_EDGE of their depth), and the
#: side shade starts SIDE_SHADE_FROM of the way from the middle to the corners (from 0.4
#: on, the expression classifier of benchmarks/emotion_eval.py read one devset smile
#: fewer as happy: 8 of 13 against 9).
GAP_ABOVE_EDGE = 0.0
SIDE_SHADE_FROM, SIDE_SHADE = 0.45, 0.85


@dataclass(frozen=True, eq=False)
class WarpState:
    """Everything the per-frame warp needs for one identity in one output space."""

    image: np.ndarray  # source pixels of the ROI [h,w,3] uint8
    roi: tuple[int, int, int, int]  # x0, y0, w, h in the output image
    canon_to_roi: np.ndarray  # 2x3
    roi_to_canon: np.ndarray  # 2x3
    #: [68 + fills + anchors, 2] in ROI pixels: the landmarks, the fill vertices between
    #: them (``FILL_SPACING``), the border anchors
    src_vertices: np.ndarray
    weights: sparse.csr_matrix  # [h*w, vertices]
    #: [fills, 68] float32: each fill vertex's displacement from the landmarks' (a
    #: thin-plate spline with the anchors held still; ``vertex_displacement``)
    fill_weights: np.ndarray
    #: the mesh's triangles [T,3] that touch the lips: inverted exactly per frame
    lip_triangles: np.ndarray
    #: their orientation in the photo [T] (+-1): drawn the other way round, one is folded
    lip_orientation: np.ndarray
    grid: np.ndarray  # [h,w,2] float32 pixel coordinates
    neutral: np.ndarray  # [68,2] canonical neutral landmarks
    lip_colour: np.ndarray
    lid_colours: np.ndarray  # [2,3] (image-left eye, image-right eye)
    teeth_colour: np.ndarray
    feather: np.ndarray  # [h,w,1] float32 paste-back weight, 0 at the ROI edge
    #: the moving vertices' (landmarks and fills) barycentric weights [(h/2)*(w/2),
    #: 68 + fills] at the centres of 2x2 pixel blocks (``field_grid``): the per-frame
    #: displacement field is made on this half-size grid and enlarged (it is piecewise
    #: linear over triangles far larger than 2 px; the lips are inverted exactly anyway).
    #: The anchors hold the border still, so no other columns are needed.
    field_weights: sparse.csr_matrix
    #: [h/2, w/2, 2] float32: where those block centres are, in ROI pixels
    field_grid: np.ndarray
    #: the lips' box in the photo (x0, y0, x1, y1) and the landmarks' full-size weights of
    #: its pixels: the field jumps across the parting lips (they touch in a closed-mouth
    #: photo), which a half-size grid cannot hold, so there it is made pixel by pixel
    mouth_box: tuple[int, int, int, int]
    mouth_weights: sparse.csr_matrix
    #: where ``feather`` is exactly 1 (x0, y0, x1, y1): pasted without blending
    solid: tuple[int, int, int, int] | None
    #: Expression ratio maps on this source (engines.render.expression_texture); None off.
    expression: object | None = None
    #: the mouth interior from the learned model (engines.render.mouth_model), not painted
    learned_mouth: bool = False
    #: the photo's own softness around the eyes and lips (Gaussian sigma, ROI pixels) and
    #: its grain (grey levels): the painted mouth is made no sharper and no cleaner
    photo_blur: float = 0.8
    photo_grain: float = 0.0
    #: the photo's eyeballs, drawn rigidly inside the lids (engines.render.eyeball)
    eyes: tuple = ()

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def teeth_from_lips(lip: np.ndarray) -> np.ndarray:
    """The teeth's colour in a photo, from its lips' colour: real teeth against their own
    lips (TEETH_OVER_LIP), no greener or bluer than a warm white, desaturated to at most
    TEETH_MAX_SATURATION, below white. The lips sit in the mouth's own light; the eyelids,
    often shadowed or made up, misjudged it (people_0's and art_1's teeth came out
    grey-blue)."""
    return _warm_white(np.asarray(lip, np.float64) * TEETH_OVER_LIP * TEETH_LEVEL)


def _warm_white(t: np.ndarray) -> np.ndarray:
    # teeth are a yellowish white (R >= G >= B): pale pink lips times the ratio came out
    # green-white, the ratio being fitted on redder lips
    t = np.minimum.accumulate(t)
    sat = (t.max() - t.min()) / max(float(t.max()), 1.0)
    if sat > TEETH_MAX_SATURATION:  # toward its own grey, keeping the brightest channel
        k = TEETH_MAX_SATURATION / sat
        t = t.max() - (t.max() - t) * k
    return (t * min(1.0, 248.0 / max(float(t.max()), 1.0))).astype(np.float32)


def teeth_from_sclera(sclera: np.ndarray) -> np.ndarray:
    """The teeth's colour in a photo, from the whites of its eyes: the eyes' white times the
    real teeth-over-white ratio (TEETH_OVER_SCLERA), then made a warm white below white as
    :func:`teeth_from_lips` does. The whites are a near-white surface in the photo's own
    light whatever the lips' colour or make-up (red lipstick gave pink teeth)."""
    return _warm_white(np.asarray(sclera, np.float64) * TEETH_OVER_SCLERA * TEETH_LEVEL)


def teeth_in_light(lip: np.ndarray, whites: list[np.ndarray]) -> np.ndarray:
    """The teeth's colour in a photo from its lips' colour and the whites of its eyes (one
    colour per eye where the photo shows them). Each source fails by coming out too dark:
    lipstick darkens the lips and says nothing of the light (red lips gave pink teeth);
    lashes, a squint or the brows' shadow darken the whites. So the brighter of the two,
    the whites used only when both eyes show them, alike and not coloured (a red-eye or a
    painted eye is no white). Left out person by person on 13 real people this predicts
    their teeth's brightness better than either (benchmarks/teeth_light.py)."""
    teeth = teeth_from_lips(lip)
    if len(whites) != 2:
        return teeth
    w = np.asarray(whites, np.float64)
    lum = w.mean(1)
    sat = (w.max(1) - w.min(1)) / np.maximum(w.max(1), 1.0)
    if sat.max() > WHITE_MAX_SATURATION or lum.max() > WHITES_AGREE * lum.min():
        return teeth
    other = teeth_from_sclera(np.median(w, axis=0))
    return other if other.mean() > teeth.mean() else teeth


#: the whites of the eyes count when neither is more saturated than this (the real
#: people's measured whites: 0.07-0.44) and the brighter is at most WHITES_AGREE times the
#: other
WHITE_MAX_SATURATION = 0.45
WHITES_AGREE = 1.5


def _separate_lips(lm: np.ndarray, min_gap: float) -> np.ndarray:
    """Pull coincident inner-lip points apart so both lips are distinct mesh vertices."""
    lm = lm.copy()
    gap = lm[LOWER_INNER, 1] - lm[UPPER_INNER, 1]
    push = np.maximum(min_gap - gap, 0.0) / 2
    lm[UPPER_INNER, 1] -= push
    lm[LOWER_INNER, 1] += push
    return lm


def _inner_gap(lm: np.ndarray) -> float:
    """The widest vertical gap between paired inner-lip points (in ``lm``'s units)."""
    return float((lm[LOWER_INNER, 1] - lm[UPPER_INNER, 1]).max())


def _polygon_median(img: np.ndarray, outer: np.ndarray, inner: np.ndarray | None = None):
    m = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(m, [np.round(outer).astype(np.int32)], 1)
    if inner is not None:
        cv2.fillPoly(m, [np.round(inner).astype(np.int32)], 0)
    px = img[m > 0]
    return np.median(px, axis=0).astype(np.float32) if len(px) else None


#: Inner-lip gap (ROI pixels) above which the photo's open mouth is filled in.
PHOTO_MOUTH_FILL_GAP = 1.5


def _close_photo_mouth(img: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The photo with its open mouth's interior (teeth, cavity) filled with its own lips.

    The warp closes an open-mouthed photo's lips by squeezing what lies between them into
    a seam, so a smiling photo showed a strip of its teeth between shut lips. Filled from
    the surrounding lips (OpenCV's Navier-Stokes inpainting) with a soft dark line where the lips
    meet, the shut mouth shows lips meeting lips; when the mouth opens, the interior
    painted over the parted lips covers the fill.
    """
    gap = _inner_gap(lm)
    if gap < PHOTO_MOUTH_FILL_GAP:
        return img
    ring = mouth_patch.smooth_ring(lm[INNER_LIP_RING])
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(ring).astype(np.int32)], 255)
    mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))  # the landmarks are whole pixels
    # Navier-Stokes, not Telea: Telea's fast marching at this radius left dotted lines of
    # teeth colour along the fill's edge, which a shut mouth then showed across its lips
    out = cv2.inpaint(img, mask, max(2.0, gap / 2), cv2.INPAINT_NS)
    mid = np.vstack([lm[60], 0.5 * (lm[UPPER_INNER] + lm[LOWER_INNER]), lm[64]])
    seam = np.zeros(img.shape[:2], np.uint8)
    cv2.polylines(seam, [np.round(mid * 8).astype(np.int32)], False, 255, 1, cv2.LINE_AA,
                  shift=3)
    line = cv2.GaussianBlur(seam.astype(np.float32) / 255.0, (0, 0), 0.7)
    line = line / max(float(line.max()), 1e-6) * 0.35 * (mask > 0)
    return np.clip(out * (1.0 - line[..., None]), 0, 255).astype(np.uint8)


def prepare(
    identity: Identity,
    image: np.ndarray | None = None,
    canon_to_image: np.ndarray | None = None,
    expression: bool = True,
    learned_mouth: bool = False,
    emotion_model=None,
) -> WarpState:
    """Build the warp state for an identity.

    By default the output space is the full-resolution photo (``image`` = the photo,
    ``canon_to_image`` = canonical -> photo). Pass the canonical crop and an identity
    transform to render 256x256 canonical crops instead (the TextureEngine contract).
    ``expression``: carry the learned expression texture onto this source (and take a
    smiling photo's smile out of it); off, the photo's pixels are warped as they are.
    ``emotion_model``: whose ratio images (:class:`engines.motion.emotion_model.EmotionModel`;
    default the shipped one).
    ``learned_mouth``: show the interior the learned model draws (experimental: it reads
    as a mouth on real lip shapes, not yet on this engine's wider openings) instead of
    the painted one.
    """
    if image is None:
        image, canon_to_image = identity.photo, identity.from_canonical
    assert canon_to_image is not None
    H, W = image.shape[:2]
    m = ROI_MARGIN * CANON_SIZE
    corners = np.array([[-m, -m], [CANON_SIZE + m, -m], [-m, CANON_SIZE + m],
                        [CANON_SIZE + m, CANON_SIZE + m]])
    c = apply_affine(canon_to_image, corners)
    x0, y0 = (int(max(0, np.floor(v))) for v in c.min(0))
    x1, y1 = int(min(W, np.ceil(c[:, 0].max()))), int(min(H, np.ceil(c[:, 1].max())))
    w, h = x1 - x0, y1 - y0
    canon_to_roi = canon_to_image.copy()
    canon_to_roi[:, 2] -= (x0, y0)
    roi_to_canon = invert_affine(canon_to_roi)
    roi_img = np.ascontiguousarray(image[y0:y1, x0:x1])

    lm_src = _separate_lips(apply_affine(canon_to_roi, identity.landmarks_canonical), 0.6)
    t = np.linspace(0.0, 1.0, ANCHORS_PER_SIDE)[:-1]
    ex, ey = w - 1.0, h - 1.0
    anchors = np.concatenate([
        np.c_[t * ex, np.zeros_like(t)], np.c_[np.full_like(t, ex), t * ey],
        np.c_[(1 - t) * ex, np.full_like(t, ey)], np.c_[np.zeros_like(t), (1 - t) * ey],
    ])
    iod = IOD * float(np.sqrt(abs(np.linalg.det(canon_to_roi[:, :2]))))
    fills = _fill_points(lm_src, anchors, iod)
    fill_weights = _fill_weights(lm_src, anchors, fills, iod)
    vertices = np.vstack([lm_src, fills, anchors])
    mesh = Delaunay(vertices)
    weights = barycentric_matrix(vertices, h, w, mesh)
    simplices = mesh.simplices
    lip_triangles = simplices[((simplices >= 48) & (simplices < 68)).any(1)]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)

    # Colours from the photo itself so the synthesized parts match its light and skin.
    lm_roi = apply_affine(canon_to_roi, identity.landmarks_canonical)
    lip = _polygon_median(roi_img, lm_roi[LIP_OUTER], lm_roi[INNER_LIP_RING])
    lip = lip if lip is not None else np.array([150.0, 80.0, 80.0], np.float32)
    lids = []
    for eye, brow in ((np.r_[36:42], np.r_[17:22]), (np.r_[42:48], np.r_[22:27])):
        top = lm_roi[eye][[1, 2]]  # upper-lid points
        band = np.vstack([top, (0.6 * top + 0.4 * lm_roi[brow][[3, 1]])])
        col = _polygon_median(roi_img, band[[0, 1, 3, 2]])
        lids.append(col if col is not None else lip)
    blur, grain = photo_softness(roi_img, lm_roi)
    eyes = eyeball.prepare_eyes(roi_img, lm_roi, _irises(identity, canon_to_roi))
    teeth = teeth_in_light(lip, [e.white_top for e in eyes if e.sclera_measured])
    if identity.expression[:2].sum() > 0.3:  # open mouth in the photo: its own teeth, if bright
        inner = _polygon_median(roi_img, lm_roi[INNER_LIP_RING])
        if inner is not None and inner.mean() > lip.mean():
            teeth = inner
    roi_img = _close_photo_mouth(roi_img, lm_roi)

    # Paste-back weight: 1 inside, smooth to 0 over the outer band where the warp is ~0.
    band = max(2.0, 0.05 * min(w, h))
    dx = np.minimum(xs, ex - xs) / band
    dy = np.minimum(ys, ey - ys) / band
    feather = np.clip(np.minimum(dx, dy), 0.0, 1.0)
    feather = (feather * feather * (3 - 2 * feather))[..., None].astype(np.float32)

    state = WarpState(
        image=roi_img,
        roi=(x0, y0, w, h),
        canon_to_roi=canon_to_roi,
        roi_to_canon=roi_to_canon,
        src_vertices=vertices.astype(np.float32),
        lip_triangles=lip_triangles.astype(np.int32),
        lip_orientation=_orientation(vertices.astype(np.float32)[lip_triangles]),
        weights=weights,
        grid=np.stack([xs, ys], axis=-1),
        neutral=identity.neutral.astype(np.float32),
        lip_colour=lip.astype(np.float32),
        lid_colours=np.asarray(lids, np.float32),
        teeth_colour=np.asarray(teeth, np.float32),
        feather=feather,
        fill_weights=fill_weights,
        **_field_grid(vertices, weights, mesh, h, w, 68 + len(fills)),
        solid=solid_box(feather),
        learned_mouth=learned_mouth,
        photo_blur=blur,
        photo_grain=grain,
        eyes=eyes,
    )
    if not expression:
        return state
    from engines.render import expression_texture

    maps = expression_texture.prepare(state, identity, emotion_model)
    return replace(state, image=maps.base, expression=maps)


def _irises(identity: Identity, canon_to_roi: np.ndarray) -> np.ndarray | None:
    """The photo's irises [2,3] (x, y, radius in ROI pixels, image-left eye first) from
    its dense mesh's iris points, or None without a mesh."""
    mesh = identity.mesh_photo
    if mesh is None or len(mesh) < 478:
        return None
    to_roi = canon_to_roi[:, :2] @ identity.to_canonical  # photo -> ROI
    to_roi[:, 2] += canon_to_roi[:, 2]
    scale = float(np.hypot(*to_roi[:, 0]))
    out = []
    for c in (468, 473):
        radius = float(np.linalg.norm(mesh[c + 1 : c + 5, :2] - mesh[c, :2], axis=1).mean())
        out.append([*apply_affine(to_roi, mesh[c, :2]), radius * scale])
    out = np.asarray(out)
    return out[np.argsort(out[:, 0])]  # image-left eye first, as dlib's 36-41


def photo_softness(img: np.ndarray, lm: np.ndarray) -> tuple[float, float]:
    """How soft and how grainy the photo is around its eyes and lips (landmarks ``lm`` in
    ``img``'s pixels): (Gaussian sigma in pixels, grain in grey levels).

    Softness from the Laplacian's energy, which falls as sigma^-3 on blurred edges: blurring
    by ``b`` more keeps the fraction q = (s^2 / (s^2 + b^2))^1.5 of it, so s follows from q.
    Grain: the robust spread of what a slight blur takes away (flat skin dominates the
    median)."""
    x0, y0 = np.floor(lm[36:68].min(0) - 0.1 * np.ptp(lm[36:68, 0])).astype(int)
    x1, y1 = np.ceil(lm[36:68].max(0) + 0.1 * np.ptp(lm[36:68, 0])).astype(int)
    h, w = img.shape[:2]
    box = img[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    if box.shape[0] < 16 or box.shape[1] < 16:
        return 0.8, 0.0
    g = cv2.cvtColor(box, cv2.COLOR_RGB2GRAY).astype(np.float32)
    b = 1.5
    e0 = float(np.square(cv2.Laplacian(g, cv2.CV_32F)[2:-2, 2:-2]).mean())
    e1 = float(np.square(cv2.Laplacian(cv2.GaussianBlur(g, (0, 0), b), cv2.CV_32F)
                         [2:-2, 2:-2]).mean())
    q = np.clip(e1 / max(e0, 1e-6), 1e-3, 0.95) ** (2.0 / 3.0)
    sigma = float(np.clip(b * np.sqrt(q / (1.0 - q)), 0.5, 3.0))
    hp = g - cv2.GaussianBlur(g, (0, 0), 1.0)
    grain = float(np.clip(1.4826 * np.median(np.abs(hp)), 0.0, 6.0))
    return sigma, grain


def _orientation(tri: np.ndarray) -> np.ndarray:
    """+-1 per triangle [T,3,2]: the sign of its signed area (0 if degenerate)."""
    return np.sign(np.linalg.det(np.concatenate([tri, np.ones((len(tri), 3, 1))], axis=2)))


#: Pixels around the lips' box in the photo whose field is made at full size.
MOUTH_MARGIN = 4


def _tps_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The thin-plate spline's radial basis r^2 log r between points a [N,2] and b [M,2]."""
    r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return 0.5 * r2 * np.log(np.maximum(r2, 1e-12))


def _fill_points(lm: np.ndarray, anchors: np.ndarray, iod: float) -> np.ndarray:
    """Fill vertices [F,2] (ROI pixels): a triangular lattice over the ROI, ``FILL_SPACING``
    apart, clear of the landmarks, the lips, the eyes and the border."""
    if FILL_SPACING <= 0:  # no fill: the landmarks' own mesh
        return np.zeros((0, 2))
    step = FILL_SPACING * iod
    lo, hi = anchors.min(0), anchors.max(0)
    rows = []
    for i, y in enumerate(np.arange(lo[1] + 0.5 * step, hi[1] - 0.4 * step,
                                    step * np.sqrt(3) / 2)):
        xs = np.arange(lo[0] + (0.5 + 0.5 * (i % 2)) * step, hi[0] - 0.4 * step, step)
        rows.append(np.c_[xs, np.full(len(xs), y)])
    pts = np.concatenate(rows)
    clear = FILL_CLEARANCE * iod
    keep = np.ones(len(pts), bool)
    for ring in (lm[48:60], lm[36:42], lm[42:48]):
        ring = ring.astype(np.float32)
        inside = np.array([cv2.pointPolygonTest(ring, (float(x), float(y)), True)
                           for x, y in pts])
        keep &= inside < -clear
    near = np.sqrt(((pts[:, None] - np.vstack([lm, anchors])[None]) ** 2).sum(-1)).min(1)
    keep &= near > max(clear, 0.45 * step)
    return pts[keep]


def _fill_weights(lm: np.ndarray, anchors: np.ndarray, fills: np.ndarray,
                  iod: float) -> np.ndarray:
    """[F,68] float32: the thin-plate spline through the landmarks' displacements (and the
    anchors' zero), read at the fill vertices, as a linear map of the 68 displacements."""
    ctrl = np.vstack([lm, anchors]) / iod
    n = len(ctrl)
    k = _tps_kernel(ctrl, ctrl) + FILL_SMOOTHING * np.eye(n)
    p = np.c_[np.ones(n), ctrl]
    system = np.block([[k, p], [p.T, np.zeros((3, 3))]])
    q = fills / iod
    basis = np.c_[_tps_kernel(q, ctrl), np.ones(len(q)), q]  # [F, n + 3]
    # displacement at q = basis @ solve(system, [d; 0]); only the landmarks' d can move
    weights = np.linalg.solve(system.T, basis.T).T[:, : len(lm)]
    # off the face the motion fades out within FILL_FADE: a spline alone carries a head
    # turn on into the hair and background, which should stay put
    hull = cv2.convexHull(lm.astype(np.float32))
    out = -np.array([cv2.pointPolygonTest(hull, (float(x), float(y)), True) for x, y in fills])
    t = np.clip(1.0 - np.maximum(out, 0.0) / (FILL_FADE * iod), 0.0, 1.0)
    return (weights * (t * t * (3 - 2 * t))[:, None]).astype(np.float32)


def vertex_displacement(state: WarpState, delta68: np.ndarray) -> np.ndarray:
    """Every vertex's displacement [V,2] for the landmarks' [68,2]: fills follow the
    spline, anchors stay."""
    delta = np.zeros_like(state.src_vertices)
    n = 68 + len(state.fill_weights)
    delta[:68] = delta68
    delta[68:n] = state.fill_weights @ delta[:68]
    return delta


def _field_grid(vertices: np.ndarray, weights: sparse.csr_matrix, mesh: Delaunay, h: int,
                w: int, n_moving: int) -> dict:
    """``field_weights``, ``field_grid``, ``mouth_box``, ``mouth_weights`` of a WarpState:
    the columns of the first ``n_moving`` vertices (landmarks and fills; anchors stay)."""
    hh, hw = (h + 1) // 2, (w + 1) // 2
    ys, xs = np.mgrid[0:hh, 0:hw].astype(np.float32)
    # the points cv2.resize samples (2j + 0.5 when the size is even)
    grid = np.stack([(xs + 0.5) * w / hw - 0.5, (ys + 0.5) * h / hh - 0.5], axis=-1)
    moving = barycentric_weights(vertices, grid.reshape(-1, 2), mesh)[:, :n_moving].tocsr()
    moving.eliminate_zeros()
    lips = vertices[48:68]
    x0, y0 = np.maximum(np.floor(lips.min(0)).astype(int) - MOUTH_MARGIN, 0)
    x1, y1 = np.minimum(np.ceil(lips.max(0)).astype(int) + MOUTH_MARGIN + 1, (w, h))
    rows = (np.arange(y0, y1)[:, None] * w + np.arange(x0, x1)[None, :]).ravel()
    mouth = weights[rows][:, :n_moving].tocsr()
    mouth.eliminate_zeros()
    return {"field_weights": moving, "field_grid": grid,
            "mouth_box": (int(x0), int(y0), int(x1), int(y1)), "mouth_weights": mouth}


def displacement(state: WarpState, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where the mesh's vertices go [V,2] in ROI pixels, the forward displacement field at
    every ROI pixel [h,w,2]): made on the half-size grid and enlarged, and pixel by pixel
    over the lips."""
    dst = apply_affine(state.canon_to_roi, landmarks).astype(np.float32)
    delta = vertex_displacement(state, dst - state.src_vertices[:68])  # the anchors' is 0
    moving = delta[: state.field_weights.shape[1]]
    half = (state.field_weights @ moving).reshape(state.field_grid.shape)
    h, w = state.shape
    field = cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = state.mouth_box
    field[y0:y1, x0:x1] = (state.mouth_weights @ moving).reshape(y1 - y0, x1 - x0, 2)
    return state.src_vertices + delta, field


def invert_field(state: WarpState, field: np.ndarray) -> np.ndarray:
    """The backward map [h,w,2] of a forward field [h,w,2]: one fixed-point step (the
    displacement read where the first guess landed)."""
    refined = cv2.remap(field, state.grid - field, None, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return state.grid - refined


def backward_map(state: WarpState, landmarks: np.ndarray) -> np.ndarray:
    """Backward map [h,w,2] float32 (output pixel -> source pixel) for canonical landmarks."""
    dst, field = displacement(state, landmarks)
    out = invert_field(state, field)
    _invert_lips(state, dst, out)
    return out


#: A lip triangle squeezed under this (a photo's open mouth shut) is left to the fixed
#: point: drawn as a sliver, its exact map spreads each of its pixels over its whole source,
#: and along the sliver it dotted the colour of the seam drawn where the photo's lips meet.
SLIVER_SQUEEZE = 0.15


def _invert_lips(state: WarpState, dst: np.ndarray, out: np.ndarray) -> None:
    """Exact backward map over the triangles around the lips (in place).

    The fixed-point inverse converges only where the warp stretches less than 2x; lips
    parting from a closed photo stretch far more, and there it left pixels up to ~20 px
    off (seen as light cracks across the lips). Each such triangle's own affine map, from
    where it is drawn back to the photo, is exact: each triangle's map coefficients are
    painted where it is drawn and every covered pixel evaluates its own."""
    tris = state.lip_triangles
    d = dst[tris]  # [T,3,2] where each triangle is drawn
    # affine dst -> src per triangle: [x y 1] @ m = src
    a = np.concatenate([d, np.ones((len(tris), 3, 1), d.dtype)], axis=2)  # [T,3,3]
    det = np.linalg.det(a)
    # a triangle folded over (pressed lips cross the photo's parted inner lips) overlaps its
    # neighbours with a map that belongs nowhere: it painted dotted lines below the lips
    ok = (np.abs(det) > 1e-6) & (np.sign(det) == state.lip_orientation)
    m = np.zeros((len(tris), 3, 2), np.float64)
    m[ok] = np.linalg.solve(a[ok], state.src_vertices[tris][ok])
    # only where the warp stretches over 1.15x or squeezes under 0.75x (the fixed point
    # fails from ~2x, and its first guess may land in a neighbouring stretched triangle)
    sv = np.linalg.svd(m[:, :2], compute_uv=False)  # the inverse's; the warp's are 1/sv
    ok &= (sv[:, 1] < 1 / 1.15) | (sv[:, 0] > 1 / 0.75)
    ok &= sv[:, 0] < 1 / SLIVER_SQUEEZE
    if not ok.any():
        return
    d, m = d[ok], m[ok]
    h, w = state.shape
    lo = np.maximum(np.floor(d.reshape(-1, 2).min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(d.reshape(-1, 2).max(0)).astype(int) + 2, (w, h))
    if (hi <= lo).any():
        return
    # paint each triangle's coefficients where it is drawn (x map, y map, covered)
    bh, bw = hi[1] - lo[1], hi[0] - lo[0]
    cx = np.zeros((bh, bw, 4), np.float32)
    cy = np.zeros((bh, bw, 3), np.float32)
    local = np.round((d - lo) * 16).astype(np.int32)
    for tri, (mx, my) in zip(local, m.transpose(0, 2, 1).tolist(), strict=True):
        cv2.fillConvexPoly(cx, tri, (*mx, 1.0), cv2.LINE_8, 4)
        cv2.fillConvexPoly(cy, tri, my, cv2.LINE_8, 4)
    grid = state.grid[lo[1]:hi[1], lo[0]:hi[0]]
    xs, ys = grid[..., 0], grid[..., 1]
    box = out[lo[1]:hi[1], lo[0]:hi[0]]
    inside = cx[..., 3] > 0
    box[..., 0] = np.where(inside, xs * cx[..., 0] + ys * cx[..., 1] + cx[..., 2], box[..., 0])
    box[..., 1] = np.where(inside, xs * cy[..., 0] + ys * cy[..., 1] + cy[..., 2], box[..., 1])


def render_roi(state: WarpState, landmarks: np.ndarray,
               source: np.ndarray | None = None) -> np.ndarray:
    """One output ROI [h,w,3] uint8 for canonical landmarks [68,2].

    ``source``: the pixels to warp (default ``state.image``); an
    :class:`engines.render.expression_texture.ExpressionTexture` gives the emotion's.
    """
    out = cv2.remap(
        state.image if source is None else source, backward_map(state, landmarks), None,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    dst = apply_affine(state.canon_to_roi, landmarks)
    if state.learned_mouth:
        mouth_model.paint(out, landmarks, dst, state.neutral, state.lip_colour,
                          state.roi_to_canon, state.teeth_colour)
    else:
        _paint_mouth(state, out, landmarks, dst)
    eyeball.paint_eyes(state.eyes, out, dst, state.src_vertices[:68])
    _shade_lids(state, out, landmarks, dst)
    return out


@lru_cache(maxsize=1)
def _grain_texture() -> np.ndarray:
    """A fixed field of fine noise [256,256] float32 (unit spread): the painted mouth's
    grain, sampled where the teeth are so it stays put on them from frame to frame."""
    n = np.random.default_rng(7).standard_normal((256, 256)).astype(np.float32)
    n = cv2.GaussianBlur(np.tile(n, (3, 3)), (0, 0), 0.6)[256:512, 256:512]
    return n / n.std()


def _teeth_phase(ax: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Across a row of teeth with gaps at ``bounds`` (distance from the midline, sorted,
    the first 0): (where each pixel sits in its tooth, 0..1 edge to edge; its distance to
    the nearest gap), both in the units of ``bounds``."""
    k = np.clip(np.searchsorted(bounds, ax), 1, len(bounds) - 1)
    lo, hi = bounds[k - 1], bounds[k]
    phase = np.clip((ax - lo) / (hi - lo), 0.0, 1.0)
    return phase, np.minimum(np.abs(ax - lo), np.abs(hi - ax))


def _paint_mouth(state: WarpState, out: np.ndarray, lm: np.ndarray, dst: np.ndarray) -> None:
    """Paint cavity, tongue and teeth inside the parted inner lips (in place).

    The teeth are rounded, each lit brightest down its middle and darker into its gaps,
    their biting edges translucent; the side teeth fall into the cavity's warm shadow; the
    lower teeth sit lower in the shade. All of it is then made as soft as the photo itself
    and given its grain, so it is no sharper and no cleaner than the lips around it."""
    ring = mouth_patch.smooth_ring(dst[INNER_LIP_RING])
    gap = _inner_gap(lm)
    if gap < 0.01 * IOD:
        return
    h, w = state.shape
    pad = int(np.ceil(3 * state.photo_blur)) + 2
    lo = np.maximum(np.floor(ring.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(ring.max(0)).astype(int) + pad + 1, (w, h))
    if (hi <= lo).any():
        return
    bh, bw = hi[1] - lo[1], hi[0] - lo[0]
    alpha = mouth_patch.coverage((bh, bw), ring - lo)
    if alpha.max() <= 0:
        return
    # Canonical coordinates of the box's pixels: the teeth live in face space.
    ys, xs = np.mgrid[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
    a = state.roi_to_canon
    u = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    v = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]

    neutral = state.neutral
    head = lm[27:31].mean(0) - neutral[27:31].mean(0)  # skull motion (idle head movement)
    cx = float(neutral[[60, 64], 0].mean() + head[0])
    half = float(np.ptp(neutral[[60, 64], 0]) / 2 + 1e-3)
    r = (u - cx) / half  # -1..1 across the mouth
    # Upper incisors hang from the skull just below the relaxed upper lip line; the arch
    # makes the edge rise toward the corners. Lower teeth ride on the jaw.
    upper_lip_rest = float(neutral[UPPER_INNER, 1].mean() + head[1])
    edge_u = upper_lip_rest + TEETH_EDGE_BELOW_LIP * IOD - 0.05 * IOD * r**2
    jaw = float(lm[8, 1] - neutral[8, 1] - head[1])
    edge_l = edge_u - 0.02 * IOD + 0.85 * max(jaw, 0.0) + 0.06 * IOD * r**2

    lip = state.lip_colour
    depth = np.clip(1.0 - np.abs(r), 0.0, 1.0)[..., None]
    # The cavity is darkest at the back, just under the upper teeth, lighter toward the
    # floor of the mouth; the tongue lies on that floor, its back showing over the lower
    # lip (or the lower teeth) when the jaw drops.
    floor = float(lm[LOWER_INNER, 1].mean())
    down = np.clip((v - edge_u) / np.maximum(floor - edge_u, 1e-3), 0.0, 1.0)[..., None]
    cavity = lip * CAVITY_OVER_LIP * (CAV_BASE + 0.35 * depth + CAV_DOWN * down)
    tongue_c = lip * TONGUE_OVER_LIP
    lower_teeth = upper_lip_rest + (TEETH_EDGE_BELOW_LIP - 0.02) * IOD + 0.85 * max(jaw, 0.0)
    edge_mid = upper_lip_rest + TEETH_EDGE_BELOW_LIP * IOD  # edge_u at the midline
    tongue_top = (min(floor, lower_teeth) - 0.03 * IOD
                  - TONGUE_RISE * max(floor - edge_mid - 0.1 * IOD, 0.0))
    tongue = np.clip(1.0 - ((u - cx) / (0.8 * half)) ** 2
                     - ((v - (tongue_top + 0.05 * IOD)) / (0.09 * IOD)) ** 2, 0.0, 1.0)
    tongue = (np.sqrt(tongue) * TONGUE_ALPHA)[..., None]
    colour = cavity * (1 - tongue) + tongue_c * tongue

    # The side teeth sit deeper in the mouth's shadow, darkest toward the corners of the
    # opening as it is now (a smile's dark corners).
    corners = dst[[60, 64]]
    mid_x = float(corners[:, 0].mean())
    half_now = max(float(np.ptp(corners[:, 0])) / 2, 1.0)
    side = np.clip((np.abs(xs - mid_x) / half_now - SIDE_SHADE_FROM) / (1 - SIDE_SHADE_FROM),
                   0.0, 1.0)
    shade = (SIDE_SHADE * side * side * (3 - 2 * side))[..., None]  # how far into the shadow
    ax = np.abs(u - cx) / IOD
    # Each tooth is rounded: brightest down its middle, darker into its gaps, and the gaps
    # show most near the biting edge, where the teeth part (not as an even comb of lines).
    phase, dist = _teeth_phase(ax, TEETH_BOUNDS)
    near_edge = np.clip(1.0 - (edge_u - v) / (0.06 * IOD), GAP_ABOVE_EDGE, 1.0)
    fade = 1.0 - 0.5 * np.clip(np.abs(r), 0, 1)
    round_u = (1.0 - TOOTH_ROUND * (2 * phase - 1) ** 2
               - 0.22 * fade * near_edge * np.exp(-((dist / 0.007) ** 2)))[..., None]
    # a narrow opening keeps the teeth in the lips' shadow (real teeth, by the gap); the
    # side teeth darken toward the cavity's warm dark, not toward grey
    mean_gap = float((lm[LOWER_INNER, 1] - lm[UPPER_INNER, 1]).mean()) / IOD
    light = float(np.interp(mean_gap, TEETH_GAP, TEETH_LIGHT)) / TEETH_LIGHT_OPEN
    # (dimmed toward the cavity's warm dark, to the measured luminance: scaled down, a warm
    # white turns grey)
    warm_dark = lip * CAVITY_OVER_LIP
    lt, lw = float(state.teeth_colour.mean()), float(warm_dark.mean())
    dim = float(np.clip((min(light, 1.0) * lt - lw) / max(lt - lw, 1.0), 0.0, 1.0))
    # rounded lips (oo, w) stand forward of the teeth, which fall back into their shade:
    # real rounded openings show mostly dark with the teeth's edges, not a grey row
    rest_w = max(float(neutral[64, 0] - neutral[60, 0]), 1e-3)
    narrow = float(np.clip((ROUND_FROM - float(lm[64, 0] - lm[60, 0]) / rest_w)
                           / (ROUND_FROM - ROUND_FULL), 0.0, 1.0))
    dim *= 1.0 - ROUND_SHADE * narrow
    # a wide opening lets more light on the teeth than TEETH_OVER_LIP's own (the same
    # measurement, up to 1.12x at 0.24 IOD): brighter, below white
    lit = state.teeth_colour * min(max(light, 1.0), 250.0 / max(float(state.teeth_colour.max()),
                                                               1.0))
    base = (lit * dim + warm_dark * (1 - dim)) * (1 - shade) + warm_dark * shade
    # the biting edge is thin enamel: a little darker where the cavity shows through it
    edge_band = np.clip(1.0 - (edge_u - v) / (0.02 * IOD), 0.0, 1.0)[..., None]
    # and the lips' shade falls on the teeth just under them, where the upper lip is now.
    # Real teeth are darker still under the lip (a band's mean is ~0.75 of their highlight,
    # benchmarks/mouth_profile.py), but that much shade blurred the lip's edge for dlib
    # (the built-in sentence's widest opening read 0.148 instead of 0.171), so it stays light.
    lip_now = float(lm[UPPER_INNER, 1].mean())
    lip_shade = np.clip(1.0 - (v - lip_now) / (LIP_SHADE_DEPTH * IOD), 0.0, 1.0)[..., None]
    teeth = (base * round_u * (1.0 - LIP_SHADE * lip_shade)
             * (1.0 - 0.14 * edge_band))
    soft = 0.012 * IOD
    # each tooth's corners are rounded: the incisal edge rises a little at every gap
    scallop = 0.012 * IOD * np.exp(-((dist / 0.018) ** 2))
    # Lips barely apart (a pressed /m/, a relaxed seam) show a dark line, not teeth: real
    # openings under ~0.03 IOD are no brighter than the lips themselves (teeth_by_gap).
    show = float(np.clip((mean_gap - 0.015) / 0.025, 0.0, 1.0))
    upper = show * np.clip((edge_u - scallop - v) / soft + 0.5, 0.0, 1.0)[..., None]
    # above the crowns (a broad smile lifts the lip that far), the gum
    gum_line = edge_u - CROWN_HEIGHT * IOD + 0.5 * scallop
    gums = upper * np.clip((gum_line - v) / soft + 0.5, 0.0, 1.0)[..., None]
    # the lower teeth: narrower, in the upper teeth's and the lips' shade
    phase_l, dist_l = _teeth_phase(ax, LOWER_TEETH_BOUNDS)
    round_l = (1.0 - 0.06 * (2 * phase_l - 1) ** 2
               - 0.08 * fade * np.exp(-((dist_l / 0.006) ** 2)))[..., None]
    scallop_l = 0.008 * IOD * np.exp(-((dist_l / 0.012) ** 2))
    lower = show * 0.85 * np.clip((v - edge_l - scallop_l) / soft + 0.5, 0.0, 1.0)[..., None]
    # below the lower crowns, when the lip drops that far, the lower gum and the lip's
    # wet inside
    lower_gum = lower * np.clip((v - edge_l - 0.8 * CROWN_HEIGHT * IOD) / (2 * soft) + 0.5,
                                0.0, 1.0)[..., None]
    # the lower teeth stand behind the upper ones (the overbite): drawn first
    colour = colour * (1 - lower) + base * round_l * LOWER_TEETH_TINT * lower
    colour = colour * (1 - lower_gum) + lip * 0.72 * lower_gum
    colour = colour * (1 - upper) + teeth * upper
    colour = colour * (1 - gums) + lip * 0.8 * gums
    # Lips shadow the interior near their edge.
    inner_shadow = cv2.GaussianBlur(alpha, (0, 0), max(0.6, 0.02 * IOD * _scale(state)))
    colour *= (0.68 + 0.32 * inner_shadow)[..., None]
    # As soft as the photo, with its grain (fixed on the face: it does not crawl).
    if state.photo_blur > 0.3:
        colour = cv2.GaussianBlur(colour, (0, 0), state.photo_blur)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6 * state.photo_blur)
    if state.photo_grain > 0.2:
        g = _grain_texture()
        gy = (np.arange(lo[1], hi[1]) - int(round(upper_lip_rest * _scale(state)))) % 256
        gx = (np.arange(lo[0], hi[0]) - int(round(cx * _scale(state)))) % 256
        colour += (state.photo_grain * g[np.ix_(gy, gx)])[..., None]

    box = out[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
    al = alpha[..., None]
    out[lo[1]:hi[1], lo[0]:hi[0]] = np.clip(box * (1 - al) + colour * al, 0, 255).astype(np.uint8)


def _scale(state: WarpState) -> float:
    return float(np.hypot(*state.canon_to_roi[:, 0]))


def _shade_lids(state: WarpState, out: np.ndarray, lm: np.ndarray, dst: np.ndarray) -> None:
    """Cover closing eyes with eyelid skin (in place), in proportion to the closure."""
    neutral = state.neutral
    for k, eye in enumerate(eyeball.EYE_RINGS):
        up, low = eye[[1, 2]], eye[[5, 4]]
        rest = float((neutral[low, 1] - neutral[up, 1]).mean())
        now = float((lm[low, 1] - lm[up, 1]).mean())
        closure = 1.0 - now / max(rest, 1e-3)
        if closure < 0.3:
            continue
        poly = dst[eye]
        lo = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
        hi = np.minimum(np.ceil(poly.max(0)).astype(int) + 3, (state.shape[1], state.shape[0]))
        if (hi <= lo).any():
            continue
        alpha = mouth_patch.coverage((hi[1] - lo[1], hi[0] - lo[0]), poly - lo)
        strength = np.clip((closure - 0.3) / 0.5, 0.0, 1.0)
        lid = state.lid_colours[k] * 0.93  # the lid crease is a little darker than the skin
        box = out[lo[1]:hi[1], lo[0]:hi[0]].astype(np.float32)
        al = (alpha * strength)[..., None]
        out[lo[1]:hi[1], lo[0]:hi[0]] = np.clip(box * (1 - al) + lid * al, 0, 255).astype(
            np.uint8)


class WarpTextureEngine:
    """The TextureEngine contract over the mesh warp: canonical 256x256 crops.

    ``prepare`` builds the warp in canonical space; ``render`` takes landmarks [B,68,2]
    (canonical) and returns frames [B,256,256,3] uint8. The emotion's geometry is in the
    landmarks; its skin (the expression texture) comes from the emotion argument.
    """

    def prepare(self, identity: Identity) -> WarpState:
        return prepare(identity, image=identity.crop, canon_to_image=np.eye(2, 3))

    def render(self, state: WarpState, landmarks: np.ndarray, emotion=None) -> np.ndarray:
        """``emotion``: blend vectors [B,7] (or one [7]) for the expression texture."""
        from engines.render.expression_texture import ExpressionTexture

        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 68, 2)
        out = np.empty((len(landmarks), CANON_SIZE, CANON_SIZE, 3), np.uint8)
        tex = ExpressionTexture(state.expression)
        emo = None if emotion is None else np.asarray(emotion, np.float32).reshape(-1, 7)
        for i, lm in enumerate(landmarks):  # batch of whole frames, not of pixels
            src = None if emo is None else tex.source(emo[min(i, len(emo) - 1)])
            out[i] = render_roi(state, lm, src)
        return out
