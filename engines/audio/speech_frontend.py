"""Streaming DeepSpeech features: the SpeechFrontend contract, and per-video-frame windows.

``DeepSpeechFrontend`` runs the acoustic model of ``etf_models/deepspeech.py`` on live
16 kHz audio: ``push(pcm)`` returns the logit rows (29 per row, before softmax, 50 rows per
second) that became final, carrying the LSTM state across pushes; ``flush()`` ends the
utterance (zero context frames after the audio, as DeepSpeech does); ``reset()`` starts a
new one. Row ``r`` describes the audio window ``[320 r, 320 r + 512)`` (centre
``20 r + 16`` ms) and needs ``n_context`` rows after it, so it is final
``lookahead_ms = 20 n_context + 16`` ms after its centre (196 ms for the released model).

``VideoWindows`` turns the 50 Hz rows into the paper's per-frame input: for frame ``k`` at
``t = k / fps``, 6 rows sampled 20 ms apart centred on ``t`` (linear interpolation between
rows, so 25 and 30 fps are handled alike), ``[6, 29]``. The whole-file and the streaming
paths give identical windows however the audio is chunked.

A model that cannot stream (``config.streaming`` false: DeepSpeech 0.1.x's bidirectional
release, whose features are also whitened over the whole utterance) runs offline here:
``push`` keeps the audio and returns no rows, ``flush`` returns them all; its
``lookahead_ms`` is infinite, so live sessions refuse it, while ``etf speech features``,
``transcribe`` and rendering from a file use it like any other.
"""

from __future__ import annotations

import math
import os

import numpy as np

from etf_models.speech_features import (
    STEP,
    V01_ROW_CENTRE_S,
    WINDOW,
    StreamingMfcc,
    context_windows,
    mfcc,
    v01_windows,
)

ROW_S = STEP / 16000.0  # 20 ms
ROW_CENTRE_S = WINDOW / 2 / 16000.0  # 16 ms: row r is centred at 20 r + 16 ms
FRAME_ROWS = 6


#: The shipped default speech model (``etf train speech``; see README "Speech features"),
#: pinned by SHA-256: a file that does not match is refused, never silently used.
DEFAULT_SPEECH_MODEL = "speech_default.pt"
DEFAULT_SPEECH_SHA256 = "d51a68bf7b56d33f8e8c5dfbfc91119fe51f6d03496178b9d3dbcde97e1231a3"


class SpeechModelError(ValueError):
    """No usable speech model (missing weights, wrong checkpoint)."""


def default_speech_model_path() -> str:
    """Path of the shipped default speech model, verified against its pinned SHA-256."""
    from importlib import resources

    from etf_models.checkpoint import sha256_of

    path = str(resources.files("etf_models") / "weights" / DEFAULT_SPEECH_MODEL)
    if not os.path.isfile(path):
        raise SpeechModelError(f"the shipped speech model {path} is missing; reinstall "
                               "etf-avatar or pass --weights")
    digest = sha256_of(path)
    if digest != DEFAULT_SPEECH_SHA256:
        raise SpeechModelError(f"the shipped speech model {path} has SHA-256 {digest}, not "
                               f"the pinned {DEFAULT_SPEECH_SHA256}: the file is damaged or "
                               "was replaced")
    return path


class DeepSpeechFrontend:
    """Streaming DeepSpeech logits for one session (see module docstring)."""

    def __init__(self, model) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.n_context = model.config.n_context
        self.streaming = model.config.streaming
        self.mfcc = StreamingMfcc()
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> DeepSpeechFrontend:
        """Load a model written by ``etf speech import`` / ``etf train speech``."""
        from etf_models.checkpoint import CheckpointError
        from etf_models.deepspeech import load_deepspeech

        try:
            model = load_deepspeech(path)
        except (CheckpointError, TypeError, RuntimeError) as e:
            raise SpeechModelError(f"cannot use speech model {os.fspath(path)}: {e}") from None
        return cls(model)

    @classmethod
    def default(cls) -> DeepSpeechFrontend:
        """The shipped default model (trained here on synthetic speech)."""
        return cls.from_checkpoint(default_speech_model_path())

    @property
    def lookahead_ms(self) -> float:
        """Audio after a row's centre that the row waits for (infinite offline)."""
        if not self.streaming:
            return math.inf
        return 1000.0 * (self.n_context * ROW_S + ROW_CENTRE_S)

    @property
    def row_centre_s(self) -> float:
        """Time of row 0's centre; row ``r`` is ``r * 20 ms`` later."""
        return V01_ROW_CENTRE_S if self.model.config.features == "v01" else ROW_CENTRE_S

    def reset(self) -> None:
        self.mfcc.reset()
        self._audio: list[np.ndarray] = []
        n_in = self.model.config.n_input
        # Zero frames before the audio: the released model's streaming client primes its
        # feature buffer the same way.
        self._feats = np.zeros((self.n_context, n_in), np.float32)
        self._state = self.model.initial_state(1)
        self.rows_out = 0
        self._flushed = False

    def _run(self, final: bool) -> np.ndarray:
        c = self.n_context
        feats = self._feats
        if final:
            feats = np.concatenate([feats, np.zeros((c, feats.shape[1]), np.float32)])
        n_ready = len(feats) - 2 * c  # rows whose whole window is present
        if n_ready <= 0:
            return np.zeros((0, self.model.config.n_output), np.float32)
        wins = context_windows(feats, c)[c : c + n_ready]
        with self.torch.inference_mode():
            logits, self._state = self.model.step(self.torch.from_numpy(wins)[None],
                                                  self._state)
        self._feats = feats[n_ready:]
        self.rows_out += n_ready
        return logits[0].numpy()

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Feed 16 kHz mono float32 audio; returns the new logit rows [N, 29]."""
        if self._flushed:
            raise RuntimeError("push() after flush(): call reset() for a new utterance")
        if not self.streaming:
            self._audio.append(np.asarray(pcm, np.float32).ravel())
            return np.zeros((0, self.model.config.n_output), np.float32)
        rows = self.mfcc.push(pcm)
        if len(rows):
            self._feats = np.concatenate([self._feats, rows])
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        """End of the utterance: the last rows (zero context after the audio)."""
        self._flushed = True
        if not self.streaming:
            return self._run_offline()
        return self._run(final=True)

    def _run_offline(self) -> np.ndarray:
        cfg = self.model.config
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        if cfg.features == "v01":
            wins = v01_windows(audio, cfg.n_input, cfg.n_context)
        else:
            wins = context_windows(mfcc(audio), cfg.n_context)
        if not len(wins):
            return np.zeros((0, cfg.n_output), np.float32)
        with self.torch.inference_mode():
            logits = self.model(self.torch.from_numpy(wins)[None])[0].numpy()
        self.rows_out = len(logits)
        return logits

    def process(self, audio: np.ndarray) -> np.ndarray:
        """All logit rows of a whole utterance (resets first)."""
        self.reset()
        return np.concatenate([self.push(audio), self.flush()])


class VideoWindows:
    """Per-video-frame [6, 29] windows from 50 Hz rows, streaming (see module docstring)."""

    def __init__(self, fps: float, n_out: int = 29, row_centre_s: float = ROW_CENTRE_S) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.n_out = n_out
        self.row_centre_s = float(row_centre_s)
        self.reset()

    def reset(self) -> None:
        self._rows = np.zeros((0, self.n_out), np.float32)
        self._frame = 0
        self._ended = False

    #: Frame k samples rows at t + (j - 2.5) * 20 ms, j = 0..5.
    _OFFSETS = (np.arange(FRAME_ROWS) - (FRAME_ROWS - 1) / 2.0) * ROW_S

    @property
    def lookahead_ms(self) -> float:
        """Row time after a frame's time that the frame waits for (at most)."""
        return 1000.0 * (self._OFFSETS[-1] + ROW_S)

    def _needs_row(self, k: int) -> int:
        """Index of the last row frame ``k`` interpolates from."""
        u = (k / self.fps + self._OFFSETS[-1] - self.row_centre_s) / ROW_S
        return max(0, math.floor(u + 1e-9) + 1)

    def _window(self, k: int) -> np.ndarray:
        n = len(self._rows)
        u = (k / self.fps + self._OFFSETS - self.row_centre_s) / ROW_S
        u = np.clip(u, 0.0, n - 1)
        lo = np.floor(u).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        a = (u - lo)[:, None].astype(np.float32)
        return (1 - a) * self._rows[lo] + a * self._rows[hi]

    def push(self, rows: np.ndarray) -> np.ndarray:
        """Add rows; returns the windows [F, 6, 29] of frames that became complete."""
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.float32)])
        out = []
        while len(self._rows) and self._needs_row(self._frame) < len(self._rows):
            out.append(self._window(self._frame))
            self._frame += 1
        return np.stack(out) if out else np.zeros((0, FRAME_ROWS, self.n_out), np.float32)

    def finish(self, duration_s: float) -> np.ndarray:
        """The remaining frames up to ``duration_s`` of audio (past the last row: the last row)."""
        total = max(1, math.ceil(duration_s * self.fps - 1e-6))
        out = []
        while self._frame < total and len(self._rows):
            out.append(self._window(self._frame))
            self._frame += 1
        return np.stack(out) if out else np.zeros((0, FRAME_ROWS, self.n_out), np.float32)


def audio_to_windows(frontend: DeepSpeechFrontend, audio: np.ndarray, fps: float,
                     chunk: int | None = None) -> np.ndarray:
    """[T, 6, 29] windows for a whole 16 kHz utterance, T = ceil(duration * fps).

    With ``chunk`` the audio is pushed in pieces of that many samples, as a live session
    would (the result is the same).
    """
    frontend.reset()
    win = VideoWindows(fps, frontend.model.config.n_output, frontend.row_centre_s)
    parts = []
    step = chunk or max(1, len(audio))
    for i in range(0, len(audio), step):
        parts.append(win.push(frontend.push(audio[i : i + step])))
    parts.append(win.push(frontend.flush()))
    parts.append(win.finish(len(audio) / 16000.0))
    return np.concatenate(parts)
