"""Live audio ingest for one session: a jitter buffer, resampling to 16 kHz and a VAD gate.

Network audio arrives in bursts (packets every 20 ms with jitter, stalls, catch-ups); the
animation consumes it on a steady clock, one video frame's worth per tick. ``AudioIngest``
sits between the two:

- ``push()`` appends mono 48 kHz samples as they arrive.
- ``take(n)`` removes exactly ``n`` samples for one tick.  Before the first audio, and after
  an underflow, it primes: it hands out silence until ``target_ms`` is buffered, which
  absorbs network jitter.  If the buffer grows past ``max_ms`` (a burst after a stall) the
  oldest audio is dropped back to the target, so latency can never grow without bound.
  A smaller lasting excess (a stall followed by the late packets in a burst leaves the
  buffer deeper than its target for good) is trimmed too: when the buffer's lowest level
  over a second stays above the target, the excess is dropped at the next pause in speech
  (or after three seconds of continuous speech), where the skip cannot be heard. All these
  events are counted.
- Speech queued ahead of time (an agent's audio or synthesised text, ``self.queue``) takes
  the floor while it plays; ``take()`` then gives it out instead of the live input.
- The 48 kHz chunk goes to the viewer (delayed, see ``server/session.py``) and a 16 kHz copy,
  gated by WebRTC's VAD, goes to the speech front end, so background noise does not move the
  mouth.  The gate opens within one 20 ms VAD frame of speech and holds ``hangover_ms``
  after it, and ramps over 10 ms so it never clicks.

Everything here is plain numpy and runs on the session's worker thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from engines.audio.phone_stream import StreamResampler
from engines.audio.speech_queue import SpeechQueue

NET_RATE = 48000
SPEECH_RATE = 16000
_VAD_FRAME = 320  # 20 ms at 16 kHz


@dataclass
class IngestStats:
    """Counters a session reports."""

    received_s: float = 0.0
    underflows: int = 0
    silence_padded_s: float = 0.0
    dropped_s: float = 0.0
    trims: int = 0
    speech: bool = False
    depth_sum_ms: float = 0.0  # buffered audio after each take, summed (mean = / takes)
    takes: int = 0

    @property
    def mean_depth_ms(self) -> float:
        return self.depth_sum_ms / self.takes if self.takes else 0.0


class SampleFifo:
    """A FIFO of float32 samples kept as the chunks they arrived in (no copying on push)."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self._size += samples.size

    def pop(self, n: int) -> np.ndarray:
        """Remove and return the oldest ``n`` samples (fewer if the FIFO runs short)."""
        out, need = [], n
        while need > 0 and self._chunks:
            head = self._chunks[0]
            if head.size <= need:
                out.append(self._chunks.popleft())
                need -= head.size
            else:
                out.append(head[:need])
                self._chunks[0] = head[need:]
                need = 0
        self._size -= n - need
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class SpeechGate:
    """WebRTC VAD on 20 ms frames with hangover and a short gain ramp (16 kHz mono float)."""

    def __init__(self, mode: int = 3, hangover_ms: float = 200.0) -> None:
        import webrtcvad

        self.vad = webrtcvad.Vad(mode)
        self.hangover = max(1, int(round(hangover_ms / 20.0)))
        self._pending = np.zeros(0, np.float32)
        self._hold = 0
        self._gain = 0.0
        self._ramp = 1.0 / 160.0  # gain step per sample: 10 ms from closed to open
        self.speech = False

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self._hold = 0
        self._gain = 0.0
        self.speech = False

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Gate ``pcm`` (any length); returns the same number of samples.

        Decisions are made per complete 20 ms frame; samples of an incomplete frame take
        the current gate state (their frame is decided when it completes, for later audio).
        """
        pcm = np.asarray(pcm, np.float32)
        self._pending = np.concatenate([self._pending, pcm])
        while len(self._pending) >= _VAD_FRAME:
            frame = self._pending[:_VAD_FRAME]
            self._pending = self._pending[_VAD_FRAME:]
            i16 = (np.clip(frame, -1.0, 1.0) * 32767.0).astype(np.int16)
            if self.vad.is_speech(i16.tobytes(), SPEECH_RATE):
                self._hold = self.hangover
            else:
                self._hold = max(0, self._hold - 1)
        self.speech = self._hold > 0
        target = 1.0 if self.speech else 0.0
        n = len(pcm)
        if self._gain == target:
            return pcm * target if target == 0.0 else pcm
        step = self._ramp if target > self._gain else -self._ramp
        gains = np.clip(self._gain + step * np.arange(1, n + 1, dtype=np.float32), 0.0, 1.0)
        self._gain = float(gains[-1]) if n else self._gain
        return pcm * gains


class AudioIngest:
    """Jitter buffer + 48 kHz -> 16 kHz + VAD for one live session (see module docstring)."""

    def __init__(
        self,
        target_ms: float = 60.0,
        max_ms: float = 300.0,
        vad_mode: int = 3,
        use_vad: bool = True,
        max_queued_s: float = 300.0,
    ) -> None:
        if not 0 <= target_ms < max_ms:
            raise ValueError(f"jitter target {target_ms} ms must be below the maximum {max_ms}")
        self.target = int(target_ms * NET_RATE / 1000)
        self.max = int(max_ms * NET_RATE / 1000)
        self.gate = SpeechGate(vad_mode) if use_vad else None
        self.stats = IngestStats()
        self._resampler = StreamResampler(NET_RATE, SPEECH_RATE)
        # The speech copy trails the viewer's audio by the filter's 1 ms, so each take
        # gives all of its 16 kHz samples at once (a 40 ms tick: 640): held-back samples
        # would leave the phone recogniser's last 20 ms step undecoded, a tick later.
        self._resampler.lag_input()
        self._fifo = SampleFifo()
        self._priming = True
        self._low = None  # lowest level seen in the current trim window (samples)
        self._window = 0  # takes in the current trim window
        self._pending = 0  # excess waiting for a pause in speech (samples)
        self._pending_age = 0  # windows it has waited
        #: Speech handed over ahead of time (an agent's audio, ``say``); see speech_queue.
        self.queue = SpeechQueue(max_s=max_queued_s)
        #: Tags of queued utterances that started playing, for the owner to act on.
        self.tags: list = []

    #: Takes per trim window (see module docstring): about one second.
    TRIM_WINDOW = 25

    @property
    def _buffered(self) -> int:
        return len(self._fifo)

    @property
    def buffered_ms(self) -> float:
        return self._buffered * 1000.0 / NET_RATE

    def push(self, pcm48: np.ndarray) -> None:
        """Append mono 48 kHz float32 samples received from the network."""
        pcm48 = np.asarray(pcm48, np.float32).ravel()
        if pcm48.size == 0:
            return
        self._fifo.push(pcm48)
        self.stats.received_s += pcm48.size / NET_RATE
        if self._buffered > self.max:
            drop = self._buffered - self.target
            self._fifo.pop(drop)
            self.stats.dropped_s += drop / NET_RATE

    def take(self, n48: int) -> tuple[np.ndarray, np.ndarray]:
        """Exactly ``n48`` samples at 48 kHz for the viewer and their 16 kHz gated copy.

        Queued speech (``self.queue``) has the floor while it plays: the live input of
        those ticks is discarded, and the queued audio is clean synthetic or agent speech,
        so it bypasses the VAD gate. Tags of utterances that start are added to ``tags``.
        """
        queued, tags = self.queue.take(n48)
        if queued is not None:
            self.tags.extend(tags)
            if self._buffered > self.target:  # the live input of this tick is not spoken
                self._fifo.pop(min(n48, self._buffered - self.target))
            speech = self._resampler.process(queued)
            if self.gate is not None:
                self.gate.reset()
            self.stats.speech = bool(np.abs(queued).max(initial=0.0) > 1e-3)
            return queued, speech
        if self._priming and self._buffered >= self.target + n48:
            self._priming = False
        if self._priming:
            chunk = np.zeros(n48, np.float32)
        else:
            chunk = self._fifo.pop(n48)
            if chunk.size < n48:
                missing = n48 - chunk.size
                chunk = np.concatenate([chunk, np.zeros(missing, np.float32)])
                self.stats.underflows += 1
                self.stats.silence_padded_s += missing / NET_RATE
                self._priming = True
        speech = self._resampler.process(chunk)
        if self.gate is not None:
            speech = self.gate.process(speech)
            self.stats.speech = self.gate.speech
        if not self._priming:
            self._trim(n48)
            self.stats.takes += 1
            self.stats.depth_sum_ms += self.buffered_ms
        return chunk, speech

    def _trim(self, n48: int) -> None:
        """Drop a lasting excess over the target (see module docstring)."""
        self._low = self._buffered if self._low is None else min(self._low, self._buffered)
        self._window += 1
        if self._window >= self.TRIM_WINDOW:
            excess = self._low - self.target
            if excess > n48 // 2:
                self._pending = excess
                self._pending_age += 1
            else:
                self._pending, self._pending_age = 0, 0
            self._low, self._window = None, 0
        if self._pending and (not self.stats.speech or self._pending_age > 3):
            drop = min(self._pending, self._buffered - self.target)
            if drop > 0:
                self._fifo.pop(drop)
                self.stats.dropped_s += drop / NET_RATE
                self.stats.trims += 1
            self._pending, self._pending_age = 0, 0
