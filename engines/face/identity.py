"""The enrolled identity: what one photo becomes, and its versioned file format.

An identity file is a NumPy ``.npz`` (no pickles) holding the photo (PNG-encoded), its
landmarks, the photo->canonical similarity, the neutral landmarks and the face graph.
Everything derived cheaply from those (the canonical crop, the face mask) is recomputed on
load, so a file can never hold a crop that disagrees with its transform.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np

from engines.motion.face_motion import N_PARAMS, PARAMS
from etf_models.canonical_face import (
    CANON_SIZE,
    IOD,
    apply_affine,
    invert_affine,
    triangle_edges,
)

FORMAT = "etf-identity"
VERSION = 1


class IdentityFileError(ValueError):
    """An identity file that is missing, corrupt, foreign or of an unsupported version."""


@dataclass(frozen=True, eq=False)
class Identity:
    """One enrolled face.

    Attributes:
        photo: full-resolution RGB photo [H,W,3] uint8; the background that is kept.
        landmarks_photo: detected landmarks [68,2] in photo pixels.
        to_canonical: 2x3 similarity photo -> canonical 256x256 crop.
        landmarks_canonical: detected landmarks [68,2] in canonical space.
        neutral: neutral-face landmarks [68,2] in canonical space (expression removed).
        triangles: Delaunay triangles [T,3] of the neutral landmarks (the paper's graph).
        expression: motion parameters [N_PARAMS] that were removed to neutralise the photo.
        warnings: human-readable notes from enrollment (several faces, smile removed, ...).
        source: the photo's file name (informational).
        mesh_photo: the dense face mesh [478,3] in photo pixels (x, y, depth), or None
            when enrolled without the mesh models (dlib's 68 points only).
    """

    photo: np.ndarray
    landmarks_photo: np.ndarray
    to_canonical: np.ndarray
    landmarks_canonical: np.ndarray
    neutral: np.ndarray
    triangles: np.ndarray
    expression: np.ndarray
    warnings: tuple[str, ...] = ()
    source: str = ""
    mesh_photo: np.ndarray | None = None

    @property
    def from_canonical(self) -> np.ndarray:
        """2x3 similarity canonical -> photo, for paste-back."""
        return invert_affine(self.to_canonical)

    @cached_property
    def crop(self) -> np.ndarray:
        """The aligned canonical crop [256,256,3] uint8."""
        return cv2.warpAffine(
            self.photo,
            self.to_canonical,
            (CANON_SIZE, CANON_SIZE),
            flags=cv2.INTER_AREA if self.scale < 1.0 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )

    @property
    def scale(self) -> float:
        """Canonical pixels per photo pixel."""
        return float(np.hypot(*self.to_canonical[:, 0]))

    @cached_property
    def face_mask(self) -> np.ndarray:
        """Canonical face mask [256,256] float32 in 0..1, feathered at its edge.

        The hull of the landmarks, with the brows lifted to include the forehead and the
        chin extended for a dropped jaw: the region a talking face can change.
        """
        pts = self.landmarks_canonical.copy()
        brows = np.r_[17:27]
        pts = np.vstack([pts, pts[brows] + [0.0, -0.35 * IOD], pts[np.r_[4:13]] + [0, 0.3 * IOD]])
        hull = cv2.convexHull(pts.astype(np.float32)).astype(np.int32)
        m = np.zeros((CANON_SIZE, CANON_SIZE), np.uint8)
        cv2.fillConvexPoly(m, hull, 255)
        k = int(0.25 * IOD) | 1
        return cv2.GaussianBlur(m.astype(np.float32) / 255.0, (k, k), 0)

    @cached_property
    def photo_face_mask(self) -> np.ndarray:
        """The face mask warped into the photo [H,W] float32 in 0..1, for paste-back.

        Constant per identity, so it is warped once here rather than on every frame.
        """
        h, w = self.photo.shape[:2]
        return cv2.warpAffine(self.face_mask, self.from_canonical, (w, h), flags=cv2.INTER_LINEAR)

    @property
    def edges(self) -> np.ndarray:
        """Unique undirected graph edges [E,2] of the Delaunay triangulation."""
        return triangle_edges(self.triangles)

    def for_video(self, max_side: int) -> Identity:
        """This identity with its photo fitted for streaming video.

        The photo is scaled down (never up) so its longer side is at most ``max_side`` and
        trimmed to even width and height (4:2:0 video needs both); landmarks and the
        canonical transform follow. Returns ``self`` when nothing changes.
        """
        h, w = self.photo.shape[:2]
        s = min(1.0, max_side / max(h, w))
        nw, nh = int(w * s) & ~1, int(h * s) & ~1
        if (nw, nh) == (w, h):
            return self
        if s < 1.0:
            photo = cv2.resize(self.photo, (int(round(w * s)), int(round(h * s))),
                               interpolation=cv2.INTER_AREA)
        else:
            photo = self.photo
        photo = np.ascontiguousarray(photo[:nh, :nw])
        to_canon = self.to_canonical.copy()
        to_canon[:, :2] /= s
        return replace(self, photo=photo, landmarks_photo=self.landmarks_photo * s,
                       to_canonical=to_canon,
                       mesh_photo=None if self.mesh_photo is None else self.mesh_photo * s)

    def canonical_depth(self) -> np.ndarray:
        """Depth of the 68 points [68] in canonical pixels, relative to the eye corners
        (smaller is nearer the camera): the photo's own mesh when it has one, else a
        typical face's."""
        from engines.face.mesh68 import depth_68, template_depth_68

        if self.mesh_photo is None:
            return template_depth_68() * IOD
        z = depth_68(self.mesh_photo) * float(np.hypot(*self.to_canonical[:, 0]))
        return z - z[[36, 39, 42, 45]].mean()

    def canonical_to_photo(self, points: np.ndarray) -> np.ndarray:
        """Map canonical points [...,2] into photo pixels."""
        return apply_affine(self.from_canonical, points)

    def save(self, path: str | os.PathLike) -> None:
        """Write the identity as a versioned ``.npz`` file (atomic replace)."""
        ok, png = cv2.imencode(".png", cv2.cvtColor(self.photo, cv2.COLOR_RGB2BGR))
        if not ok:
            raise IdentityFileError("could not encode the photo as PNG")
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "params": list(PARAMS),
            "warnings": list(self.warnings),
            "source": self.source,
        }
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            photo_png=png.ravel(),
            landmarks_photo=self.landmarks_photo.astype(np.float32),
            to_canonical=self.to_canonical.astype(np.float64),
            landmarks_canonical=self.landmarks_canonical.astype(np.float32),
            neutral=self.neutral.astype(np.float32),
            triangles=self.triangles.astype(np.int32),
            expression=self.expression.astype(np.float32),
            **({} if self.mesh_photo is None
               else {"mesh_photo": self.mesh_photo.astype(np.float32)}),
        )
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Identity:
        """Read and validate an identity file; IdentityFileError says what is wrong."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise IdentityFileError(f"{path}: no such identity file")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise IdentityFileError(f"{path}: not an identity file (unreadable: {e})") from e
        try:
            meta = json.loads(bytes(arrays["meta"]).decode())
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IdentityFileError(f"{path}: not an etf identity file (no metadata)") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IdentityFileError(f"{path}: not an etf identity file")
        if meta.get("version") != VERSION:
            raise IdentityFileError(
                f"{path}: identity file version {meta.get('version')} is not supported "
                f"(this build reads version {VERSION}); enroll the photo again"
            )
        expect = {
            "landmarks_photo": (68, 2),
            "to_canonical": (2, 3),
            "landmarks_canonical": (68, 2),
            "neutral": (68, 2),
            "expression": (N_PARAMS,),
        }
        for key, shape in expect.items():
            a = arrays.get(key)
            if a is None or a.shape != shape or not np.all(np.isfinite(a)):
                raise IdentityFileError(f"{path}: field {key!r} missing or malformed")
        tri = arrays.get("triangles")
        if tri is None or tri.ndim != 2 or tri.shape[1] != 3 or tri.min() < 0 or tri.max() > 67:
            raise IdentityFileError(f"{path}: field 'triangles' missing or malformed")
        mesh = arrays.get("mesh_photo")
        if mesh is not None and (mesh.shape != (478, 3) or not np.all(np.isfinite(mesh))):
            raise IdentityFileError(f"{path}: field 'mesh_photo' malformed")
        photo = cv2.imdecode(arrays.get("photo_png", np.zeros(0, np.uint8)), cv2.IMREAD_COLOR)
        if photo is None:
            raise IdentityFileError(f"{path}: the stored photo cannot be decoded")
        return cls(
            photo=cv2.cvtColor(photo, cv2.COLOR_BGR2RGB),
            landmarks_photo=arrays["landmarks_photo"].astype(np.float64),
            to_canonical=arrays["to_canonical"].astype(np.float64),
            landmarks_canonical=arrays["landmarks_canonical"].astype(np.float64),
            neutral=arrays["neutral"].astype(np.float64),
            triangles=tri.astype(np.int32),
            expression=arrays["expression"].astype(np.float32),
            warnings=tuple(meta.get("warnings", ())),
            source=str(meta.get("source", "")),
            mesh_photo=None if mesh is None else mesh.astype(np.float64),
        )
