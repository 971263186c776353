"""How far the mouth opens, learned from real talking mouths around the phones.

The viseme table gives each phone a target and blends neighbours with a fixed kernel, so
how wide the mouth opens at a frame depends on the phone shown and a little on its
neighbours. Real mouths open by the whole stretch of speech around a frame: a vowel after
a pause opens wider than the same vowel between two closures. Here a ridge regression,
fitted by ``benchmarks/opening_ridge.py --write`` on the real mouths of
``../shared/data/talking`` (per frame: the inner-lip gap over the eye-corner distance,
against its clip's median), reads the phones the engine's recogniser heard and their
loudness from 200 ms before a frame to 40 ms after it (the engine's own anticipation
included) and predicts that opening.

The engine keeps its visemes and blends the two: the frame's opening becomes the mean of
its own and the regression's (the regression's scaled to the same spread around the same
mean), spread back to the engine's own amplitude, and the jaw makes up the difference
(never under /p b m f v/, which close the lips). Left out person by person, the blend's
mouth follows the real one better than either alone (benchmarks/results/opening_ridge.json).
The file holds per-phone numbers only, no image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engines.render.visemes import PHONES

FIT_PATH = Path(__file__).with_name("opening_ridge.json")
#: The shipped fit is pinned: another file is refused, never silently used.
FIT_SHA256 = "75b89892e3328d481bfd706a485b61ba904f19da24fe405e35ecb23184dca3b3"


class OpeningRidgeError(RuntimeError):
    """The opening model file is missing, damaged or foreign."""


@dataclass(frozen=True)
class OpeningRidge:
    offsets: np.ndarray  # [K] int: 10 ms rows relative to the frame's (anticipated) row
    w_phone: np.ndarray  # [K, n_phones]
    w_level: np.ndarray  # [K]
    bias: float
    #: our opening's mean and the regression's scale onto our opening's spread
    mean_opening: float
    gain: float
    #: the blend's share of the regression and the spread that restores our amplitude
    share: float
    spread: float

    @classmethod
    def from_dict(cls, d: dict) -> OpeningRidge:
        if list(d["phones"]) != list(PHONES):
            raise OpeningRidgeError("the opening model was fitted on another phone set")
        return cls(np.asarray(d["offsets"], np.int64), np.asarray(d["w_phone"], np.float32),
                   np.asarray(d["w_level"], np.float32), float(d["bias"]),
                   float(d["mean_opening"]), float(d["gain"]), float(d["share"]),
                   float(d["spread"]))

    @property
    def future_rows(self) -> int:
        return int(self.offsets.max())

    def predict(self, phones: np.ndarray, levels: np.ndarray, row: int, reach: int) -> float:
        """The regression's opening (deviation from a clip's median) at ``row`` from the
        rows heard so far (``phones``, ``levels``): see :func:`window`."""
        ph, lv = window(phones, levels, np.array([row]), self.offsets, reach)
        k = np.arange(len(self.offsets))
        return float(self.bias + self.w_phone[k, ph[0]].sum() + (self.w_level * lv[0]).sum())

    def target(self, ours: float, predicted: float) -> float:
        """The frame's opening: ``ours`` (the visemes') blended with the regression's."""
        theirs = self.mean_opening + self.gain * predicted
        mixed = (1.0 - self.share) * ours + self.share * theirs
        return max(0.0, self.mean_opening + self.spread * (mixed - self.mean_opening))


SILENCE_ID = PHONES.index("SIL")


def window(phones: np.ndarray, levels: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
           reach: int) -> tuple[np.ndarray, np.ndarray]:
    """The phone ids and loudness [N, K] the regression reads for each 10 ms row of
    ``rows`` [N], at ``offsets`` [K] from it: rows beyond ``row + reach`` repeat that row,
    rows outside what was heard (``phones``, ``levels``) are silence, as the viseme kernel
    does. The fit (benchmarks/opening_ridge.py) and the engine read through this alone."""
    rows = np.asarray(rows, np.int64)[:, None]
    idx = np.minimum(rows + offsets, rows + reach)
    n = min(len(phones), len(levels))
    if n == 0:
        return np.full(idx.shape, SILENCE_ID, np.int64), np.zeros(idx.shape, np.float32)
    ok = (idx >= 0) & (idx < n)
    at = np.clip(idx, 0, n - 1)
    return (np.where(ok, phones[at], SILENCE_ID).astype(np.int64),
            np.where(ok, levels[at], 0.0).astype(np.float32))


def load(path: str | Path | None = None) -> OpeningRidge:
    """The shipped fit (checked against its pinned hash), or ``path`` (not checked)."""
    p = FIT_PATH if path is None else Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise OpeningRidgeError(f"the opening model {p} cannot be read: {e}") from e
    if path is None and hashlib.sha256(raw).hexdigest() != FIT_SHA256:
        raise OpeningRidgeError(f"{p} does not match its pinned SHA-256; rebuild it with "
                                "`python benchmarks/opening_ridge.py --write`")
    try:
        return OpeningRidge.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        raise OpeningRidgeError(f"{p} is not an opening model: {e}") from e


@lru_cache(maxsize=1)
def default_model() -> OpeningRidge:
    return load()
