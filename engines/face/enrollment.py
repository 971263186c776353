"""Identity enrollment: one photo -> an :class:`~engines.face.identity.Identity`.

Face detection by dlib's HOG detector and by the dense mesh's (:mod:`engines.face.mesh`:
BlazeFace finds tight crops and turned faces that HOG scores under its floor); the mesh
[478,3] is kept with the identity; the 68 points are dlib's shape predictor's (shipped by
``face-recognition-models``) where HOG found the face, else the mesh's through the fixed
map of :mod:`engines.face.mesh68`. Without the mesh models installed, dlib alone. Then
similarity alignment to the canonical crop, and
neutralisation: a photo that smiles, frowns or has its mouth open gets its landmarks moved
back to a neutral face through the same motion fields that animate it later.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from engines.face.identity import Identity
from engines.motion.face_motion import N_PARAMS, P, build_fields
from etf_models.canonical_face import (
    IOD,
    LOWER_INNER,
    UPPER_INNER,
    apply_affine,
    delaunay_triangles,
    similarity_to_canonical,
)

log = logging.getLogger(__name__)

#: Largest photo side kept; larger photos are downscaled (the face is animated at this size).
MAX_SIDE = 2048
#: Photos beyond this many pixels per side are refused before decoding fully.
MAX_DECODE_SIDE = 12000
MIN_FACE_PX = 64
#: HOG detections below this score are texture false positives (badges, patterns).
MIN_SCORE = 0.3
#: BlazeFace detections below this probability are not taken as faces.
MESH_MIN_SCORE = 0.6


@dataclass(frozen=True)
class FoundFace:
    """A face in a photo: its box, 68 points [68,2] and, from the mesh, [478,3] or None."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    mesh: np.ndarray | None
    score: float

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


class EnrollmentError(ValueError):
    """A photo that cannot be enrolled; the message says why and what to do."""


@dataclass(frozen=True)
class EnrollOptions:
    """How to treat hard photos."""

    refuse_multiple: bool = False  # several faces: error instead of taking the largest
    min_face_px: int = MIN_FACE_PX
    #: Log what was corrected in the photo (a user's photo); the built-in face is quiet.
    log_warnings: bool = True


def face_model_file(name: str) -> str:
    """Path of one model file shipped in ``face-recognition-models`` (``models/<name>``).

    Found without importing that package: its ``__init__`` imports ``pkg_resources``,
    which setuptools 81 and later no longer provide.
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    path = (os.path.join(spec.submodule_search_locations[0], "models", name)
            if spec and spec.submodule_search_locations else "")
    if not os.path.isfile(path):
        raise EnrollmentError(
            f"face analysis needs {name} from face-recognition-models; "
            "reinstall the package (pip install etf-avatar)"
        )
    return path


@lru_cache(maxsize=1)
def _dlib_models():
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - a core dependency
        raise EnrollmentError(
            "face detection needs dlib-bin; reinstall the package (pip install etf-avatar)"
        ) from e
    predictor = dlib.shape_predictor(face_model_file("shape_predictor_68_face_landmarks.dat"))
    return dlib.get_frontal_face_detector(), predictor, dlib


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as RGB uint8 [H,W,3]; EnrollmentError for anything unusable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EnrollmentError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise EnrollmentError(f"{path}: the file is empty")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EnrollmentError(f"{path}: not a readable image (PNG, JPEG, WebP, BMP or TIFF)")
    return to_rgb8(img, name=path, bgr=True)


def to_rgb8(img: np.ndarray, name: str = "image", bgr: bool = False) -> np.ndarray:
    """Normalise any decoded image (grey, alpha, 16-bit) to RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise EnrollmentError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else img
    else:
        raise EnrollmentError(f"{name}: unsupported image layout {img.shape}")
    h, w = img.shape[:2]
    if min(h, w) < MIN_FACE_PX:
        raise EnrollmentError(f"{name}: image is {w}x{h}, too small to hold a usable face")
    if max(h, w) > MAX_DECODE_SIDE:
        raise EnrollmentError(f"{name}: image is {w}x{h}, larger than {MAX_DECODE_SIDE} px")
    return np.ascontiguousarray(img)


def detect_faces(img: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Faces as ((left, top, right, bottom), score) in image pixels, best score first."""
    detector, _, _ = _dlib_models()
    # dlib reads the buffer as packed rows: a strided view (a video frame whose rows are
    # padded, as PyAV gives for 360-px-wide MPEG) made it miss faces at random
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    # HOG finds faces down to ~80 px; upsample small photos, downsample huge ones.
    scale = 1024.0 / max(h, w) if max(h, w) > 1024 else 1.0
    small = img
    if scale < 1:
        small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    upsample = 1 if max(small.shape[:2]) <= 1024 else 0
    rects, scores, _ = detector.run(small, upsample, 0.0)
    out = []
    for r, s in zip(rects, scores, strict=True):
        box = tuple(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom()))
        out.append((box, float(s)))
    return sorted(out, key=lambda t: -t[1])


def detect_face_near(img: np.ndarray, box: tuple[int, int, int, int]
                 ) -> tuple[int, int, int, int] | None:
    """The detector's box for the face near ``box`` (the largest there), or None: the
    detector runs on a window around ``box`` scaled so the face is about 160 px, so
    tracking a face through a video costs the same at any resolution."""
    detector = _dlib_models()[0]
    h, w = img.shape[:2]
    size = max(box[2] - box[0], box[3] - box[1])
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = max(0, int(cx - 1.5 * size)), max(0, int(cy - 1.5 * size))
    x1, y1 = min(w, int(cx + 1.5 * size)), min(h, int(cy + 1.5 * size))
    scale = 160.0 / size
    win = img[y0:y1, x0:x1]
    if scale < 1:
        win = cv2.resize(win, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    else:
        scale = 1.0
    rects = detector(np.ascontiguousarray(win), 0 if size * scale >= 100 else 1)
    if not len(rects):
        return None
    r = max(rects, key=lambda r: r.width() * r.height())
    return (int(round(r.left() / scale + x0)), int(round(r.top() / scale + y0)),
            int(round(r.right() / scale + x0)), int(round(r.bottom() / scale + y0)))


def detect_landmarks(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """68 landmarks [68,2] float64 in image pixels for one face box."""
    _, predictor, dlib = _dlib_models()
    shape = predictor(np.ascontiguousarray(img), dlib.rectangle(*box))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _mesh_faces(img: np.ndarray) -> list[FoundFace]:
    from engines.face import mesh_models
    from engines.face.mesh import MIN_PRESENCE, face_mesh
    from engines.face.mesh68 import mesh_to_68

    if not mesh_models.installed():
        if not _warned_no_mesh:
            _warned_no_mesh.append(True)
            log.warning("face mesh models not installed, using dlib only; %s",
                        mesh_models.FETCH_HINT)
        return []
    fm, lock = face_mesh()
    found = []
    with lock:
        for det in fm.detect(img):
            if det.score < MESH_MIN_SCORE:
                continue
            pts, presence = fm.fit(img, det)
            if presence < MIN_PRESENCE:
                continue
            lo, hi = pts[:468, :2].min(0), pts[:468, :2].max(0)
            box = tuple(int(round(v)) for v in (*lo, *hi))
            found.append(FoundFace(box, mesh_to_68(pts), pts, det.score))
    return found


_warned_no_mesh: list[bool] = []


def find_faces(img: np.ndarray) -> list[FoundFace]:
    """The faces in an RGB uint8 photo, best first, each with its mesh when the mesh
    models are installed and the mesh found it. A face dlib's HOG detector also finds
    keeps dlib's 68 points (what neutralisation and the motion fields were measured
    with; the mesh's mapped points differ by ~0.03 inter-ocular distances, more on open
    mouths); a face only the mesh detector finds (tight crops, turned heads) takes the
    mesh's 68 points through the fixed map."""
    meshed = _mesh_faces(img)
    found = []
    for box, score in detect_faces(img):
        if score < MIN_SCORE:
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        same = [m for m in meshed
                if m.box[0] <= cx <= m.box[2] and m.box[1] <= cy <= m.box[3]]
        mesh = same[0].mesh if same else None
        meshed = [m for m in meshed if not same or m is not same[0]]
        found.append(FoundFace(box, detect_landmarks(img, box), mesh, score))
    return found + meshed


# --- neutralisation -------------------------------------------------------------------

#: Expected neutral values of the mouth measures (in IOD units) and the tolerance before a
#: photo is considered expressive. Closed-mouth frames of two real talking-head clips gave
#: lift 0.016-0.025 (sd 0.012-0.019).
GAP_TOL = 0.03
LIFT_NEUTRAL = 0.02
LIFT_TOL = 0.04
#: The most of each expression that is taken out of the landmarks. A broad smile's texture
#: (cheeks, folds) stays in the photo; pulling its corners all the way down distorts the
#: cheeks, so part of a strong smile is kept.
MAX_REMOVAL = {"lips_part": 1.0, "jaw_open": 1.0, "corner_pull": 0.7, "corner_depress": 0.8}


def _gap(lm: np.ndarray) -> float:
    return float((lm[LOWER_INNER, 1] - lm[UPPER_INNER, 1]).mean() / IOD)


def _lift(lm: np.ndarray) -> float:
    """How far the mouth corners sit above the lip line's centre (IOD units)."""
    centre = lm[[62, 66, 51, 57], 1].mean()
    return float((centre - lm[[48, 54], 1].mean()) / IOD)


def neutralise(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Remove an open mouth, a smile or pulled-down corners from canonical landmarks.

    Returns (neutral landmarks, removed parameters [N_PARAMS], warnings). Each measure is
    driven back to its neutral value by its own motion field (a few Newton steps, since the
    fields depend mildly on the geometry they act on).
    """
    lm = landmarks.copy()
    removed = np.zeros(N_PARAMS, dtype=np.float32)
    for _ in range(3):
        fields = build_fields(lm)
        # Parted lips are undone by the lips alone (AU25) first; only a larger gap means a
        # dropped jaw. Then corners that sit too high (smile) or too low (AU15).
        for name, measure, target, lo, hi in (
            ("lips_part", _gap, 0.0, GAP_TOL, None),
            ("jaw_open", _gap, 0.0, GAP_TOL, None),
            ("corner_pull", _lift, LIFT_NEUTRAL + 0.5 * LIFT_TOL, LIFT_NEUTRAL + LIFT_TOL, None),
            ("corner_depress", _lift, LIFT_NEUTRAL - 0.5 * LIFT_TOL, None,
             LIFT_NEUTRAL - LIFT_TOL),
        ):
            value = measure(lm)
            if (lo is not None and value <= lo) or (hi is not None and value >= hi):
                continue
            per_unit = measure(lm + fields[P[name]]) - value
            if abs(per_unit) < 1e-6:
                continue
            amount = (value - target) / per_unit
            amount = min(amount, MAX_REMOVAL[name] - removed[P[name]])
            if amount <= 0:
                continue
            lm = lm - amount * fields[P[name]]
            removed[P[name]] += amount
    warnings = []
    opened = removed[P["jaw_open"]] + removed[P["lips_part"]]
    if opened > 0.1:
        warnings.append(
            f"the mouth is open in the photo; the landmarks were closed (lips "
            f"{removed[P['lips_part']]:.2f}, jaw {removed[P['jaw_open']]:.2f}). "
            "A closed-mouth photo gives better lips."
        )
    smile = float(removed[P["corner_pull"]])
    if smile > 0.05:
        partly = ", partly" if smile >= MAX_REMOVAL["corner_pull"] - 1e-3 else ""
        warnings.append(
            f"the photo smiles; the smile was removed from the landmarks (AU12 {smile:.2f}"
            f"{partly}). A neutral photo gives cleaner emotions."
        )
    if removed[P["corner_depress"]] > 0.05:
        warnings.append(
            f"the mouth corners are pulled down in the photo; neutralised "
            f"(AU15 {removed[P['corner_depress']]:.2f})."
        )
    return lm, removed, warnings


def _pose_warnings(lm: np.ndarray) -> list[str]:
    """Warn about a strongly turned head, which a 2D warp cannot rotate back."""
    left, right = lm[36:42].mean(0), lm[42:48].mean(0)
    nose = lm[30]
    t = np.dot(nose - left, right - left) / np.dot(right - left, right - left)
    if abs(t - 0.5) > 0.15:
        return [f"the head is turned to one side (nose at {t:.0%} between the eyes); "
                "a frontal photo animates best"]
    return []


def enroll_image(
    img: np.ndarray, source: str = "image", options: EnrollOptions | None = None
) -> Identity:
    """Enroll an RGB uint8 photo [H,W,3]. Raises EnrollmentError with the reason."""
    options = options or EnrollOptions()
    img = to_rgb8(img, name=source)
    h, w = img.shape[:2]
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    faces = find_faces(img)
    if not faces:
        raise EnrollmentError(
            f"{source}: no face found. Use a photo with one clearly visible, roughly frontal face."
        )
    warnings: list[str] = []
    if len(faces) > 1:
        if options.refuse_multiple:
            raise EnrollmentError(
                f"{source}: {len(faces)} faces found and --single-face was given; "
                "crop the photo to one face"
            )
        faces.sort(key=lambda f: -f.area)
        warnings.append(f"{len(faces)} faces found; using the largest")
    face = faces[0]
    lm_photo = face.landmarks
    width = float(np.ptp(lm_photo[:17, 0]))
    if width < options.min_face_px:
        raise EnrollmentError(
            f"{source}: the face is only {width:.0f} px wide; at least "
            f"{options.min_face_px} px is needed. Use a larger or closer photo."
        )
    to_canon = similarity_to_canonical(lm_photo)
    lm_canon = apply_affine(to_canon, lm_photo)
    neutral, removed, neutral_warnings = neutralise(lm_canon)
    warnings += neutral_warnings + _pose_warnings(lm_photo)
    for wmsg in warnings if options.log_warnings else ():
        log.warning("%s: %s", source, wmsg)
    return Identity(
        photo=img,
        landmarks_photo=lm_photo,
        to_canonical=to_canon,
        landmarks_canonical=lm_canon,
        neutral=neutral,
        triangles=delaunay_triangles(neutral),
        expression=removed,
        warnings=tuple(warnings),
        source=os.path.basename(source),
        mesh_photo=face.mesh,
    )


def enroll(path: str | os.PathLike, options: EnrollOptions | None = None) -> Identity:
    """Enroll the photo at ``path``."""
    return enroll_image(read_image(path), source=os.fspath(path), options=options)
