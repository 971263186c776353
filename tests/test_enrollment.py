"""Enrollment of the built-in face, refusal of bad photos, alignment, identity files."""

from __future__ import annotations

import numpy as np
import pytest

from engines.face import enrollment
from engines.face.default_face import default_photo
from engines.face.enrollment import EnrollmentError, EnrollOptions, enroll, enroll_image
from engines.face.identity import Identity, IdentityFileError
from engines.render.compositor import paste_crop
from etf_models.canonical_face import (
    CANON_LEFT_EYE,
    CANON_RIGHT_EYE,
    REGIONS,
    apply_affine,
    eye_centres,
    triangle_edges,
)


def test_builtin_face_enrolls(identity):
    assert identity.photo.shape == (512, 512, 3)
    left, right = eye_centres(identity.landmarks_canonical)
    np.testing.assert_allclose(left, CANON_LEFT_EYE, atol=1e-6)
    np.testing.assert_allclose(right, CANON_RIGHT_EYE, atol=1e-6)
    assert identity.crop.shape == (256, 256, 3)
    # The astronaut smiles with parted lips: enrollment must notice and neutralise it.
    assert any("smiles" in w for w in identity.warnings)
    gap = identity.neutral[[67, 66, 65], 1] - identity.neutral[[61, 62, 63], 1]
    assert np.all(np.abs(gap) < 1.0), gap
    # Graph: a planar triangulation of 68 points and the paper's 8 regions.
    assert len(identity.triangles) > 100
    assert len(triangle_edges(identity.triangles)) == len(identity.edges)
    assert sorted(np.concatenate(list(REGIONS.values()))) == list(range(68))


def test_alignment_round_trip(identity):
    """Photo -> canonical -> photo is exact for points and within 1 px for pixels."""
    back = identity.canonical_to_photo(identity.landmarks_canonical)
    np.testing.assert_allclose(back, identity.landmarks_photo, atol=1e-6)
    pasted = paste_crop(identity, identity.crop)
    # Where the mask is full, the pasted crop must match the photo up to resampling blur:
    # a shift of 1 px would raise the error far above what interpolation alone gives.
    import cv2

    mask = cv2.warpAffine(identity.face_mask, identity.from_canonical, pasted.shape[1::-1]) > 0.99
    err = np.abs(pasted.astype(float) - identity.photo)[mask].mean()
    shifted = np.abs(np.roll(identity.photo, 1, axis=1).astype(float) - identity.photo)[mask].mean()
    assert err < 0.5 * shifted, (err, shifted)


def test_no_face_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    noise = (rng.random((300, 300, 3)) * 255).astype(np.uint8)
    with pytest.raises(EnrollmentError, match="no face"):
        enroll_image(noise, "noise.png")


def test_blank_and_tiny_images(tmp_path):
    with pytest.raises(EnrollmentError, match="no face"):
        enroll_image(np.full((200, 200, 3), 128, np.uint8), "grey.png")
    with pytest.raises(EnrollmentError, match="too small"):
        enroll_image(np.zeros((20, 30, 3), np.uint8), "tiny.png")


def test_unreadable_files(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(EnrollmentError, match="not a readable image"):
        enroll(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(EnrollmentError, match="empty"):
        enroll(empty)
    with pytest.raises(EnrollmentError, match="no such file"):
        enroll(tmp_path / "missing.png")


def test_face_too_small_is_refused():
    small = cv2_resize(default_photo(), 0.25)  # the face becomes ~45 px wide
    canvas = np.full((600, 600, 3), 200, np.uint8)
    canvas[:128, :128] = small
    with pytest.raises(EnrollmentError, match="(too small|no face|px wide)"):
        enroll_image(canvas, "small-face.png")


def cv2_resize(img, f):
    import cv2

    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)


def test_several_faces_largest_wins_or_refuse():
    face = default_photo()
    big = face
    small = cv2_resize(face, 0.6)
    canvas = np.full((620, 900, 3), 230, np.uint8)
    canvas[:512, :512] = big
    canvas[100 : 100 + small.shape[0], 560 : 560 + small.shape[1]] = small
    ident = enroll_image(canvas, "two.png")
    assert any("2 faces" in w for w in ident.warnings)
    assert ident.landmarks_photo[:, 0].max() < 512  # the larger (left) face was taken
    with pytest.raises(EnrollmentError, match="2 faces"):
        enroll_image(canvas, "two.png", EnrollOptions(refuse_multiple=True))


def test_identity_file_round_trip(identity, tmp_path):
    path = tmp_path / "face.npz"
    identity.save(path)
    loaded = Identity.load(path)
    np.testing.assert_array_equal(loaded.photo, identity.photo)
    np.testing.assert_allclose(loaded.neutral, identity.neutral, atol=1e-4)
    np.testing.assert_array_equal(loaded.triangles, identity.triangles)
    assert loaded.warnings == identity.warnings


def test_identity_file_rejects_corrupt_and_foreign(identity, tmp_path):
    with pytest.raises(IdentityFileError, match="no such"):
        Identity.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(IdentityFileError, match="not an identity file"):
        Identity.load(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(IdentityFileError, match="not an etf identity"):
        Identity.load(foreign)
    # A valid file with one field damaged.
    good = tmp_path / "good.npz"
    identity.save(good)
    with np.load(good) as z:
        fields = {k: z[k] for k in z.files}
    fields["neutral"] = fields["neutral"][:10]
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **fields)
    with pytest.raises(IdentityFileError, match="neutral"):
        Identity.load(damaged)
    # A future version is refused with advice.
    import json

    meta = json.loads(bytes(fields["meta"]).decode())
    meta["version"] = 99
    fields["neutral"] = identity.neutral
    fields["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    future = tmp_path / "future.npz"
    np.savez(future, **fields)
    with pytest.raises(IdentityFileError, match="version 99"):
        Identity.load(future)


@pytest.mark.devset
def test_devset_photos_enroll(devset):
    """Every devset portrait enrolls; the smiling one is flagged and neutralised."""
    for name in ["happy.png", "sad.png", "people_0.png", "full4.jpeg", "art_1.png"]:
        ident = enroll(devset / name)
        assert ident.neutral.shape == (68, 2)
    happy = enroll(devset / "happy.png")
    assert any("smiles" in w for w in happy.warnings)
    lift = enrollment._lift(happy.neutral)
    assert lift < enrollment._lift(happy.landmarks_canonical)


def test_canonical_affine_is_similarity(identity):
    m = identity.to_canonical[:, :2]
    np.testing.assert_allclose(m @ m.T, np.eye(2) * (m[0] @ m[0]), atol=1e-9)
    pts = apply_affine(identity.to_canonical, identity.landmarks_photo)
    np.testing.assert_allclose(pts, identity.landmarks_canonical, atol=1e-6)


def test_face_tracking_window_finds_the_detectors_box():
    """``detect_face_near`` (video tracking) returns what the full-frame detector returns,
    at any resolution, and None where the face has gone."""
    import cv2

    photo = default_photo()
    full = enrollment.detect_faces(photo)[0][0]
    for scale in (1.0, 3.0):  # a 3x frame is searched at the same cost
        img = cv2.resize(photo, None, fx=scale, fy=scale) if scale != 1 else photo
        prev = tuple(int(v * scale) + 6 for v in full)  # last frame's box, a little off
        box = enrollment.detect_face_near(img, prev)
        assert box is not None
        size = (full[2] - full[0]) * scale
        assert np.abs(np.array(box) - np.array(full) * scale).max() < 0.12 * size
    blank = np.full_like(photo, 127)
    assert enrollment.detect_face_near(blank, full) is None


def test_padded_video_rows_detect_like_packed_ones():
    """A frame whose rows are padded (PyAV's view of a 360-px-wide MPEG) is a strided
    array; dlib must see the same pixels as in a packed copy."""
    photo = default_photo()
    h, w = photo.shape[:2]
    padded = np.zeros((h, w + 8, 3), np.uint8)
    padded[:, :w] = photo
    view = padded[:, :w]
    assert not view.flags["C_CONTIGUOUS"]
    want = enrollment.detect_faces(photo)[0][0]
    for _ in range(3):
        assert enrollment.detect_faces(view)[0][0] == want
    assert np.array_equal(enrollment.detect_landmarks(view, want),
                          enrollment.detect_landmarks(photo, want))
