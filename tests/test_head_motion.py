"""Head motion in 3D: the 68 points turn and nod through their depth (the nose travels
farther than the cheeks), the background outside the face stays put, and speech tips the
head."""

from __future__ import annotations

import numpy as np

from engines.face.mesh68 import template_depth_68
from engines.motion.idle import HeadPose, IdleMotion, pose_points
from engines.render import texture_warp
from engines.render.compositor import paste_roi
from etf_models.canonical_face import IOD


def _pose(yaw=0.0, pitch=0.0, roll=0.0) -> HeadPose:
    return HeadPose(yaw, pitch, roll, 0.0, 0.0, 1.0)


def test_zero_pose_is_identity(identity):
    lm = identity.neutral
    out = pose_points(lm, identity.canonical_depth(), _pose(), lm[27:31].mean(0))
    np.testing.assert_allclose(out, lm, atol=1e-4)


def test_turn_and_nod_have_parallax(identity):
    lm, depth = identity.neutral, identity.canonical_depth()
    centre = lm[27:31].mean(0)
    eyes = [36, 39, 42, 45]
    turned = pose_points(lm, depth, _pose(yaw=0.08), centre) - lm
    # toward image right: the nose tip (nearest) most, the eye corners (the pivot's plane)
    # hardly, the jaw's sides (deepest) the other way
    assert turned[30, 0] > 0.04 * IOD
    assert abs(turned[eyes, 0].mean()) < 0.01 * IOD
    assert turned[[0, 16], 0].mean() < -0.03 * IOD
    nodded = pose_points(lm, depth, _pose(pitch=0.08), centre) - lm
    assert nodded[30, 1] > 0.04 * IOD and abs(nodded[eyes, 1].mean()) < 0.01 * IOD
    # a flat face (no depth) would only shift: the parallax comes from the depth
    flat = pose_points(lm, np.zeros(68), _pose(yaw=0.08), centre) - lm
    assert np.ptp(flat[:, 0]) < 0.01 * IOD


def test_depth_from_the_mesh_looks_like_a_face(identity):
    z = identity.canonical_depth() / IOD
    t = template_depth_68()
    assert z[30] < z[27] < z[[0, 16]].min(), "nose tip nearest, then the bridge, jaw far"
    assert np.corrcoef(z, t)[0, 1] > 0.8


def test_turning_keeps_the_background(identity):
    warp = texture_warp.prepare(identity)
    lm = identity.neutral
    turned = pose_points(lm, identity.canonical_depth(), _pose(yaw=0.1, pitch=0.06),
                         lm[27:31].mean(0))
    still = paste_roi(identity.photo, texture_warp.render_roi(warp, lm), warp.roi,
                      warp.feather)
    moved = paste_roi(identity.photo, texture_warp.render_roi(warp, turned), warp.roi,
                      warp.feather)
    x0, y0, w, h = warp.roi
    outside = np.ones(identity.photo.shape[:2], bool)
    outside[y0:y0 + h, x0:x0 + w] = False
    assert np.array_equal(still[outside], moved[outside])
    # inside the working region, what lies well outside the face (hair, background,
    # shoulders) moves at most a couple of pixels at an idle turn (2.5 degrees)
    import cv2

    from etf_models.canonical_face import apply_affine

    idle_turn = pose_points(lm, identity.canonical_depth(), _pose(yaw=0.045),
                            lm[27:31].mean(0))
    disp = np.linalg.norm(texture_warp.backward_map(warp, idle_turn) - warp.grid, axis=-1)
    hull = cv2.convexHull(apply_affine(warp.canon_to_roi, lm).astype(np.float32))
    iod_px = IOD * np.hypot(*warp.canon_to_roi[:, 0])
    far = [disp[y, x] for y in range(0, h, 6) for x in range(0, w, 6)
           if cv2.pointPolygonTest(hull, (float(x), float(y)), True) < -iod_px]
    assert max(far) < 2.5, max(far)
    # the face itself did move
    face = identity.canonical_to_photo(lm[27:36]).astype(int)
    assert np.abs(still[face[:, 1], face[:, 0]].astype(int)
                  - moved[face[:, 1], face[:, 0]].astype(int)).mean() > 5


def test_speech_tips_the_head_forward():
    rng = np.random.default_rng(0)
    idle = IdleMotion(rng)
    ts = np.arange(0, 20, 0.04)
    quiet = np.array([idle.at(t, 0.0).pitch for t in ts])
    loud = np.array([idle.at(t, 1.0).pitch for t in ts])
    assert (loud - quiet).min() > 0.03
    yaw = np.array([idle.at(t, 0.0).yaw for t in ts])
    assert 0.005 < np.abs(yaw).max() < 0.06, "a few degrees at most"
