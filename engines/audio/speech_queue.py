"""Speech handed over ahead of time (an agent's TTS, ``say``), played out one tick at a time.

A microphone delivers audio in real time; an agent's speech synthesiser delivers it in
bursts, usually faster than real time, and wants it spoken in order, interruptible. The
:class:`SpeechQueue` holds that speech at 48 kHz and gives it out ``n`` samples per tick:

- ``begin()`` opens an utterance at any common rate (8..48 kHz), mono or interleaved stereo,
  16-bit or float PCM, with an optional *tag* (an emotion to show while it is spoken): the
  tag is handed back by ``take()`` at the tick where the utterance starts to play.
- ``push()`` appends PCM to the open utterance (resampled by an exact streaming resampler,
  so chunking never changes the samples); ``end()`` marks it complete.
- Play-out starts once ``prime_ms`` are queued or the utterance is complete, so a stream that
  arrives at about real time does not stutter; an underflow inside an utterance pads silence
  and primes again.
- ``clear()`` (barge-in) drops everything queued at once; an open utterance stays open in
  its format, so what is pushed after it is spoken.
- ``max_s`` bounds what may wait: beyond it ``push`` raises :class:`QueueFull`.

Plain numpy; the session calls it from one thread at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.audio.phone_stream import StreamResampler

OUT_RATE = 48000
ENCODINGS = ("s16le", "f32le")
RATE_RANGE = (8000, 48000)


class QueueFull(Exception):
    """More speech than the queue may hold."""


def decode_pcm(data: bytes | np.ndarray, channels: int = 1,
               encoding: str = "s16le") -> np.ndarray:
    """Mono float32 samples from raw PCM bytes (or an array, int16 or float)."""
    if isinstance(data, np.ndarray):
        x = data
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        x = np.asarray(x, np.float32)
        if x.ndim == 2:  # [n, channels]
            return x.mean(axis=1)
    else:
        width = 2 if encoding == "s16le" else 4
        frame = width * channels
        if len(data) % frame:
            raise ValueError(f"{len(data)} bytes is not a whole number of {channels}-channel "
                             f"{encoding} samples ({frame} bytes each)")
        if encoding == "s16le":
            x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(data, "<f4").astype(np.float32)
    x = x.ravel()
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(x, -1.0, 1.0)


@dataclass
class _Chunk:
    samples: np.ndarray
    tag: Any = None  # handed out when this chunk starts to play (an utterance's first)
    utterance: int = 0


class SpeechQueue:
    """Queued speech at 48 kHz, given out per tick (see module docstring)."""

    def __init__(self, max_s: float = 300.0, prime_ms: float = 80.0) -> None:
        self.max = int(max_s * OUT_RATE)
        self.prime = int(prime_ms * OUT_RATE / 1000)
        self._chunks: deque[_Chunk] = deque()
        self._size = 0
        self._resampler: StreamResampler | None = None
        self._rate = 0
        self._channels = 1
        self._encoding = "s16le"
        self._pending_tag: Any = None
        self._utterance = 0  # id of the open utterance (0: none yet)
        self._complete: set[int] = set()  # utterances whose end() came
        self._playing = False
        self.played_s = 0.0
        self.dropped_s = 0.0
        self.underflows = 0

    # ----- input -----------------------------------------------------------------------

    def begin(self, rate: int, channels: int = 1, encoding: str = "s16le",
              tag: Any = None) -> int:
        """Open a new utterance; returns its id. The previous one is ended."""
        if not RATE_RANGE[0] <= int(rate) <= RATE_RANGE[1]:
            raise ValueError(f"rate {rate} Hz is outside {RATE_RANGE[0]}..{RATE_RANGE[1]}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        self.end()
        self._utterance += 1
        self._rate, self._channels, self._encoding = int(rate), channels, encoding
        self._resampler = None if rate == OUT_RATE else StreamResampler(int(rate), OUT_RATE)
        self._pending_tag = tag
        return self._utterance

    @property
    def open(self) -> bool:
        return self._utterance > 0 and self._utterance not in self._complete

    def push(self, data: bytes | np.ndarray) -> float:
        """Append PCM to the open utterance; returns the seconds now queued."""
        if not self.open:
            raise ValueError("no utterance is open: call begin() first")
        x = decode_pcm(data, self._channels, self._encoding)
        if self._resampler is not None:
            x = self._resampler.process(x)
        self._append(x)
        return self.queued_s

    def end(self) -> None:
        """Mark the open utterance complete (its last samples are flushed out)."""
        if not self.open:
            return
        if self._resampler is not None:
            self._append(self._resampler.drain())
        self._complete.add(self._utterance)

    def say(self, pcm: np.ndarray, rate: int, tag: Any = None) -> int:
        """Queue one whole utterance (float or int16 mono samples); returns its id."""
        uid = self.begin(rate, 1, "f32le", tag)
        self.push(np.asarray(pcm))
        self.end()
        return uid

    def _append(self, x: np.ndarray) -> None:
        if x.size == 0 and self._pending_tag is None:
            return
        if self._size + x.size > self.max:
            raise QueueFull(f"more than {self.max / OUT_RATE:g} s of speech is queued")
        self._chunks.append(_Chunk(x.astype(np.float32), self._pending_tag, self._utterance))
        self._pending_tag = None
        self._size += x.size

    # ----- output ----------------------------------------------------------------------

    @property
    def queued_s(self) -> float:
        return self._size / OUT_RATE

    @property
    def active(self) -> bool:
        """Whether speech is playing or waiting to play."""
        return self._playing or self._size > 0 or any(c.tag is not None for c in self._chunks)

    def _ready(self) -> bool:
        if self._size >= self.prime:
            return True
        # A short utterance that is complete plays without waiting for more.
        return bool(self._chunks) and all(c.utterance in self._complete for c in self._chunks)

    def take(self, n: int) -> tuple[np.ndarray | None, list]:
        """``n`` samples to play now and the tags of utterances that start in them.

        ``None`` when nothing is playing or queued (the caller uses its other input);
        otherwise exactly ``n`` samples, padded with silence when the queue runs short.
        """
        if not self._playing:
            if not self._chunks or not self._ready():
                return None, []
            self._playing = True
        out, tags, need = [], [], n
        while need > 0 and self._chunks:
            head = self._chunks[0]
            if head.tag is not None:
                tags.append(head.tag)
                head.tag = None
            if head.samples.size <= need:
                self._chunks.popleft()
                out.append(head.samples)
                need -= head.samples.size
            else:
                out.append(head.samples[:need])
                head.samples = head.samples[need:]
                need = 0
        got = n - need
        self._size -= got
        self.played_s += got / OUT_RATE
        if need:
            out.append(np.zeros(need, np.float32))
            if self.open:  # starved mid-utterance: prime again before going on
                self.underflows += 1
            self._playing = False
        if not self._chunks:
            self._playing = False
            self._complete = {u for u in self._complete if u >= self._utterance}
        return np.concatenate(out) if out else np.zeros(n, np.float32), tags

    def clear(self) -> float:
        """Drop all queued speech (barge-in); returns the seconds dropped."""
        # An open stream stays open in its format (what an agent sends after the interrupt
        # is new speech); the resampler forgets the dropped audio's tail.
        if self._resampler is not None:
            self._resampler.reset()
        dropped = self._size / OUT_RATE
        self._chunks.clear()
        self._size = 0
        self._playing = False
        self._pending_tag = None
        self.dropped_s += dropped
        return dropped
