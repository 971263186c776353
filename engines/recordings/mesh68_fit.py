"""``etf fit-mesh68``: the fixed map from the 478-point mesh to dlib's 68 points, measured.

The paper's networks and the motion fields speak dlib's 68 points; the dense mesh has no
68-point subset that means the same thing (dlib's jaw follows the silhouette, its inner
lips sit where the lips meet, its brows along the brows' upper-middle). So each of the 68
is fitted as a weighted sum of a few mesh vertices (weights summing to 1, so the map moves
with the face), by least squares over real frames where both ran: frames of real people
talking (``../shared/data/talking``) and posing emotions (``../shared/data/emotion``),
similarity-aligned on the eyes. Whole people are held out and the error on them reported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from engines.face.enrollment import detect_faces, detect_landmarks
from engines.face.mesh import FaceMesh
from etf_models.datasets import person_of

log = logging.getLogger(__name__)

#: mesh vertices considered per dlib point (nearest on the mean face)
CANDIDATES = 6
#: ridge toward the nearest vertex, per unit of squared inter-ocular distance and frame
RIDGE = 1e-3


def align_on_eyes(mesh: np.ndarray) -> tuple[np.ndarray, float]:
    """Similarity putting the mesh's eye centres at (-0.5, 0) and (0.5, 0): returns the
    3x2 matrix for [x y 1] rows and the inter-ocular distance in pixels."""
    r = mesh[[33, 133], :2].mean(0)
    left = mesh[[362, 263], :2].mean(0)
    d = left - r
    iod = float(np.hypot(*d))
    c, s = d / iod
    rot = np.array([[c, -s], [s, c]]) / iod  # rotates d onto +x and scales to 1
    centre = (r + left) / 2
    m = np.zeros((3, 2))
    m[:2] = rot
    m[2] = -centre @ rot
    return m, iod


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts[:, :2] @ m[:2] + m[2]


def collect(videos: list[Path], every: int = 5, max_frames: int = 120) -> dict[str, list]:
    """Triples (mesh [468,2], dlib [68,2], mesh depth [468]) aligned, per person, from every
    ``every``-th frame."""
    import av

    fm = FaceMesh()
    pairs: dict[str, list] = {}
    for path in videos:
        n = 0
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if n >= max_frames:
                    break
                if i % every:
                    continue
                img = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
                faces = detect_faces(img)
                if not faces or faces[0][1] < 0.3:
                    continue
                lm = detect_landmarks(img, faces[0][0])
                mesh = fm(img, iris=False)
                if mesh is None:
                    continue
                m, iod = align_on_eyes(mesh)
                a_mesh, a_lm = apply(m, mesh), apply(m, lm)
                # both found the same face: dlib's nose tip within 0.3 IOD of the mesh's
                if np.hypot(*(a_lm[30] - a_mesh[4])) > 0.3 or iod < 30:
                    continue
                # depth in inter-ocular distances (the mesh's z is at the x scale)
                pairs.setdefault(person_of(path.stem), []).append(
                    (a_mesh, a_lm, mesh[:, 2] / iod))
                n += 1
        log.info("%s: %d frames", path.name, n)
    return pairs


def fit(pairs: list[tuple[np.ndarray, np.ndarray]], candidates: int = CANDIDATES
        ) -> tuple[np.ndarray, np.ndarray]:
    """Per dlib point: indices [68,K] of mesh vertices and weights [68,K] (sum 1)."""
    meshes = np.stack([p[0] for p in pairs])  # [N,468,2]
    lms = np.stack([p[1] for p in pairs])  # [N,68,2]
    mean_mesh, mean_lm = meshes.mean(0), lms.mean(0)
    idx = np.zeros((68, candidates), int)
    wts = np.zeros((68, candidates))
    for k in range(68):
        near = np.argsort(np.hypot(*(mean_mesh - mean_lm[k]).T))[:candidates]
        # d = m0 + sum_{j>0} w_j (m_j - m0): the sum-to-one constraint substituted
        base = meshes[:, near[0]]  # [N,2]
        a = (meshes[:, near[1:]] - base[:, None]).transpose(0, 2, 1).reshape(-1,
                                                                            candidates - 1)
        b = (lms[:, k] - base).reshape(-1)
        reg = RIDGE * len(pairs) * np.eye(candidates - 1)
        w = np.linalg.solve(a.T @ a + reg, a.T @ b)
        idx[k] = near
        wts[k] = np.concatenate([[1 - w.sum()], w])
    return idx, wts


def errors(pairs, idx, wts) -> np.ndarray:
    """Per pair and point, the mapped-vs-dlib distance in inter-ocular distances."""
    meshes = np.stack([p[0] for p in pairs])
    lms = np.stack([p[1] for p in pairs])
    mapped = (meshes[:, idx] * wts[None, :, :, None]).sum(2)
    return np.hypot(*(mapped - lms).transpose(2, 0, 1))


REGIONS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
           "eyes": range(36, 48), "outer lips": range(48, 60), "inner lips": range(60, 68)}


def report(err: np.ndarray) -> dict:
    return {name: round(float(np.median(err[:, list(r)])), 4) for name, r in REGIONS.items()
            } | {"all": round(float(np.median(err)), 4),
                 "p90": round(float(np.percentile(err, 90)), 4)}


def run(talking: Path, emotion: Path, output: Path, hold_out: list[str]) -> dict:
    videos = sorted(p for d in (talking, emotion) if d.is_dir() for p in d.iterdir()
                    if p.suffix in (".mp4", ".mpg"))
    if not videos:
        raise SystemExit(f"no clips in {talking} or {emotion}")
    pairs = collect(videos)
    train = [p for who, ps in pairs.items() if who not in hold_out for p in ps]
    test = [p for who, ps in pairs.items() if who in hold_out for p in ps]
    idx, wts = fit(train)
    result = {
        "about": "dlib 68 points as weighted sums of MediaPipe face-mesh vertices "
                 "(engines/face/mesh68.py); fitted by etf fit-mesh68",
        "sources": "frames of ../shared/data/talking and ../shared/data/emotion (MEAD), "
                   "dlib 68 points and the mesh on the same frames; no image kept",
        "n_train_frames": len(train), "n_people": len(pairs),
        "held_out": sorted(hold_out), "n_heldout_frames": len(test),
        "train_error_iod": report(errors(train, idx, wts)),
        "heldout_error_iod": report(errors(test, idx, wts)) if test else None,
        "indices": idx.tolist(),
        "weights": np.round(wts, 5).tolist(),
    }
    if test:  # the shipped map is then refitted on everyone
        idx, wts = fit(train + test)
        result["indices"], result["weights"] = idx.tolist(), np.round(wts, 5).tolist()
    # a typical face's depth at the 68 points (IOD, relative to the eye corners; smaller
    # is nearer the camera): what a photo enrolled without the mesh is given
    z68 = np.stack([(p[2][idx] * wts).sum(1) for p in train + test])
    z68 -= z68[:, [36, 39, 42, 45]].mean(1, keepdims=True)
    result["depth_68_iod"] = np.round(np.median(z68, 0), 4).tolist()
    output.write_text(json.dumps(result, indent=1) + "\n")
    return result
