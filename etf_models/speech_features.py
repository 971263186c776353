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


# ------------------------------------------------------------------------------------------
# DeepSpeech 0.1.x features (the bidirectional v0.1.0 release that VOCA / AD-NeRF use)
# ------------------------------------------------------------------------------------------
# DeepSpeech 0.1.x (``util/audio.py``) and the pipelines built on its ``output_graph.pb``
# compute ``python_speech_features.mfcc(int16 samples, 16000, numcep=26)`` with that
# package's defaults, keep every second 10 ms frame (50 rows per second), build the
# 2 * 9 + 1 frame context windows with zero frames past both ends, and whiten the whole
# utterance's window matrix by its one scalar mean and standard deviation. The functions
# below reimplement that from the package's documented defaults (checked against the
# package in tests/test_speech_frontend.py when it is installed).

V01_WINDOW = 400  # 25 ms, unwindowed (rectangular) frames
V01_STEP = 160  # 10 ms; every second frame is kept, so rows are 20 ms apart
V01_NFFT = 512
V01_FILTERS = 26
V01_PREEMPH = 0.97
V01_LIFTER = 22
V01_ROW_CENTRE_S = V01_WINDOW / 2 / SAMPLE_RATE  # 12.5 ms: row r is centred at 20 r + 12.5 ms


@lru_cache(maxsize=2)
def v01_filterbank(n_filters: int = V01_FILTERS, nfft: int = V01_NFFT,
                   sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[nfft // 2 + 1, n_filters] triangles on FFT bins ``floor((nfft + 1) hz / rate)`` of
    ``n_filters + 2`` points equally spaced on the HTK mel scale from 0 Hz to Nyquist."""
    top = 2595.0 * math.log10(1.0 + sample_rate / 2.0 / 700.0)
    hz = 700.0 * (10.0 ** (np.linspace(0.0, top, n_filters + 2) / 2595.0) - 1.0)
    edge = np.floor((nfft + 1) * hz / sample_rate).astype(int)
    fb = np.zeros((nfft // 2 + 1, n_filters), np.float64)
    for j in range(n_filters):
        lo, mid, hi = edge[j], edge[j + 1], edge[j + 2]
        for i in range(lo, mid):
            fb[i, j] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            fb[i, j] = (hi - i) / (hi - mid)
    return fb


@lru_cache(maxsize=2)
def _ortho_dct(n: int) -> np.ndarray:
    """[n, n] orthonormal DCT-II (scipy's ``dct(norm='ortho')``) as a right-multiplied
    matrix: TensorFlow's ``dct_matrix`` with coefficient 0 scaled by 1 / sqrt(2)."""
    m = dct_matrix(n, n).copy()  # dct_matrix is cached: never scale it in place
    m[:, 0] /= math.sqrt(2.0)
    return m


def v01_mfcc(signal: np.ndarray, n_cep: int = N_MFCC) -> np.ndarray:
    """[N, n_cep] MFCC rows of 16 kHz audio *at the scale given* (DeepSpeech 0.1 feeds int16
    values), every 10 ms: pre-emphasis 0.97, 25 ms rectangular frames (the last one zero
    padded), power spectrum ``|FFT_512|^2 / 512``, 26 mel filters, natural log, orthonormal
    DCT-II, sinusoidal lifter 22, and coefficient 0 replaced by the log frame energy."""
    x = np.asarray(signal, np.float64).ravel()
    if x.size == 0:
        return np.zeros((0, n_cep), np.float32)
    x = np.concatenate([x[:1], x[1:] - V01_PREEMPH * x[:-1]])
    n = 1 if x.size <= V01_WINDOW else 1 + math.ceil((x.size - V01_WINDOW) / V01_STEP)
    x = np.concatenate([x, np.zeros((n - 1) * V01_STEP + V01_WINDOW - x.size)])
    frames = x[np.arange(n)[:, None] * V01_STEP + np.arange(V01_WINDOW)[None, :]]
    power = np.abs(np.fft.rfft(frames, n=V01_NFFT, axis=-1)) ** 2 / V01_NFFT
    tiny = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, tiny, energy)
    mel = power @ v01_filterbank()
    mel = np.where(mel == 0, tiny, mel)
    cep = (np.log(mel) @ _ortho_dct(V01_FILTERS))[:, :n_cep]
    cep *= 1.0 + (V01_LIFTER / 2.0) * np.sin(np.pi * np.arange(n_cep) / V01_LIFTER)
    cep[:, 0] = np.log(energy)
    return cep.astype(np.float32)


def v01_windows(audio: np.ndarray, n_input: int = N_MFCC, n_context: int = 9) -> np.ndarray:
    """The whole utterance's DeepSpeech 0.1 network input [N, 2c+1, n_input] from 16 kHz
    float audio in -1..1: int16-scaled samples (truncated, as ``astype('int16')``), MFCC,
    every second row, zero-padded context windows, then whitened by the matrix's single
    mean and standard deviation (which is why it needs the whole utterance)."""
    pcm = np.trunc(np.clip(np.asarray(audio, np.float64).ravel() * 32768.0, -32768, 32767))
    rows = v01_mfcc(pcm, n_input)[::2]
    wins = context_windows(rows.astype(np.float64), n_context)
    std = wins.std()
    return ((wins - wins.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
