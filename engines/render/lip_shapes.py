"""The lips' shape for a given opening and width, learned from real talking mouths.

The engine decides how far the mouth opens and how wide it is (visemes blended with
:mod:`engines.render.mouth_ridge`); the hand-made fields then shape the lips (the jaw
dropping the lower lip, rounding or stretching moving the corners). Real lips take other
shapes at the same opening and width: the upper lip lifts about a third as far as the
lower one drops, the lower lip keeps its thickness instead of dropping its outer edge
twice as far as its inner one, and rounded lips pull their inner corners in with the
outer ones.

Here the shape is what real mouths show at that opening and width. Fitted by
``benchmarks/lip_shapes.py --write`` on the talking clips of ``../shared/data/talking``
(dlib's 68 points per frame, eye-aligned, the head's nod and turn taken out): each lip
point's displacement from the speaker's rest face, taken from the nose's base (point 33),
in inter-ocular distances, regressed on the opening's change and the width's change
above and below rest (three shape vectors, no intercept: at rest the lips are the face's
own), made left-right symmetric. The lips' opening and width are nearly linear in those
points and are regressors, so the fitted shape keeps them, and a correcting step keeps
them to within 0.008 (median 0.0001): what the engine decided stays, only the shape
changes. Left out person by person, the engine's lips come nearer the real ones (median
person 0.049 -> 0.045 inter-ocular distances, 10 of 13 people;
benchmarks/results/lip_shapes.json). The file holds 120 numbers, no image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engines.render.mouth_ridge import mouth_width
from engines.render.pinned import read_pinned_json
from etf_models.canonical_face import IOD, mouth_opening

FIT_PATH = Path(__file__).with_name("lip_shapes.json")
#: The shipped fit is pinned: another file is refused, never silently used.
FIT_SHA256 = "4a22efdec4546493c5d7e49a60b82f335c51c2c2425ddfd80a1b98bec4748649"
#: the points the shape moves: the outer and inner lips
POINTS = np.arange(48, 68)
#: the point the lips are measured from (the nose's base: speech moves it least)
ANCHOR = 33
#: Steps that bring the shape's own opening and width onto the asked ones (the fit alone
#: keeps them to within ~0.01 of the outer eye-corner distance: the measures are norms,
#: not quite linear in the points), and the openings over which the opening's step fades in
#: (from 0.015: faded in only from 0.03, the first frame of a word opened 0.003-0.004 short
#: of the engine's opening and read as still shut, a frame late at every speech onset)
CORRECTIONS = 1
OPEN_ENOUGH = (0.015, 0.035)


class LipShapesError(RuntimeError):
    """The lip-shape file is missing, damaged or foreign."""


@dataclass(frozen=True)
class LipShapes:
    """Per unit of the opening's change, the width's change above rest and below it: the
    lips' displacement [3, 20, 2] in inter-ocular distances."""

    basis: np.ndarray

    @classmethod
    def from_dict(cls, d: dict) -> LipShapes:
        try:
            basis = np.asarray([d["opening"], d["widening"], d["narrowing"]], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise LipShapesError(f"not a lip-shape fit: {e}") from None
        if basis.shape != (3, len(POINTS), 2) or not np.isfinite(basis).all():
            raise LipShapesError(f"a lip-shape fit holds 3 x {len(POINTS)} x 2 numbers, "
                                 f"not {basis.shape}")
        return cls(basis)

    def to_dict(self) -> dict:
        b = np.round(self.basis, 6)
        return {"opening": b[0].tolist(), "widening": b[1].tolist(),
                "narrowing": b[2].tolist()}

    def shape(self, neutral: np.ndarray, d_open: float, d_width: float,
              rest: tuple[float, float] | None = None) -> np.ndarray:
        """The lips [20, 2] (canonical px, from the anchor) of a face whose rest is
        ``neutral`` [68,2], opened by ``d_open`` and widened by ``d_width`` (both in the
        measures' units: over the outer eye-corner distance). ``rest``: the neutral's own
        opening and width, when the caller has them."""
        o0, w0 = _measures(neutral) if rest is None else rest
        at_rest = neutral[POINTS] - neutral[ANCHOR]
        o, w = d_open, d_width
        lips = self._lips(at_rest, o, w)
        lm = np.array(neutral, np.float64)
        # (faded in between OPEN_ENOUGH's two ends, so no frame jumps as it crosses them)
        opening_step = float(np.clip((d_open - OPEN_ENOUGH[0])
                                     / (OPEN_ENOUGH[1] - OPEN_ENOUGH[0]), 0.0, 1.0))
        for _ in range(CORRECTIONS):
            # the measures are nearly linear in the points: a step brings them on (the
            # opening only where the lips are clearly apart: at a seam the inner lips
            # cross and the gap's size no longer grows with the step)
            lm[POINTS] = neutral[ANCHOR] + lips
            got_o, got_w = _measures(lm)
            o += opening_step * (d_open - (got_o - o0))
            w += d_width - (got_w - w0)
            lips = self._lips(at_rest, o, w)
        return lips

    def _lips(self, at_rest: np.ndarray, d_open: float, d_width: float) -> np.ndarray:
        x = np.array([d_open, max(d_width, 0.0), min(d_width, 0.0)])
        return at_rest + IOD * np.tensordot(x, self.basis, 1)

    def apply(self, lm: np.ndarray, neutral: np.ndarray, weight: float,
              rest: tuple[float, float] | None = None) -> np.ndarray:
        """``lm`` [68,2] with its lips moved ``weight`` (0..1) of the way to the learned
        shape for its own opening and width. ``rest``: the neutral's own opening and width,
        when the caller keeps them (the engine does: they are the same every frame)."""
        if weight <= 0.0:
            return lm
        rest = _measures(neutral) if rest is None else rest
        got = _measures(lm)
        want = lm[ANCHOR] + self.shape(neutral, got[0] - rest[0], got[1] - rest[1], rest)
        out = lm.copy()
        out[POINTS] += min(weight, 1.0) * (want - lm[POINTS])
        return out


def _measures(lm: np.ndarray) -> tuple[float, float]:
    return float(mouth_opening(lm)), float(mouth_width(lm))


def load(path: str | Path | None = None) -> LipShapes:
    """The shipped fit (checked against its pinned hash), or ``path`` (not checked)."""
    return LipShapes.from_dict(read_pinned_json(
        path, FIT_PATH, FIT_SHA256, LipShapesError, "lip-shape fit",
        "python benchmarks/lip_shapes.py --write"))


@lru_cache(maxsize=1)
def default_model() -> LipShapes:
    return load()
