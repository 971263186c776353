"""DeepSpeech 0.9.x input features, bit-for-bit in spirit with TensorFlow's audio ops.

DeepSpeech 0.9.x computes ``audio_spectrogram(window 512, stride 320, magnitude_squared)``
then ``mfcc(sample_rate 16000, dct_coefficient_count 26, upper_frequency_limit 8000)`` with
TensorFlow's defaults (40 mel channels from 20 Hz, log floor 1e-12, orthonormal-scaled
DCT-II). This module reimplements those kernels in NumPy so official weights see the
features they were trained on, without TensorFlow:

- spectrogram: periodic Hann window of 512 samples, FFT of 512, |X|^2 per 20 ms step,
  only complete windows (frame ``i`` covers samples ``[320 i, 320 i + 512)``);
- mel filterbank: TensorFlow's own construction (``mfcc_mel_filterbank.cc``): triangular
  weights laid on FFT bins by mel distance, applied to the *magnitude* (sqrt of the input);
- ``log(max(x, 1e-12))`` then ``DCT-II`` scaled by ``sqrt(2 / channels)``.

``StreamingMfcc`` gives the same rows however the audio is chunked. ``context_windows``
builds the model's ``2 * n_context + 1`` frame windows with zero frames at both ends, as
DeepSpeech does (``SAME`` padding in training, zero-primed buffers when streaming).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # 32 ms
STEP = 320  # 20 ms: 50 feature rows per second
N_MFCC = 26
N_MEL = 40
LOWER_HZ = 20.0
UPPER_HZ = 8000.0
LOG_FLOOR = 1e-12


def _mel(hz: np.ndarray | float) -> np.ndarray | float:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


@lru_cache(maxsize=4)
def mel_weights(n_bins: int = WINDOW // 2 + 1, n_mel: int = N_MEL,
                sample_rate: int = SAMPLE_RATE, lower: float = LOWER_HZ,
                upper: float = UPPER_HZ) -> np.ndarray:
    """[n_bins, n_mel] matrix with TensorFlow's triangular mel weighting."""
    mel_low, mel_high = float(_mel(lower)), float(_mel(upper))
    spacing = (mel_high - mel_low) / (n_mel + 1)
    centres = mel_low + spacing * np.arange(1, n_mel + 2)  # n_mel + 1 centres
    hz_per_bin = 0.5 * sample_rate / (n_bins - 1)
    start = int(1.5 + lower / hz_per_bin)
    end = int(upper / hz_per_bin)
    w = np.zeros((n_bins, n_mel), np.float64)
    channel = 0
    for i in range(start, min(end, n_bins - 1) + 1):
        m = float(_mel(i * hz_per_bin))
        while channel < n_mel and centres[channel] < m:
            channel += 1
        band = channel - 1  # the channel whose right (falling) side this bin is on
        if band >= 0:
            right = (centres[band + 1] - m) / (centres[band + 1] - centres[band])
        else:
            right = (centres[0] - m) / (centres[0] - mel_low)
        if band >= 0:
            w[i, band] += right
        if band + 1 < n_mel:
            w[i, band + 1] += 1.0 - right
    return w


@lru_cache(maxsize=4)
def dct_matrix(n_out: int = N_MFCC, n_in: int = N_MEL) -> np.ndarray:
    """[n_in, n_out] DCT-II as TensorFlow's ``MfccDct``: sqrt(2/n) cos(pi i (j+.5) / n)."""
    i = np.arange(n_out)[None, :]
    j = np.arange(n_in)[:, None]
    return math.sqrt(2.0 / n_in) * np.cos(math.pi / n_in * i * (j + 0.5))


@lru_cache(maxsize=2)
def _hann(n: int = WINDOW) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic


@lru_cache(maxsize=64)
def vtlp_matrix(alpha: float, n_bins: int = WINDOW // 2 + 1, boundary_hz: float = 4800.0,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[n_bins, n_bins] linear map that warps a spectrum's frequency axis by ``alpha``
    (vocal-tract-length perturbation, Jaitly & Hinton 2013), for training data only.

    A component at ``f`` moves to ``alpha * f`` below the boundary ``boundary_hz *
    min(alpha, 1) / alpha``; above it the warp is the straight line that keeps the Nyquist
    frequency fixed. ``spectrum @ vtlp_matrix(alpha)`` reads each output bin from the
    source frequency that the warp sends there, interpolating linearly between bins.
    """
    nyq = sample_rate / 2.0
    knee = boundary_hz * min(alpha, 1.0) / alpha
    out_hz = np.linspace(0.0, nyq, n_bins)
    # inverse warp: output frequency -> source frequency
    hi = knee * alpha  # where the knee lands after warping
    src = np.where(out_hz <= hi, out_hz / alpha,
                   knee + (out_hz - hi) * (nyq - knee) / (nyq - hi))
    pos = np.clip(src / nyq * (n_bins - 1), 0, n_bins - 1)
    lo = np.floor(pos).astype(int)
    up = np.minimum(lo + 1, n_bins - 1)
    frac = pos - lo
    m = np.zeros((n_bins, n_bins), np.float64)
    cols = np.arange(n_bins)
    np.add.at(m, (lo, cols), 1.0 - frac)
    np.add.at(m, (up, cols), frac)
    return m


def mfcc_frames(frames: np.ndarray, warp: float | None = None) -> np.ndarray:
    """MFCC rows [N, 26] for audio frames [N, 512] (float, -1..1 scaled like int16/32768).

    ``warp`` (training data only) applies ``vtlp_matrix(warp)`` to the magnitude spectrum
    before the mel filterbank; None is DeepSpeech's feature exactly."""
    spec = np.abs(np.fft.rfft(frames.astype(np.float64) * _hann(), n=WINDOW, axis=-1)) ** 2
    weights = mel_weights()
    if warp is not None and warp != 1.0:
        weights = vtlp_matrix(round(float(warp), 4)) @ weights
    mel = np.sqrt(spec) @ weights
    return (np.log(np.maximum(mel, LOG_FLOOR)) @ dct_matrix()).astype(np.float32)


def mfcc(audio: np.ndarray, warp: float | None = None) -> np.ndarray:
    """MFCC rows [N, 26] of 16 kHz mono audio: one per complete 512-sample window, 20 ms apart
    (``warp``: see ``mfcc_frames``)."""
    audio = np.asarray(audio, np.float32).ravel()
    n = 0 if audio.size < WINDOW else 1 + (audio.size - WINDOW) // STEP
    if n == 0:
        return np.zeros((0, N_MFCC), np.float32)
    idx = np.arange(n)[:, None] * STEP + np.arange(WINDOW)[None, :]
    return mfcc_frames(audio[idx], warp)


class StreamingMfcc:
    """MFCC rows as audio arrives; identical to :func:`mfcc` on the concatenated audio."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, np.float32)
        self.rows_out = 0

    def push(self, pcm: np.ndarray) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(pcm, np.float32).ravel()])
        rows = mfcc(self._buf)
        if len(rows):
            self._buf = self._buf[len(rows) * STEP:]
            self.rows_out += len(rows)
        return rows


def context_windows(rows: np.ndarray, n_context: int) -> np.ndarray:
    """[N, 2c+1, n] windows around each row, zero frames past both ends (DeepSpeech's SAME)."""
    n, d = rows.shape
    padded = np.concatenate([np.zeros((n_context, d), rows.dtype), rows,
                             np.zeros((n_context, d), rows.dtype)])
    idx = np.arange(n)[:, None] + np.arange(2 * n_context + 1)[None, :]
    return padded[idx]
