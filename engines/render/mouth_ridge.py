"""How far the mouth opens and how wide it is, learned from real talking mouths around
the phones.

The viseme table gives each phone a target and blends neighbours with a fixed kernel, so
the mouth's shape at a frame depends on the phone shown and a little on its neighbours.
Real mouths move with the whole stretch of speech around a frame: a vowel after a pause
opens wider than the same vowel between two closures, and lips round ahead of a /w/ or an
/uw/ over the phones before it. Here two ridge regressions, fitted by
``benchmarks/mouth_ridge.py --write`` on the real mouths of ``../shared/data/talking``,
read the phones the engine's recogniser heard from 200 ms before a frame to 40 ms after
it (the engine's own anticipation included), and the loudness to 60 ms after it, and
predict, per frame and against the clip's median:

* ``opening``: the inner-lip gap over the eye-corner distance (:func:`mouth_opening`);
* ``width``: the mouth corners' distance over the eye-corner distance (:func:`mouth_width`).

Both regressions also read the spectrum's coarse shape over the same rows as the loudness
(:mod:`engines.audio.spectral_envelope`: 8 cepstra per 10 ms row, each taken from a running
mean of the speaker's own): the jaw and lips shape the spectrum in every row, heard even
where the recogniser hears the wrong phone (real-world speech, a far microphone). Left out
person by person it lifts the opening's blend for all 13 people (median 0.442 -> 0.488).

The engine keeps its visemes and blends each with its regression: the frame's value
becomes the mean of its own and the regression's (the regression's scaled to the same
spread around the same mean, both taken from the face's rest value where the fit says
so), spread back to the engine's own amplitude (the width's widening further: real mouths
widen about 2.5 times as far beyond their median as the visemes do, and narrow about as
far). The jaw makes up the opening's difference
and lip rounding or stretching the width's (neither under /p b m f v/, which close the
lips). The loudness reaches further ahead than the phones because it is known as soon
as the audio arrives, while the recogniser commits phones a fixed delay (60 ms live)
behind it: live, where the phones stop at the frame's own row, the jaw still moves with
the sound about to come, at no extra latency. Left out person by person, each blend
follows the real mouth better than the visemes alone
(benchmarks/results/mouth_ridge.json). The file holds per-phone numbers only, no image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engines.render.pinned import read_pinned_json
from engines.render.visemes import PHONES
from etf_models.canonical_face import mouth_opening

FIT_PATH = Path(__file__).with_name("mouth_ridge.json")
#: The shipped fit is pinned: another file is refused, never silently used.
FIT_SHA256 = "a39e91d3dcdf2c907ec47a4e5431169d09faf3efebe1c0292f65ce3beaaf5c95"
#: What each regression predicts, in the file's order.
TARGETS = ("opening", "width")


class MouthRidgeError(RuntimeError):
    """The mouth model file is missing, damaged or foreign."""


def mouth_width(landmarks: np.ndarray) -> np.ndarray:
    """Mouth-corner distance over the outer-eye-corner distance, for [...,68,2] landmarks."""
    lm = np.asarray(landmarks)
    return (np.linalg.norm(lm[..., 54, :] - lm[..., 48, :], axis=-1)
            / np.linalg.norm(lm[..., 45, :] - lm[..., 36, :], axis=-1))


#: Each target's measure on [...,68,2] landmarks.
MEASURES = {"opening": mouth_opening, "width": mouth_width}


@dataclass(frozen=True)
class PhoneRidge:
    """One regression over the phone window, and how its output blends with the engine's."""

    offsets: np.ndarray  # [K] int: 10 ms rows relative to the frame's (anticipated) row
    w_phone: np.ndarray  # [K, n_phones]
    w_level: np.ndarray  # [L]
    bias: float
    #: the engine's value's mean (from the face's rest value when ``from_rest``) and the
    #: regression's scale onto its spread
    mean: float
    gain: float
    #: the blend's share of the regression and the spread that restores our amplitude
    share: float
    spread: float
    #: True: the engine's values are taken from the face's rest value (faces differ at
    #: rest: a mouth's width), False: as they are (a mouth at rest is shut)
    from_rest: bool
    #: [L] int: the loudness rows read, relative to the same row; they may reach further
    #: ahead than the phones' (the loudness of the audio is known as soon as it arrives,
    #: the phones only once the recogniser commits them)
    level_offsets: np.ndarray
    #: the spread below the mean, where it differs from ``spread`` above it (real mouths
    #: widen further than they narrow around their median); None: the same
    spread_below: float | None = None
    #: [C] int: the spectral envelope's rows read (:class:`MouthRidge.envelope`), relative
    #: to the same row, and their weights [C, n_cep]; None: the phones and loudness alone
    cep_offsets: np.ndarray | None = None
    w_cep: np.ndarray | None = None

    @classmethod
    def from_dict(cls, d: dict) -> PhoneRidge:
        if list(d["phones"]) != list(PHONES):
            raise MouthRidgeError("the mouth model was fitted on another phone set")
        ridge = cls(np.asarray(d["offsets"], np.int64), np.asarray(d["w_phone"], np.float32),
                    np.asarray(d["w_level"], np.float32), float(d["bias"]), float(d["mean"]),
                    float(d["gain"]), float(d["share"]), float(d["spread"]),
                    bool(d["from_rest"]), np.asarray(d["level_offsets"], np.int64),
                    None if d.get("spread_below") is None else float(d["spread_below"]),
                    None if d.get("cep_offsets") is None
                    else np.asarray(d["cep_offsets"], np.int64),
                    None if d.get("w_cep") is None else np.asarray(d["w_cep"], np.float32))
        if (ridge.w_phone.shape != (len(ridge.offsets), len(PHONES))
                or ridge.w_level.shape != ridge.level_offsets.shape
                or (ridge.cep_offsets is None) != (ridge.w_cep is None)
                or (ridge.w_cep is not None
                    and (ridge.w_cep.ndim != 2 or len(ridge.w_cep) != len(ridge.cep_offsets)))):
            raise MouthRidgeError("the mouth model's weights do not match its rows")
        return ridge

    @property
    def future_rows(self) -> int:
        return int(self.offsets.max())

    @property
    def level_future_rows(self) -> int:
        """Loudness (and spectral envelope) rows past a frame's row it reads."""
        cep = 0 if self.cep_offsets is None else int(self.cep_offsets.max())
        return max(int(self.level_offsets.max()), cep)

    def predict(self, phones: np.ndarray, levels: np.ndarray, row: int, reach: int,
                level_reach: int | None = None, cepstra: np.ndarray | None = None) -> float:
        """The regression's value (deviation from a clip's median) at ``row`` from the
        rows heard so far (``phones``, ``levels``, and the spectral envelope's rows
        ``cepstra`` [n, n_cep] when the fit reads them): see :func:`window`."""
        ph, lv = window(phones, levels, np.array([row]), self.offsets, reach,
                        self.level_offsets, level_reach)
        k = np.arange(len(self.offsets))
        out = self.bias + self.w_phone[k, ph[0]].sum() + (self.w_level * lv[0]).sum()
        if self.w_cep is not None:
            if cepstra is None:
                raise MouthRidgeError("this mouth model reads the spectral envelope")
            cep = cepstra_window(cepstra, np.array([row]), self.cep_offsets,
                                 reach if level_reach is None else level_reach)
            out += float((self.w_cep * cep[0]).sum())
        return float(out)

    def target(self, ours: float, predicted: float, rest: float = 0.0) -> float:
        """The frame's value: ``ours`` (the visemes') blended with the regression's;
        ``rest``: the face's value at rest (used when the fit is ``from_rest``)."""
        base = rest if self.from_rest else 0.0
        theirs = self.mean + self.gain * predicted
        mixed = (1.0 - self.share) * (ours - base) + self.share * theirs
        spread = (self.spread if mixed >= self.mean or self.spread_below is None
                  else self.spread_below)
        return max(0.0, base + self.mean + spread * (mixed - self.mean))


@dataclass(frozen=True)
class MouthRidge:
    """The shipped fit: one :class:`PhoneRidge` per target, and the spectral envelope's
    settings when they read it."""

    opening: PhoneRidge
    #: None: the width stays as the visemes and the learned opening make it (the width is
    #: fitted on that engine)
    width: PhoneRidge | None
    #: {"mean0": [n_cep], "tau_rows": float, "gate": float}: the
    #: :class:`engines.audio.spectral_envelope.SpectralEnvelope` the regressions read;
    #: None: they read the phones and loudness alone
    envelope: dict | None = None

    @classmethod
    def from_dict(cls, d: dict) -> MouthRidge:
        if not isinstance(d, dict) or not set(TARGETS) <= set(d) <= {*TARGETS, "envelope"}:
            raise MouthRidgeError(f"the mouth model must hold {', '.join(TARGETS)} "
                                  "(and optionally envelope)")
        ridges = {t: PhoneRidge.from_dict(d[t]) for t in TARGETS}
        env = d.get("envelope")
        reads = [r.w_cep for r in ridges.values() if r.w_cep is not None]
        if env is not None:
            env = {"mean0": [float(v) for v in env["mean0"]],
                   "tau_rows": float(env["tau_rows"]), "gate": float(env["gate"])}
        if bool(reads) != (env is not None) or any(w.shape[1] != len(env["mean0"])
                                                   for w in reads):
            raise MouthRidgeError("the mouth model's envelope does not match its weights")
        return cls(**ridges, envelope=env)

    def spectral_envelope(self):
        """A fresh :class:`SpectralEnvelope` stream for these regressions (None if they do
        not read one)."""
        if self.envelope is None:
            return None
        from engines.audio.spectral_envelope import SpectralEnvelope

        return SpectralEnvelope.from_settings(self.envelope)


SILENCE_ID = PHONES.index("SIL")


def window(phones: np.ndarray, levels: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
           reach: int, level_offsets: np.ndarray | None = None,
           level_reach: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The phone ids [N, K] and loudness [N, L] the regressions read for each 10 ms row of
    ``rows`` [N]: phones at ``offsets`` [K] from it, loudness at ``level_offsets`` [L]
    (default the same); phone rows beyond ``row + reach`` repeat that row, loudness rows
    beyond ``row + level_reach`` (default ``reach``) that one; rows outside what was
    heard (``phones``, ``levels``) are silence, as the viseme kernel does. The fit
    (benchmarks/mouth_ridge.py) and the engine read through this alone."""
    rows = np.asarray(rows, np.int64)[:, None]
    level_offsets = offsets if level_offsets is None else level_offsets
    level_reach = reach if level_reach is None else level_reach
    return (_heard(phones, np.minimum(rows + offsets, rows + reach), SILENCE_ID, np.int64),
            _heard(levels, np.minimum(rows + level_offsets, rows + level_reach), 0.0,
                   np.float32))


def cepstra_window(cepstra: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
                   reach: int) -> np.ndarray:
    """The spectral envelope's rows [N, C, n_cep] at ``offsets`` [C] from each of ``rows``
    [N]; rows beyond ``row + reach`` repeat that row, rows not heard are zero (the running
    mean: nothing known)."""
    rows = np.asarray(rows, np.int64)[:, None]
    return _heard(cepstra, np.minimum(rows + offsets, rows + reach), 0.0, np.float32)


def _heard(values: np.ndarray, idx: np.ndarray, unheard, dtype) -> np.ndarray:
    """``values`` (rows first, [n, ...]) at the rows ``idx``; ``unheard`` where a row is
    outside them."""
    values = np.asarray(values)
    if len(values) == 0:
        return np.full(idx.shape + values.shape[1:], unheard, dtype)
    ok = (idx >= 0) & (idx < len(values))
    ok = ok.reshape(ok.shape + (1,) * (values.ndim - 1))
    return np.where(ok, values[np.clip(idx, 0, len(values) - 1)], unheard).astype(dtype)


def load(path: str | Path | None = None) -> MouthRidge:
    """The shipped fit (checked against its pinned hash), or ``path`` (not checked)."""
    d = read_pinned_json(path, FIT_PATH, FIT_SHA256, MouthRidgeError, "mouth model",
                         "python benchmarks/mouth_ridge.py --write")
    try:
        return MouthRidge.from_dict(d)
    except (ValueError, KeyError, TypeError) as e:
        raise MouthRidgeError(f"{FIT_PATH if path is None else path} is not a mouth model: "
                              f"{e}") from e


@lru_cache(maxsize=1)
def default_model() -> MouthRidge:
    return load()
