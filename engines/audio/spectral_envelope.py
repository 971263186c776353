"""The spectrum's coarse shape per 10 ms row: what the mouth is doing, heard in the sound.

The jaw and the lips shape the vocal tract, and the tract shapes the spectrum: an open jaw
raises the first formant, spread lips raise the second, rounded lips lower every formant.
A phone recogniser hears that too, but on real-world speech it often hears the wrong
phone, while the spectrum's envelope is there in every row. The first few cepstra (the
log mel spectrum's slow variation across frequency) carry the envelope and little of the
voice's pitch or the speaker's own timbre.

:class:`SpectralEnvelope` streams them on the loudness rows' grid (10 ms): row ``r`` is
the 32 ms window that ends where loudness row ``r`` ends, so it is final exactly when that
row is and reading it costs no latency the loudness does not already cost. Each row is
taken from a running mean of the rows where the speaker is heard (the loudness gate), so
the microphone's and the voice's own colour drop out as they do from the loudness (rows
below the gate are zero: the spectrum of silence or noise says nothing of the mouth, and
read as a shut mouth it held the jaw back for a frame at every speech onset); the
mean starts from a typical speaker's (the fit's ``mean0``) and moves with a time constant
of ``tau_rows`` loud rows. Whole-file and streaming give the same rows however the audio
is chunked.
"""

from __future__ import annotations

import numpy as np

from etf_models.speech_features import N_MFCC, WINDOW, mfcc_frames

HOP = 160  # 10 ms: the loudness rows' hop (DeepSpeech's 32 ms window, every 10 ms)


class SpectralEnvelope:
    """Streaming cepstra [n_cep] per 10 ms row, normalised by a running mean of the loud
    rows (see module docstring). ``mean0`` [n_cep]: where the mean starts; ``gate``: the
    loudness (0..1) from which a row counts as heard speech."""

    def __init__(self, mean0: np.ndarray, tau_rows: float = 300.0, gate: float = 0.1) -> None:
        self.mean0 = np.asarray(mean0, np.float64).ravel()
        if self.mean0.size < 1 or self.mean0.size > N_MFCC:
            raise ValueError(f"mean0 must hold 1..{N_MFCC} cepstra, not {self.mean0.size}")
        if tau_rows < 1.0:
            raise ValueError("tau_rows must be at least 1")
        self.n_cep = self.mean0.size
        self.tau_rows = float(tau_rows)
        self.gate = float(gate)
        self.reset()

    @classmethod
    def from_settings(cls, settings: dict) -> SpectralEnvelope:
        """A stream from a fit's settings ``{"mean0", "tau_rows", "gate"}``."""
        return cls(np.asarray(settings["mean0"]), settings["tau_rows"], settings["gate"])

    def reset(self) -> None:
        # the first windows reach back before the audio: zeros, as if silence preceded it
        self._tail = np.zeros(WINDOW - HOP, np.float32)
        self.mean = self.mean0.copy()

    def raw(self, pcm: np.ndarray) -> np.ndarray:
        """Unnormalised cepstra [n, n_cep] for the complete 10 ms rows of the new audio
        (the stream's state advances)."""
        x = np.concatenate([self._tail, np.asarray(pcm, np.float32).ravel()])
        n = (len(x) - (WINDOW - HOP)) // HOP
        if n <= 0:
            self._tail = x
            return np.zeros((0, self.n_cep), np.float32)
        idx = np.arange(n)[:, None] * HOP + np.arange(WINDOW)[None, :]
        self._tail = x[n * HOP:]
        # DeepSpeech's own MFCC kernel on 10 ms steps; its first cepstra are these
        return mfcc_frames(x[idx])[:, : self.n_cep]

    def normalise(self, raw: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """``raw`` rows [n, n_cep] less the running mean of the loud ones (``levels`` [n],
        the same rows' loudness 0..1), zero where the row is not loud; the mean moves on
        (in place)."""
        out = np.empty(raw.shape, np.float32)
        a = 1.0 / self.tau_rows
        mean = self.mean
        for i, (row, level) in enumerate(zip(raw.astype(np.float64), levels, strict=True)):
            if level > self.gate:
                mean += a * (row - mean)
                out[i] = row - mean
            else:  # silence or noise: its spectrum says nothing of the mouth
                out[i] = 0.0
        return out

    def push(self, pcm: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Normalised cepstra [n, n_cep] for the new audio's complete rows; ``levels``: the
        loudness of the same rows (:class:`engines.render.landmark_default.Loudness` gives
        exactly one per row of the same audio)."""
        raw = self.raw(pcm)
        if len(raw) != len(levels):
            raise ValueError(f"{len(raw)} spectral rows but {len(levels)} loudness rows")
        return self.normalise(raw, levels)
