"""The eyeball stays round while the lids move over it (engines.render.eyeball)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engines.render import texture_warp
from etf_models.canonical_face import LOWER_LIDS as LOWER
from etf_models.canonical_face import UPPER_LIDS as UPPER
from etf_models.canonical_face import apply_affine


@pytest.fixture(scope="module")
def warp(identity):
    return texture_warp.prepare(identity, expression=False)


def _lids(identity, up: float, down: float = 0.0) -> np.ndarray:
    """Neutral landmarks with the upper lids raised by ``up`` and the lower ones lowered
    by ``down`` (shares of each eye's opening)."""
    lm = identity.neutral.copy()
    opening = (lm[LOWER, 1] - lm[UPPER, 1]).mean()
    lm[UPPER, 1] -= up * opening
    lm[LOWER, 1] += down * opening
    return lm


def _iris_rows(warp, img: np.ndarray) -> tuple[float, float]:
    """(iris height, brightness just above the iris) on the image-left eye (ROI pixels):
    the dark run of rows through the iris centre, each row's darkest pixel across the
    iris's middle (so a catch-light does not split it)."""
    x, y, r = warp.eyes[0].iris
    band = img[:, int(x - 0.6 * r) : int(x + 0.6 * r) + 1].astype(float).mean(axis=2)
    col = band.min(axis=1)
    rows = np.arange(int(y - 3 * r), int(y + 3 * r))
    thr = col[rows].min() + 0.5 * (np.median(col[rows]) - col[rows].min())
    top = bottom = int(round(y))
    while col[top - 1] < thr:
        top -= 1
    while col[bottom + 1] < thr:
        bottom += 1
    return float(bottom - top + 1), float(band[top - 3 : top].mean())


def test_the_photo_has_both_eyeballs_and_their_irises(identity, warp):
    assert len(warp.eyes) == 2
    for eye in warp.eyes:
        centre = eye.src_ring.mean(axis=0)
        assert np.hypot(*(eye.iris[:2] - centre)) < 0.3 * np.ptp(eye.src_ring[:, 0])
        assert 0.12 < eye.iris[2] / np.ptp(eye.src_ring[:, 0]) < 0.3
        assert eye.sclera.mean() > eye.iris_colour.mean() + 40  # the white is lighter


def test_eyes_at_rest_are_drawn_by_the_warp_unchanged(identity, warp):
    lm = identity.neutral
    a = texture_warp.render_roi(warp, lm)
    b = texture_warp.render_roi(replace(warp, eyes=()), lm)
    assert np.array_equal(a, b)


def test_widened_eyes_bare_the_white_and_keep_the_iris_round(identity, warp):
    """A raised upper lid shows white above the iris; the warp alone dragged the iris
    into a tall oval (and no white)."""
    rest_h, _ = _iris_rows(warp, texture_warp.render_roi(warp, identity.neutral))
    lm = _lids(identity, 0.45)
    wide = texture_warp.render_roi(warp, lm)
    old = texture_warp.render_roi(replace(warp, eyes=()), lm)
    h, above = _iris_rows(warp, wide)
    h_old, above_old = _iris_rows(warp, old)
    assert abs(h - rest_h) <= 0.15 * rest_h + 1, (h, rest_h)
    assert h_old > h + 2, (h_old, h)  # what this replaces: the stretched iris
    assert above > above_old + 15, (above, above_old)  # white, not lid shadow


def test_narrowed_eyes_cover_the_iris_instead_of_squashing_it(identity, warp):
    """A lowered upper lid (a squint) slides over the iris: the part it leaves bare is
    drawn as it was (the warp squashed the iris toward the lower lid)."""
    x, y, r = warp.eyes[0].iris
    lm = identity.neutral.copy()
    opening = (lm[LOWER, 1] - lm[UPPER, 1]).mean()
    lm[UPPER, 1] += 0.35 * opening
    rest = texture_warp.render_roi(warp, identity.neutral)
    squint = texture_warp.render_roi(warp, lm)
    old = texture_warp.render_roi(replace(warp, eyes=()), lm)

    def lower_iris(img):  # the iris's lower half, which the lowered lid leaves bare
        return img[int(y) : int(y + 0.8 * r), int(x - 0.8 * r) : int(x + 0.8 * r)].astype(float)

    assert np.abs(lower_iris(squint) - lower_iris(rest)).mean() < 3
    assert np.abs(lower_iris(old) - lower_iris(rest)).mean() > 8  # the warp squashed it


def test_the_eyes_change_nothing_outside_the_openings(identity, warp):
    lm = _lids(identity, 0.45, 0.2)
    a = texture_warp.render_roi(warp, lm).astype(int)
    b = texture_warp.render_roi(replace(warp, eyes=()), lm).astype(int)
    ys, xs = np.nonzero(np.abs(a - b).max(axis=2) > 0)
    assert len(xs) > 50  # the eyes did change
    dst = apply_affine(warp.canon_to_roi, lm)
    for eye in (dst[36:42], dst[42:48]):
        lo, hi = eye.min(0) - 2, eye.max(0) + 2
        inside = (xs >= lo[0]) & (xs <= hi[0]) & (ys >= lo[1]) & (ys <= hi[1])
        xs, ys = xs[~inside], ys[~inside]
    assert len(xs) == 0, list(zip(xs[:5], ys[:5], strict=False))
