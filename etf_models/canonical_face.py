"""The canonical face frame, the 68-point landmark layout, its graph and its regions.

Every engine talks about landmarks in one canonical space: a 256x256 crop in which the two
eye centres sit at fixed positions (a similarity transform of the photo). Distances in the
motion models are expressed in units of the canonical inter-ocular distance ``IOD`` so that
they mean the same on every face.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import Delaunay

CANON_SIZE = 256
#: Eye centres in the canonical crop (x, y). Framing leaves room above the brows for
#: raised eyebrows and below the chin for a dropped jaw.
CANON_LEFT_EYE = (96.0, 108.0)  # the subject's right eye, image left
CANON_RIGHT_EYE = (160.0, 108.0)
IOD = CANON_RIGHT_EYE[0] - CANON_LEFT_EYE[0]  # canonical inter-ocular distance in pixels

# iBUG 68-point layout (dlib's order).
JAW = np.arange(0, 17)
BROW_R = np.arange(17, 22)  # subject's right brow (image left)
BROW_L = np.arange(22, 27)
NOSE = np.arange(27, 36)
EYE_R = np.arange(36, 42)
EYE_L = np.arange(42, 48)
LIP_OUTER = np.arange(48, 60)
LIP_INNER = np.arange(60, 68)

#: The paper's K=8 regions used for hierarchical pooling and for region-wise checks.
REGIONS: dict[str, np.ndarray] = {
    "jaw": JAW,
    "brow_right": BROW_R,
    "brow_left": BROW_L,
    "nose": NOSE,
    "eye_right": EYE_R,
    "eye_left": EYE_L,
    "lip_outer": LIP_OUTER,
    "lip_inner": LIP_INNER,
}

# Named points used by the motion models.
MOUTH_CORNERS = np.array([48, 54])
INNER_CORNERS = np.array([60, 64])
UPPER_INNER = np.array([61, 62, 63])
LOWER_INNER = np.array([67, 66, 65])  # paired with UPPER_INNER column by column
UPPER_OUTER = np.array([49, 50, 51, 52, 53])
LOWER_OUTER = np.array([59, 58, 57, 56, 55])
UPPER_LIDS = np.array([37, 38, 43, 44])
LOWER_LIDS = np.array([41, 40, 47, 46])  # paired with UPPER_LIDS
#: Inner-lip ring in drawing order (a closed polygon).
INNER_LIP_RING = np.array([60, 61, 62, 63, 64, 65, 66, 67])
EYE_R_RING = EYE_R
#: Each landmark's left-right partner (a point on the midline is its own): the face seen in
#: a mirror has landmark ``MIRROR_68[i]`` where the face has landmark ``i``.
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)
EYE_L_RING = EYE_L


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each eye's six points: (image-left eye, image-right eye), each [2]."""
    return landmarks[EYE_R].mean(axis=0), landmarks[EYE_L].mean(axis=0)


def similarity_to_canonical(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) mapping photo -> canonical.

    Fixed by the two eye centres, which are the most stable points under expression and
    speech: the mouth and jaw must stay free to move inside the canonical frame.
    """
    src_l, src_r = eye_centres(landmarks)
    dst_l, dst_r = np.asarray(CANON_LEFT_EYE), np.asarray(CANON_RIGHT_EYE)
    sv, dv = src_r - src_l, dst_r - dst_l
    # Complex-number form of a similarity: z -> a*z + b.
    s = complex(*sv)
    d = complex(*dv)
    if abs(s) < 1e-6:
        raise ValueError("degenerate landmarks: the eyes coincide")
    a = d / s
    b = complex(*dst_l) - a * complex(*src_l)
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine map."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine map to points [..., 2]."""
    return points @ m[:, :2].T + m[:, 2]


def delaunay_triangles(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles [T,3] (vertex indices) of a point set [N,2]."""
    return Delaunay(points).simplices.astype(np.int32)


def barycentric_matrix(vertices: np.ndarray, h: int, w: int,
                       tri: Delaunay | None = None) -> sparse.csr_matrix:
    """Sparse [h*w, V] barycentric weights of each pixel of an h x w grid in the Delaunay
    mesh of ``vertices`` [V,2] (``tri``, if the caller already has it): ``B @ values``
    interpolates per-vertex values (a displacement, a position) piecewise-linearly over
    every pixel (a piecewise-affine warp)."""
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    return barycentric_weights(vertices, pts, tri)


def barycentric_weights(vertices: np.ndarray, pts: np.ndarray,
                        tri: Delaunay | None = None) -> sparse.csr_matrix:
    """Sparse [N, V] barycentric weights of points ``pts`` [N,2] in the Delaunay mesh of
    ``vertices`` (points outside it take the nearest triangle's)."""
    tri = Delaunay(vertices) if tri is None else tri
    pts = np.asarray(pts, np.float64)
    simplex = tri.find_simplex(pts)
    outside = simplex < 0
    if outside.any():  # numerically on the hull's edge: snap to the nearest triangle
        simplex[outside] = tri.find_simplex(
            np.clip(pts[outside], vertices.min(0) + 1e-3, vertices.max(0) - 1e-3)
        )
        simplex[simplex < 0] = 0
    trans = tri.transform[simplex]  # [N, 3, 2]
    b = np.einsum("nij,nj->ni", trans[:, :2], pts - trans[:, 2])
    bary = np.c_[b, 1.0 - b.sum(axis=1)]
    rows = np.repeat(np.arange(len(pts)), 3)
    cols = tri.simplices[simplex].ravel()
    return sparse.csr_matrix(
        (bary.ravel().astype(np.float32), (rows, cols)), shape=(len(pts), len(vertices))
    )


def triangle_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges [E,2] (i < j) of a triangle list."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0).astype(np.int32)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap divided by the outer-eye-corner distance, for [...,68,2] landmarks.

    The scale-free mouth-opening measure used by the lip-sync evaluation and tests.
    """
    gap = np.linalg.norm(landmarks[..., LOWER_INNER, :] - landmarks[..., UPPER_INNER, :], axis=-1)
    eye = np.linalg.norm(landmarks[..., 45, :] - landmarks[..., 36, :], axis=-1)
    return gap.mean(axis=-1) / eye
