"""The dense face mesh: model pins, detection, the mesh on the built-in face, the 478 -> 68
map, and enrollment of tight crops that dlib's HOG detector refuses."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.face import enrollment, mesh_models
from engines.face.default_face import default_photo
from engines.face.mesh import N_POINTS, FaceMesh
from engines.face.mesh68 import MAP_FILE, mesh_to_68

TALKING = Path(__file__).resolve().parents[2] / "shared" / "data" / "talking"


@pytest.fixture(scope="module")
def fm() -> FaceMesh:
    if not mesh_models.installed():
        pytest.fail(f"face-mesh models missing: {mesh_models.FETCH_HINT}")
    return FaceMesh()


@pytest.fixture(scope="module")
def photo_and_dlib():
    photo = default_photo()
    box = enrollment.detect_faces(photo)[0][0]
    return photo, enrollment.detect_landmarks(photo, box)


def _iod(lm68: np.ndarray) -> float:
    return float(np.linalg.norm(lm68[42:48].mean(0) - lm68[36:42].mean(0)))


def test_model_files_are_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("ETF_MODELS_DIR", str(tmp_path))
    mesh_models._verified.clear()
    try:
        with pytest.raises(mesh_models.MeshModelsMissing, match="etf models fetch"):
            mesh_models.model_path("face_landmark")
        target = Path(mesh_models.models_dir()) / "face_landmark.tflite"
        target.parent.mkdir(parents=True)
        target.write_bytes(b"not the model")
        with pytest.raises(mesh_models.MeshModelsMissing, match="SHA-256"):
            mesh_models.model_path("face_landmark")
        assert not mesh_models.installed()
    finally:
        mesh_models._verified.clear()


def test_mesh_on_the_builtin_face(fm, photo_and_dlib):
    """Eyes, irises, lips, nose and jaw where dlib puts them; depth says the nose is
    nearest the camera."""
    photo, lm = photo_and_dlib
    mesh = fm(photo)
    assert mesh is not None and mesh.shape == (N_POINTS, 3)
    iod = _iod(lm)
    near = lambda a, b: np.linalg.norm(a - b) / iod  # noqa: E731
    assert near(mesh[33, :2], lm[36]) < 0.1 and near(mesh[263, :2], lm[45]) < 0.1  # eyes
    assert near(mesh[61, :2], lm[48]) < 0.1 and near(mesh[291, :2], lm[54]) < 0.1  # lips
    assert near(mesh[152, :2], lm[8]) < 0.15  # chin
    assert near(mesh[4, :2], lm[30]) < 0.1  # nose tip
    # each iris centre inside its eye's outline, radius ~ a fifth of the eye's width
    for centre, eye in ((468, lm[36:42]), (473, lm[42:48])):
        inside = cv2.pointPolygonTest(eye.astype(np.float32), tuple(mesh[centre, :2]), False)
        assert inside > 0, (centre, mesh[centre], eye)
        radius = np.linalg.norm(mesh[centre + 1:centre + 5, :2] - mesh[centre, :2], axis=1)
        width = np.ptp(eye[:, 0])
        assert 0.12 < radius.mean() / width < 0.3
    z = mesh[:, 2]
    assert z[4] < z[[33, 263, 234, 454]].min(), "the nose tip is nearest the camera"


def test_eye_contours_outline_each_eye(fm, photo_and_dlib):
    """The iris model's lid margins: from the outer corner to the inner one along each lid,
    the upper lid above the lower, the opening as tall as dlib's; the irises match the
    mesh's own; a lid raised in the image (the face above the eyes' middle stretched up)
    reads higher, by about half the true rise (the model leans toward an average eye),
    and the lower lid stays."""
    photo, lm = photo_and_dlib
    mesh = fm(photo)
    lids, irises = fm.eye_contours(photo, mesh)
    assert lids.shape == (2, 16, 2) and irises.shape == (2, 5, 2)
    iod = _iod(lm)
    np.testing.assert_allclose(irises.reshape(10, 2), mesh[468:, :2], atol=1e-6)
    for lid, (outer, inner), ring in ((lids[0], (33, 133), lm[36:42]),
                                      (lids[1], (263, 362), lm[42:48])):
        assert np.linalg.norm(lid[0] - mesh[outer, :2]) / iod < 0.08
        assert np.linalg.norm(lid[8] - mesh[inner, :2]) / iod < 0.08
        opening = (lid[3:6, 1].mean() - lid[11:14, 1].mean()) / iod
        dlib_opening = (ring[[4, 5], 1].mean() - ring[[1, 2], 1].mean()) / iod
        assert 0.05 < opening < 0.4 and abs(opening - dlib_opening) < 0.06, (opening,
                                                                              dlib_opening)
    # stretch the band from above the brows down to the eyes' middle upward by 40%: the
    # upper lids rise in the image as far as the stretch moves them, the lower ones stay
    mid = int(lm[36:48, 1].mean())
    top = max(int(mid - 0.9 * iod), 0)
    grown = photo.copy()
    band = photo[top:mid]
    k = int(round(0.4 / 1.4 * (mid - top)))
    grown[top:mid] = cv2.resize(band[k:], (band.shape[1], mid - top))
    lids2, _ = fm.eye_contours(grown, fm(grown))
    upper = lids[:, 11:14, 1].mean()
    expected = (mid - upper) * 0.4 / iod
    rise = (upper - lids2[:, 11:14, 1].mean()) / iod
    assert 0.3 * expected < rise < 1.2 * expected, (rise, expected)
    assert abs(lids2[:, 3:6, 1].mean() - lids[:, 3:6, 1].mean()) / iod < 0.3 * expected


def test_mesh_follows_a_turned_and_tilted_face(fm, photo_and_dlib):
    photo, _ = photo_and_dlib
    base = fm(photo, iris=False)
    h, w = photo.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
    turned = cv2.warpAffine(photo, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    got = fm(turned, iris=False)
    want = base[:, :2] @ rot[:, :2].T + rot[:, 2]
    err = np.linalg.norm(got[:, :2] - want, axis=1) / np.linalg.norm(base[33, :2]
                                                                      - base[263, :2])
    assert np.median(err) < 0.03, np.median(err)


def test_the_68_point_map_round_trip(fm, photo_and_dlib):
    """mesh -> 68 lands on dlib's own points (a face the map was not fitted on), and the
    fit's held-out error is what the file says it is."""
    photo, lm = photo_and_dlib
    mapped = mesh_to_68(fm(photo))
    err = np.linalg.norm(mapped - lm, axis=1) / _iod(lm)
    assert np.median(err) < 0.05, np.median(err)
    assert np.median(err[48:68]) < 0.05 and np.max(err[36:48]) < 0.08
    info = json.loads(Path(MAP_FILE).read_text())
    assert info["heldout_error_iod"]["all"] < 0.06
    assert np.median(np.linalg.norm(mesh_to_68(fm(photo)) - mapped, axis=1)) == 0


def test_no_face_is_still_refused():
    rng = np.random.default_rng(0)
    from skimage import data

    for img in (rng.integers(0, 255, (300, 300, 3), dtype=np.uint8),
                np.full((200, 200, 3), 127, np.uint8), data.chelsea(), data.coffee()):
        with pytest.raises(enrollment.EnrollmentError, match="no face"):
            enrollment.enroll_image(img)


def test_enrollment_keeps_the_mesh(fm, identity, tmp_path):
    assert identity.mesh_photo is not None and identity.mesh_photo.shape == (N_POINTS, 3)
    # HOG found the built-in face: its 68 points are dlib's, the mesh agrees with them
    err = np.linalg.norm(mesh_to_68(identity.mesh_photo) - identity.landmarks_photo, axis=1)
    assert np.median(err) / _iod(identity.landmarks_photo) < 0.05
    identity.save(tmp_path / "me.npz")
    back = type(identity).load(tmp_path / "me.npz")
    np.testing.assert_allclose(back.mesh_photo, identity.mesh_photo, atol=1e-3)
    small = identity.for_video(256)
    np.testing.assert_allclose(small.mesh_photo, identity.mesh_photo * 0.5)


def test_without_mesh_models_dlib_enrolls(tmp_path, monkeypatch):
    monkeypatch.setenv("ETF_MODELS_DIR", str(tmp_path))
    mesh_models._verified.clear()
    try:
        ident = enrollment.enroll_image(default_photo())
    finally:
        mesh_models._verified.clear()
    assert ident.mesh_photo is None
    assert ident.landmarks_photo.shape == (68, 2)


def _tight(photo: np.ndarray, lm: np.ndarray, side: int = 224, margin: float = 1.0,
           turn: float = 0.0) -> np.ndarray:
    """A square crop just around the 68 points' box, resized to ``side``; ``turn`` squeezes
    one half of the face horizontally (a crude slight turn)."""
    lo, hi = lm.min(0), lm.max(0)
    c, s = (lo + hi) / 2, (hi - lo).max() * margin / 2
    x0, y0 = int(c[0] - s), int(c[1] - s)
    crop = photo[max(0, y0):int(c[1] + s), max(0, x0):int(c[0] + s)]
    crop = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    if turn:
        mid = side // 2
        left = cv2.resize(crop[:, :mid], (int(mid * (1 - turn)), side))
        right = cv2.resize(crop[:, mid:], (side - left.shape[1], side))
        crop = np.concatenate([left, right], 1)
    return np.ascontiguousarray(crop)


def test_tight_crop_hog_refuses_is_enrolled(fm, photo_and_dlib):
    photo, lm = photo_and_dlib
    crop = _tight(photo, lm, margin=0.85, turn=0.3)
    assert not [f for f in enrollment.detect_faces(crop) if f[1] >= enrollment.MIN_SCORE], \
        "HOG should refuse this crop (or the test shows nothing)"
    ident = enrollment.enroll_image(crop)
    assert ident.mesh_photo is not None
    # its 68 points are the mesh's, mapped
    np.testing.assert_allclose(mesh_to_68(ident.mesh_photo), ident.landmarks_photo)
    lo, hi = ident.landmarks_photo.min(0), ident.landmarks_photo.max(0)
    assert (hi - lo).min() > 170, "the face fills the crop"


def test_tight_crop_of_a_real_talking_clip(fm):
    """A 224x224 crop of a man looking nearly at the camera (a talking clip's frame) that
    HOG scores under its floor enrolls through the mesh detector."""
    clip = TALKING / "styletalk_andrew_clip_1.mp4"
    if not clip.is_file():
        pytest.skip("../shared/data/talking is not present")
    import av

    refused = 0
    with av.open(str(clip)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i % 25:
                continue
            img = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
            faces = enrollment.detect_faces(img)
            if not faces:
                continue
            crop = _tight(img, enrollment.detect_landmarks(img, faces[0][0]), margin=0.9)
            if [f for f in enrollment.detect_faces(crop) if f[1] >= enrollment.MIN_SCORE]:
                continue
            refused += 1
            ident = enrollment.enroll_image(crop)
            assert ident.mesh_photo is not None
            if refused >= 3:
                break
    assert refused, "no crop that HOG refuses was found"
