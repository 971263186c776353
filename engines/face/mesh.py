"""The dense face mesh: 468 points with depth plus 5 iris points per eye (478), on CPU.

Runs MediaPipe's published TFLite graphs (see :mod:`engines.face.mesh_models`) under the
LiteRT interpreter (``ai-edge-litert``, numpy 2; MediaPipe's own runtime pins numpy < 2).
The pre- and post-processing is ours:

* **Detection** (BlazeFace): the short-range model (128 px input, faces that fill much of
  the picture: tight crops, selfies) and the full-range one (192 px, small faces in large
  photos). Anchors, box decoding and a score-weighted merge of overlapping boxes.
* **Mesh**: a square crop around the face, rotated so the eyes are level, 1.5x the face
  box (from a detection, or from the previous frame's mesh when tracking); 468 (x, y, z)
  in image pixels, z relative depth at the same scale as x (smaller is nearer the camera).
* **Irises**: a crop per eye, 2.3x the eye's corner-to-corner width; the subject's left
  eye is mirrored so both look like the right eye the model was made for.

Points follow MediaPipe's numbering: 468..472 are the iris (centre first) of the eye with
corners 33/133 (the subject's right, image left on a frontal photo), 473..477 the other.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from engines.face.mesh_models import model_path

N_MESH = 468
N_POINTS = 478
#: mesh points at the outer and inner corners of each eye (subject's right eye first)
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
#: the iris model's lid-margin points (the first of its 71 eye-region points)
EYE_CONTOUR = 16
#: face-presence probability under which a tracked mesh is dropped and the face re-detected
MIN_PRESENCE = 0.5


@dataclass(frozen=True)
class Detection:
    """One face: box (left, top, right, bottom) and six keypoints in image pixels."""

    box: tuple[float, float, float, float]
    #: right eye, left eye, nose tip, mouth centre, right tragion, left tragion (subject's)
    keypoints: np.ndarray
    score: float


# --- geometry -------------------------------------------------------------------------


def _roi(center, x_axis, size) -> np.ndarray:
    """Corners (top-left, top-right, bottom-left) of a square of side ``size`` whose x axis
    points along ``x_axis``."""
    c = np.asarray(center, np.float64)
    u = np.asarray(x_axis, np.float64)
    u = u / max(np.linalg.norm(u), 1e-9)
    v = np.array([-u[1], u[0]])  # image y points down: +90 degrees turns x into y
    h = size / 2.0
    return np.stack([c - h * u - h * v, c + h * u - h * v, c - h * u + h * v])


def _crop(img: np.ndarray, corners: np.ndarray, side: int, flip: bool = False):
    """The ROI resampled to side x side RGB float, and the 2x3 map crop px -> image px."""
    dst = np.float32([[0, 0], [side, 0], [0, side]])
    if flip:
        dst = np.float32([[side, 0], [0, 0], [side, side]])
    to_crop = cv2.getAffineTransform(corners.astype(np.float32), dst)
    patch = cv2.warpAffine(img, to_crop, (side, side), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT)
    back = cv2.invertAffineTransform(to_crop)
    return patch, back


def _to_image(points: np.ndarray, back: np.ndarray, side: int, roi_size: float) -> np.ndarray:
    """Crop-pixel (x, y, z) -> image pixels; z scaled like x."""
    xy = points[:, :2] @ back[:, :2].T + back[:, 2]
    z = points[:, 2:3] * (roi_size / side)
    return np.concatenate([xy, z], axis=1)


# --- BlazeFace ------------------------------------------------------------------------


def _anchors(size: int, grids: list[tuple[int, int]]) -> np.ndarray:
    """Anchor centres [N,2] (fractions of the input) for (stride, anchors per cell) grids."""
    out = []
    for stride, per_cell in grids:
        n = size // stride
        ys, xs = np.mgrid[0:n, 0:n]
        centres = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


class _Detector:
    def __init__(self, name: str, size: int, grids, min_score: float):
        from ai_edge_litert.interpreter import Interpreter

        self.net = Interpreter(model_path=model_path(name), num_threads=1)
        self.net.allocate_tensors()
        self.inp = self.net.get_input_details()[0]["index"]
        outs = sorted(self.net.get_output_details(), key=lambda d: d["shape"][-1])
        self.scores_idx, self.boxes_idx = outs[0]["index"], outs[1]["index"]
        self.size = size
        self.anchors = _anchors(size, grids)
        self.min_score = min_score

    def __call__(self, img: np.ndarray, border: float = 0.0) -> list[Detection]:
        """Faces in ``img``; ``border`` pads it with black on every side by that fraction
        of its longer side first (a face that fills the picture is found far more
        surely with a margin around it, as in the model's training crops)."""
        h, w = img.shape[:2]
        extra = border * max(h, w)
        side = max(h, w) + 2 * extra
        # letterbox: the image centred in a square, so the face keeps its proportions
        pad_x, pad_y = (side - w) / 2.0, (side - h) / 2.0
        m = np.float32([[self.size / side, 0, pad_x * self.size / side],
                        [0, self.size / side, pad_y * self.size / side]])
        interp = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        x = cv2.warpAffine(img, m, (self.size, self.size), flags=interp)
        x = x.astype(np.float32) / 127.5 - 1.0
        self.net.set_tensor(self.inp, x[None])
        self.net.invoke()
        raw = self.net.get_tensor(self.boxes_idx)[0]
        logits = self.net.get_tensor(self.scores_idx)[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80).astype(np.float64)))
        keep = np.nonzero(scores >= self.min_score)[0]
        if not len(keep):
            return []
        raw, scores, anchors = raw[keep] / self.size, scores[keep], self.anchors[keep]
        centres = raw[:, 0:2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centres - half, centres + half], 1)
        kps = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None]
        # back to image pixels
        scale = side
        boxes = boxes * scale - np.array([pad_x, pad_y, pad_x, pad_y])
        kps = kps * scale - np.array([pad_x, pad_y])
        return _weighted_merge(boxes, kps, scores)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def _weighted_merge(boxes, kps, scores, iou: float = 0.3) -> list[Detection]:
    """Overlapping boxes become one, averaged with their scores as weights (the anchors
    around one face all fire; averaging them is steadier than keeping the best)."""
    order = np.argsort(-scores)
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    left = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not left[i]:
            continue
        group = left & (_iou(boxes[i], boxes) > iou)
        group[i] = True
        left &= ~group
        wts = scores[group][:, None]
        box = (boxes[group] * wts).sum(0) / wts.sum()
        kp = (kps[group] * wts[:, :, None]).sum(0) / wts.sum()
        out.append(Detection(tuple(float(v) for v in box), kp, float(scores[i])))
    return out


# --- the mesh -------------------------------------------------------------------------


class FaceMesh:
    """Detector + 478-point mesh. One instance per thread of use (the interpreters hold
    state); :func:`face_mesh` gives a shared one guarded by a lock."""

    SIDE = 192
    IRIS_SIDE = 64

    def __init__(self):
        from ai_edge_litert.interpreter import Interpreter

        self.short = _Detector("face_detection_short_range", 128, [(8, 2), (16, 6)], 0.5)
        self.full = _Detector("face_detection_full_range_sparse", 192, [(4, 1)], 0.6)
        self.mesh = Interpreter(model_path=model_path("face_landmark"), num_threads=1)
        self.mesh.allocate_tensors()
        self.mesh_in = self.mesh.get_input_details()[0]["index"]
        outs = sorted(self.mesh.get_output_details(), key=lambda d: -d["shape"][-1])
        self.mesh_pts, self.mesh_flag = outs[0]["index"], outs[1]["index"]
        self.iris = Interpreter(model_path=model_path("iris_landmark"), num_threads=1)
        self.iris.allocate_tensors()
        self.iris_in = self.iris.get_input_details()[0]["index"]
        outs = {d["shape"][-1]: d["index"] for d in self.iris.get_output_details()}
        self.iris_contour, self.iris_pts = outs[213], outs[15]

    # detection
    def detect(self, img: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image, best first: the short-range model (on the image
        with a 25% black border: tight crops), and the full-range one for what it finds
        that the short-range did not."""
        found = self.short(img, border=0.25)
        for d in self.full(img):
            if not found or _iou(np.array(d.box), np.array([f.box for f in found])).max() < 0.3:
                found.append(d)
        return sorted(found, key=lambda d: -d.score)

    # mesh
    def roi_from_detection(self, det: Detection) -> np.ndarray:
        x0, y0, x1, y1 = det.box
        size = 1.5 * max(x1 - x0, y1 - y0)
        return _roi(((x0 + x1) / 2, (y0 + y1) / 2), det.keypoints[1] - det.keypoints[0], size)

    @staticmethod
    def roi_from_points(points: np.ndarray) -> np.ndarray:
        p = points[:N_MESH, :2]
        lo, hi = p.min(0), p.max(0)
        size = 1.5 * float(max(hi - lo))
        return _roi((lo + hi) / 2, p[263] - p[33], size)

    def landmarks(self, img: np.ndarray, roi: np.ndarray, iris: bool = True
                  ) -> tuple[np.ndarray, float]:
        """478 (x, y, z) in image pixels (468 without ``iris``) and the face-presence
        probability, for the face in ``roi`` (see :meth:`roi_from_detection`)."""
        patch, back = _crop(img, roi, self.SIDE)
        self.mesh.set_tensor(self.mesh_in, (patch.astype(np.float32) / 255.0)[None])
        self.mesh.invoke()
        pts = self.mesh.get_tensor(self.mesh_pts).reshape(N_MESH, 3)
        flag = float(self.mesh.get_tensor(self.mesh_flag).reshape(()))
        presence = 1.0 / (1.0 + np.exp(-flag))
        roi_size = float(np.linalg.norm(roi[1] - roi[0]))
        out = _to_image(pts.astype(np.float64), back, self.SIDE, roi_size)
        if iris:
            out = np.concatenate([out, self._irises(img, out)])
        return out, presence

    def _eye_model(self, img: np.ndarray, mesh: np.ndarray):
        """Per eye (subject's right first): the iris model's lid contour [16,3] and iris
        [5,3], in image pixels; depth relative to the eye's centre."""
        for (a, b), flip in ((RIGHT_EYE_CORNERS, False), (LEFT_EYE_CORNERS, True)):
            p, q = mesh[a, :2], mesh[b, :2]
            size = 2.3 * float(np.linalg.norm(q - p))
            roi = _roi((p + q) / 2, q - p, size)
            patch, back = _crop(img, roi, self.IRIS_SIDE, flip=flip)
            self.iris.set_tensor(self.iris_in, (patch.astype(np.float32) / 255.0)[None])
            self.iris.invoke()
            contour = self.iris.get_tensor(self.iris_contour).reshape(71, 3)[:EYE_CONTOUR]
            pts = self.iris.get_tensor(self.iris_pts).reshape(5, 3)
            yield (_to_image(contour.astype(np.float64), back, self.IRIS_SIDE, size),
                   _to_image(pts.astype(np.float64), back, self.IRIS_SIDE, size))

    def _irises(self, img: np.ndarray, mesh: np.ndarray) -> np.ndarray:
        out = []
        for (a, b), (_, iris_pts) in zip((RIGHT_EYE_CORNERS, LEFT_EYE_CORNERS),
                                         self._eye_model(img, mesh), strict=True):
            # depth relative to the eye; offset to the mesh depth of the eye's centre
            iris_pts[:, 2] += (mesh[a, 2] + mesh[b, 2]) / 2
            out.append(iris_pts)
        return np.concatenate(out)

    def eye_contours(self, img: np.ndarray, mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The iris model's own lid margins and irises for a face whose mesh is ``mesh``:
        (lids [2,16,2], irises [2,5,2]) in image pixels, subject's right eye first. Lid
        points 0..8 run along the lower lid from the outer corner to the inner one, 9..15
        along the upper lid between them (MediaPipe's order; 4 and 12 mid-lid). Like every
        landmark model it leans toward an average eye: of an upper lid raised a known amount
        in the image it reads about half (benchmarks/emotion_geometry.py)."""
        lids, irises = zip(*self._eye_model(img, mesh), strict=True)
        return np.stack(lids)[..., :2], np.stack(irises)[..., :2]

    def fit(self, img: np.ndarray, det: Detection, iris: bool = True
            ) -> tuple[np.ndarray, float]:
        """The mesh of a detected face and its presence probability: a first pass from the
        detector's box, a second from the first mesh's own box (the detector's box is
        loose on tight crops and turned faces)."""
        pts, presence = self.landmarks(img, self.roi_from_detection(det), iris)
        pts2, presence2 = self.landmarks(img, self.roi_from_points(pts), iris)
        return (pts2, presence2) if presence2 >= min(presence, MIN_PRESENCE) else (pts, presence)

    def __call__(self, img: np.ndarray, iris: bool = True) -> np.ndarray | None:
        """The mesh of the best face in a still image, or None."""
        for det in self.detect(img):
            pts, presence = self.fit(img, det, iris)
            if presence >= MIN_PRESENCE:
                return pts
        return None


class MeshTracker:
    """The mesh through a video: each frame's crop comes from the previous frame's mesh;
    the detector runs only at the start and when the face is lost."""

    def __init__(self, mesh: FaceMesh | None = None, iris: bool = True):
        self.mesh = mesh or FaceMesh()
        self.iris = iris
        self.prev: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        if self.prev is not None:
            pts, presence = self.mesh.landmarks(frame, FaceMesh.roi_from_points(self.prev),
                                                self.iris)
            if presence >= MIN_PRESENCE:
                self.prev = pts
                return pts
        self.prev = self.mesh(frame, self.iris)
        return self.prev


_shared: FaceMesh | None = None
_lock = threading.Lock()


def face_mesh() -> tuple[FaceMesh, threading.Lock]:
    """A process-wide :class:`FaceMesh` and the lock to hold while using it."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = FaceMesh()
    return _shared, _lock
