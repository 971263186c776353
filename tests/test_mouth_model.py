"""The learned mouth interior: its patch, its pinned weights, where and what it paints."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.motion import face_motion as M
from engines.render import mouth_model, texture_warp
from etf_models import mouth_patch as mp
from etf_models.canonical_face import apply_affine


def _open(identity, jaw: float) -> np.ndarray:
    p = np.zeros(M.N_PARAMS, np.float32)
    p[[M.P["jaw_open"], M.P["lips_part"]]] = (jaw, 0.3)
    return M.apply(identity.neutral, M.build_fields(identity.neutral), p)


def test_patch_is_anchored_to_the_skull(identity):
    """A head shift moves the patch with it: the lips' coverage in the patch is the same,
    while the jaw's drop moves only the lower lip in it."""
    lm = _open(identity, 0.5)
    _, c = mp.conditions(lm, identity.neutral, np.array([150.0, 90, 80]))
    _, shifted = mp.conditions(lm + (7.0, -4.0), identity.neutral, np.array([150.0, 90, 80]))
    assert np.abs(c[:2] - shifted[:2]).max() < 0.02
    assert np.allclose(c[4], shifted[4])
    _, wider = mp.conditions(_open(identity, 0.9), identity.neutral, np.array([150.0, 90, 80]))
    assert wider[0].sum() > 1.3 * c[0].sum() and wider[4, 0, 0] > c[4, 0, 0]
    # resting lips: barely a line shows
    _, shut = mp.conditions(identity.neutral, identity.neutral, np.array([150.0, 90, 80]))
    assert shut[0].sum() < 0.25 * c[0].sum()


def test_shipped_weights_are_pinned(tmp_path):
    model = mouth_model.default_model()
    assert model.path == mouth_model.WEIGHTS
    bad = tmp_path / "mouth_interior.onnx"
    bad.write_bytes(b"not a network")
    with pytest.raises(mouth_model.MouthModelError, match="not a mouth-interior network"):
        mouth_model.MouthModel(str(bad))


def test_learned_interior_stays_inside_the_lips_and_is_not_flat(identity):
    """Only the interior differs from the painted mouth's frame (the warp, the lips, the
    lids are the same), and it holds a dark cavity and lighter teeth or tongue."""
    warp = texture_warp.prepare(identity, expression=False, learned_mouth=True)
    lm = _open(identity, 0.7)
    painted = texture_warp.render_roi(texture_warp.prepare(identity, expression=False), lm)
    out = texture_warp.render_roi(warp, lm)
    dst = apply_affine(warp.canon_to_roi, lm)
    h, w = out.shape[:2]
    inside = mp.coverage((h, w), mp.smooth_ring(dst[mp.INNER_RING])) > 0
    # the painted mouth's edge is as soft as the photo: it reaches a few pixels past it
    reach = int(np.ceil(2 * warp.photo_blur)) + 1
    inside = cv2.dilate(inside.astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)) > 0
    changed = np.abs(out.astype(int) - painted.astype(int)).max(-1) > 0
    assert changed.sum() > 200
    assert not (changed & ~inside).any()
    # a mouth, not a flat fill: dark cavity and lighter teeth/tongue inside
    lum = out[mp.coverage((h, w), mp.smooth_ring(dst[mp.INNER_RING])) > 0.99].mean(-1)
    assert np.percentile(lum, 90) - np.percentile(lum, 10) > 30
