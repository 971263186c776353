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
- The target adapts to the network (``adaptive``): every packet's arrival time is compared
  with its media time (the RTP clock when the caller gives it, else the samples received),
  and the target follows the 98th percentile of how late packets came over the last
  ``ArrivalJitter.WINDOW_S`` seconds relative to the earliest, plus a margin, within
  ``min_target_ms`` and half of ``max_ms``. A smooth link (loopback, a LAN) then holds
  ~20 ms instead of a fixed 60; a jittery one grows its buffer before it underflows again.
  A lower target is reached by the trim above; a higher one by silence inserted at the
  next pause (or after three seconds of speech), never in the middle of a word.
- Speech queued ahead of time (an agent's audio or synthesised text, ``self.queue``) takes
  the floor while it plays; ``take()`` then gives it out instead of the live input.
- The 48 kHz chunk goes to the viewer (delayed, see ``server/session.py``) and a 16 kHz copy,
  gated by WebRTC's VAD, goes to the speech front end, so background noise does not move the
  mouth.  The gate opens within one 20 ms VAD frame of speech and holds ``hangover_ms``
  after it, and ramps over 10 ms so it never clicks.

Everything here is plain numpy and runs on the session's worker thread.
"""

from __future__ import annotations

import time
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
    grows: int = 0  # silences inserted in a pause to reach a higher target
    padded_s: float = 0.0  # their total length

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

    def push_front(self, samples: np.ndarray) -> None:
        """Put ``samples`` before everything buffered (they come out next)."""
        if samples.size:
            self._chunks.appendleft(samples)
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


class ArrivalJitter:
    """How late the network delivers audio: each packet's arrival time minus its media
    time, over the last ``WINDOW_S`` seconds; its lateness is that delay over the window's
    smallest (the best case), and :meth:`lateness_s` gives a high percentile of it.

    A jump of the delay by more than ``REBASE_S`` (the sender restarted its clock, or a
    caller without media times lost packets) starts the window over.
    """

    WINDOW_S = 10.0
    #: Arrivals spanning less than this give no estimate yet.
    MIN_SPAN_S = 2.0
    REBASE_S = 1.0
    PERCENTILE = 98.0

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._delays: deque[float] = deque()

    def reset(self) -> None:
        self._times.clear()
        self._delays.clear()

    def add(self, now: float, media_end_s: float) -> None:
        delay = now - media_end_s
        if self._delays and abs(delay - self._delays[-1]) > self.REBASE_S:
            self.reset()
        self._times.append(now)
        self._delays.append(delay)
        while self._times[0] < now - self.WINDOW_S:
            self._times.popleft()
            self._delays.popleft()

    def lateness_s(self) -> float | None:
        """The ``PERCENTILE`` of lateness over the window (s), or None before
        ``MIN_SPAN_S`` of arrivals."""
        if not self._times or self._times[-1] - self._times[0] < self.MIN_SPAN_S:
            return None
        d = np.fromiter(self._delays, np.float64, len(self._delays))
        return float(np.percentile(d, self.PERCENTILE) - d.min())


class AudioIngest:
    """Jitter buffer + 48 kHz -> 16 kHz + VAD for one live session (see module docstring)."""

    def __init__(
        self,
        target_ms: float = 60.0,
        max_ms: float = 300.0,
        vad_mode: int = 3,
        use_vad: bool = True,
        max_queued_s: float = 300.0,
        adaptive: bool = False,
        min_target_ms: float = 20.0,
    ) -> None:
        """``target_ms``: the jitter buffer's depth after a take (the first one when
        ``adaptive``: it then follows the network within ``min_target_ms`` .. ``max_ms``/2,
        see the module docstring)."""
        if not 0 <= target_ms < max_ms:
            raise ValueError(f"jitter target {target_ms} ms must be below the maximum {max_ms}")
        if adaptive and not 0 <= min_target_ms <= max_ms / 2:
            raise ValueError(f"minimum jitter target {min_target_ms} ms must be within "
                             f"0..{max_ms / 2:g}")
        self.target = int(target_ms * NET_RATE / 1000)
        self.max = int(max_ms * NET_RATE / 1000)
        self.adaptive = adaptive
        self._min_target = int(min_target_ms * NET_RATE / 1000)
        self.jitter = ArrivalJitter()
        self._pushes = 0
        self._clock = time.monotonic
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
        self._high = None  # highest level seen in the current trim window (samples)
        self._pending = 0  # excess (> 0) or shortfall (< 0) waiting for a pause (samples)
        self._pending_age = 0  # windows it has waited
        #: Speech handed over ahead of time (an agent's audio, ``say``); see speech_queue.
        self.queue = SpeechQueue(max_s=max_queued_s)
        #: Tags of queued utterances that started playing, for the owner to act on.
        self.tags: list = []

    #: Takes per trim window (see module docstring): about one second.
    TRIM_WINDOW = 25
    #: Added to the measured lateness for the adaptive target (s): a late packet's
    #: neighbours are often a little late too.
    JITTER_MARGIN_S = 0.01
    #: Pushes between updates of the adaptive target (~0.5 s of 20 ms packets).
    ADAPT_EVERY = 25

    @property
    def target_ms(self) -> float:
        return self.target * 1000.0 / NET_RATE

    @property
    def lateness_ms(self) -> float | None:
        """How late the network delivers audio now (the adaptive target's measure, ms), or
        None when the target is fixed or too few packets have come yet."""
        late = self.jitter.lateness_s() if self.adaptive else None
        return None if late is None else late * 1000.0

    @property
    def _buffered(self) -> int:
        return len(self._fifo)

    @property
    def buffered_ms(self) -> float:
        return self._buffered * 1000.0 / NET_RATE

    def push(self, pcm48: np.ndarray, media_end_s: float | None = None,
             now: float | None = None) -> None:
        """Append mono 48 kHz float32 samples received from the network.

        ``media_end_s``: the media time at the packet's end (its RTP timestamp, in
        seconds), so lost packets and pauses in sending do not read as lateness; without
        it, the samples received so far. ``now``: the arrival time (default: monotonic).
        """
        pcm48 = np.asarray(pcm48, np.float32).ravel()
        if pcm48.size == 0:
            return
        self._fifo.push(pcm48)
        self.stats.received_s += pcm48.size / NET_RATE
        if self.adaptive:
            self.jitter.add(self._clock() if now is None else now,
                            self.stats.received_s if media_end_s is None else media_end_s)
            self._pushes += 1
            if self._pushes % self.ADAPT_EVERY == 0:
                self._adapt_target()
        if self._buffered > self.max:
            drop = self._buffered - self.target
            self._fifo.pop(drop)
            self.stats.dropped_s += drop / NET_RATE

    def _adapt_target(self) -> None:
        late = self.jitter.lateness_s()
        if late is not None:
            want = int(round((late + self.JITTER_MARGIN_S) * NET_RATE))
            self.target = min(max(want, self._min_target), self.max // 2)

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
            # Packets arrive 20 ms at a time and a tick takes 40: the first priming can
            # overshoot by a packet, dropped before anything played (later ones are left
            # to the trim: dropping there would skip speech).
            over = self._buffered - self.target - n48
            if over > 0 and self.stats.takes == 0:
                self._fifo.pop(over)
                self.stats.dropped_s += over / NET_RATE
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
        """Bring the depth back to the target (see module docstring): a lasting excess is
        dropped, and a shortfall (the target rose) filled with silence, at a pause."""
        level = self._buffered
        self._low = level if self._low is None else min(self._low, level)
        self._high = level if self._high is None else max(self._high, level)
        self._window += 1
        if self._window >= self.TRIM_WINDOW:
            slack = n48 // 4
            excess = self._low - self.target
            # the level when every packet came on time is the window's highest: late
            # packets only dip it
            short = self.target - self._high
            if excess > slack:
                self._pending = excess
                self._pending_age += 1
            elif short > slack:
                self._pending = -short
                self._pending_age += 1
            else:
                self._pending, self._pending_age = 0, 0
            self._low = self._high = None
            self._window = 0
        if self._pending and (not self.stats.speech or self._pending_age > 3):
            if self._pending > 0:
                drop = min(self._pending, self._buffered - self.target)
                if drop > 0:
                    self._fifo.pop(drop)
                    self.stats.dropped_s += drop / NET_RATE
                    self.stats.trims += 1
            else:
                pad = -self._pending
                self._fifo.push_front(np.zeros(pad, np.float32))
                self.stats.padded_s += pad / NET_RATE
                self.stats.grows += 1
            self._pending, self._pending_age = 0, 0
