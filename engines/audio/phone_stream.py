"""Streaming phone recognition for driving a talking face's mouth in real time.

:class:`StreamingPhoneRecognizer` wraps a pocketsphinx 5 decoder in *allphone* mode (a
phone loop weighted by the bundled en-US phone trigram) and turns its moving best path
into a stream of final, never-revised :class:`PhoneSegment` objects.

How it works
------------
* Audio of any chunk size is resampled to 16 kHz (exact streaming polyphase FIR when the
  input rate differs), converted to int16 and fed to the decoder in fixed internal steps
  of ``step_ms`` (20 ms).  All decisions are taken at step boundaries, so the output does
  not depend on how the caller slices the audio: 320-sample and 1600-sample chunking give
  identical segments once adjacent pieces with the same label are merged
  (:func:`merge_segments`).
* pocketsphinx's ``Decoder.seg()`` works in the middle of an utterance: the allphone
  search backtraces from the best phone exit at its last frame.  That partial path trails
  the audio edge by about 60 ms (feature delta window plus search), and its tail keeps
  changing for a while.  After every step the part of the path older than
  ``lookahead_ms`` behind the audio pushed is committed.  A phone that is still running
  at the commit horizon is committed piecewise (consecutive pieces carry the same label),
  so :attr:`StreamingPhoneRecognizer.final_until_s` advances steadily.
* Utterances are ended and restarted at pauses (the partial path ends in at least
  ``restart_sil_ms`` of silence and the utterance is at least ``min_utt_s`` long):
  ``end_utt`` finalises the whole utterance, so at a pause everything up to the audio
  edge becomes final at once.  Failing a pause, after ``max_utt_s`` the utterance is cut
  with overlap: the path is committed up to the horizon as usual, the old utterance is
  dropped and a new one is started on the last ``lookahead_ms + overlap_ms`` of audio
  again, so the silence every allphone utterance is forced to start with falls into
  time that is already final.  Restarts keep the decoder's history and the per-step
  backtrace cost bounded on endless streams, and let live cepstral mean normalisation
  adapt (pocketsphinx updates it at ``end_utt``).

Phones are CMU/ARPAbet without stress; silence, noise and fillers (``SIL``, ``+NSN+``,
``+SPN+``, ``<s>``...) are all reported as ``"SIL"``.  Frames are 10 ms.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pocketsphinx

__all__ = [
    "DECODER_RATE",
    "PhoneSegment",
    "StreamingPhoneRecognizer",
    "merge_segments",
    "normalize_phone",
]

DECODER_RATE = 16000
"""Sample rate of the acoustic model (Hz)."""

_FRAME = DECODER_RATE // 100  # samples per 10 ms decoder frame
_SILENCE_NAMES = frozenset({"SIL", "<S>", "</S>", "<SIL>", "SILENCE"})


@dataclass(frozen=True)
class PhoneSegment:
    """One recognised phone with absolute times from the start of the stream.

    Attributes:
        phone: ARPAbet phone without stress, upper case (``"AA"``, ``"P"``), or ``"SIL"``
            for silence, noise and fillers.
        start_s: Start time in seconds since the stream started.
        end_s: End time in seconds (exclusive); ``end_s > start_s``.
    """

    phone: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """Length of the segment in seconds."""
        return self.end_s - self.start_s


def normalize_phone(name: str) -> str:
    """Map a pocketsphinx phone name to the reported label.

    Args:
        name: Phone as printed by pocketsphinx, e.g. ``"AA"``, ``"SIL"``, ``"+NSN+"``.

    Returns:
        The upper-case phone with any stress digit removed, or ``"SIL"`` for silence,
        noise and filler units.
    """
    label = name.strip().upper().rstrip("012")
    if not label or label in _SILENCE_NAMES or label.startswith(("+", "[", "<")):
        return "SIL"
    return label


def merge_segments(segments: Iterable[PhoneSegment]) -> list[PhoneSegment]:
    """Join adjacent, touching segments that carry the same phone.

    The recognizer commits a phone that is still running at the commit horizon in
    pieces; merging gives one segment per phone occurrence.

    Args:
        segments: Segments in time order.

    Returns:
        A new list where touching neighbours with equal labels are fused.
    """
    out: list[PhoneSegment] = []
    for seg in segments:
        if out and out[-1].phone == seg.phone and abs(out[-1].end_s - seg.start_s) < 1e-9:
            out[-1] = PhoneSegment(seg.phone, out[-1].start_s, seg.end_s)
        else:
            out.append(seg)
    return out


class StreamResampler:
    """Exact streaming rational-ratio resampler (windowed-sinc polyphase FIR).

    The output is identical however the input is chunked.  Output sample ``n`` is aligned
    with input time ``n / rate_out`` (the filter is zero-phase; the resampler holds back
    the few input samples the filter needs from the future until they arrive or
    :meth:`drain` is called).
    """

    def __init__(self, rate_in: int, rate_out: int, half_taps: int = 16) -> None:
        """Design the filter.

        Args:
            rate_in: Input sample rate (Hz).
            rate_out: Output sample rate (Hz).
            half_taps: Filter half length in input samples per polyphase branch.
        """
        ratio = Fraction(rate_out, rate_in)
        self.up = ratio.numerator
        self.down = ratio.denominator
        cutoff = 0.5 / max(self.up, self.down)  # cycles per upsampled sample
        half = half_taps * max(self.up, self.down)
        k = np.arange(-half, half + 1, dtype=np.float64)
        taps = 2.0 * cutoff * np.sinc(2.0 * cutoff * k) * np.kaiser(k.size, 8.0) * self.up
        self.delay = half  # centre tap, in upsampled samples
        n_branch = -(-taps.size // self.up)
        padded = np.zeros(n_branch * self.up)
        padded[: taps.size] = taps
        # poly[p, i] = h[p + up * i]
        self.poly = padded.reshape(n_branch, self.up).T.copy()
        self.n_branch = n_branch
        self.reset()

    def reset(self) -> None:
        """Forget all input."""
        # Zero history so outputs near t=0 see silence before the stream.
        self._buf = np.zeros(self.n_branch, dtype=np.float64)
        self._buf_start = -self.n_branch  # absolute input index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    def _produce(self, last_out: int) -> np.ndarray:
        """Compute outputs ``self._n_out .. last_out - 1`` from the buffered input."""
        if last_out <= self._n_out:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._n_out, last_out, dtype=np.int64)
        pos = n * self.down + self.delay
        phase = pos % self.up
        base = pos // self.up - self._buf_start
        idx = base[:, None] - np.arange(self.n_branch)[None, :]
        y = np.einsum("ij,ij->i", self.poly[phase], self._buf[idx])
        self._n_out = last_out
        keep_from = (self._n_out * self.down + self.delay) // self.up - self.n_branch
        drop = max(0, keep_from - self._buf_start)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Push input samples and return every output sample that is now computable."""
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._n_in += x.size
        # Output n needs input index (n*down + delay) // up <= n_in - 1.
        last = (self._n_in * self.up - self.delay + self.down - 1) // self.down
        last = max(last, self._n_out)
        return self._produce(last)

    def lag_input(self) -> int:
        """Delay the output by the filter's half length: feed that much silence now.

        Afterwards every input chunk of a whole number of ``down`` samples gives exactly
        ``chunk * up / down`` outputs at once (the zero-phase filter otherwise holds back
        the outputs whose future input has not arrived), and output ``n`` is aligned with
        input time ``n / rate_out`` minus the lag. Returns the lag in input samples
        (48 -> 16 kHz: 48 samples, 1 ms)."""
        lag = -(-self.delay // self.up)
        self.process(np.zeros(lag, np.float32))
        return lag

    def drain(self) -> np.ndarray:
        """Return the outputs still owed for the input so far, assuming silence after it."""
        total = self._n_in * self.up // self.down
        need = (max(total - 1, 0) * self.down + self.delay) // self.up + 1
        pad = need - (self._buf_start + self._buf.size)
        if pad > 0:
            self._buf = np.concatenate([self._buf, np.zeros(pad)])
        out = self._produce(total)
        self._n_in = 0
        self._n_out = 0
        self._buf = np.zeros(self.n_branch, dtype=np.float64)
        self._buf_start = -self.n_branch
        return out


class StreamingPhoneRecognizer:
    """Frame-synchronous phone recognizer that emits final segments with small latency.

    Usage::

        rec = StreamingPhoneRecognizer(sample_rate=16000)
        for chunk in mic_chunks:          # float32 mono in [-1, 1], any length
            for seg in rec.push(chunk):   # final, in order, contiguous
                drive_mouth(seg)
        tail = rec.flush()

    Attributes:
        sample_rate: Input sample rate in Hz.
        lookahead_ms: Declared latency: after each push, segments are final up to
            ``audio_pushed_s - lookahead_ms / 1000`` when the audio pushed so far is a
            whole number of ``step_ms`` steps at 16 kHz.  Otherwise the incomplete step
            (and, for other input rates, the resampler's ~1-2 ms filter delay) is not
            decoded yet and finality lags by that much more.  At a pause (an utterance
            restart) segments become final right up to the audio edge.
        step_ms: Internal processing step in milliseconds (multiple of 10).
    """

    DEFAULT_LOOKAHEAD_MS = 150.0
    #: Digital silence between utterances is not decoded (see :meth:`_skip`).
    SKIP_SILENCE = True
    #: Skipped silence decoded before an utterance that follows it (see :meth:`_feed`).
    SKIP_LEAD_MS = 300
    #: The least commit delay: the decoder's own (feature deltas plus search).
    MIN_LOOKAHEAD_MS = 60.0

    def __init__(
        self,
        sample_rate: int = DECODER_RATE,
        lookahead_ms: float = DEFAULT_LOOKAHEAD_MS,
        *,
        step_ms: int = 20,
        lw: float = 3.0,
        beam: float = 1e-20,
        restart_sil_ms: float = 200.0,
        min_utt_s: float = 1.0,
        max_utt_s: float = 10.0,
        overlap_ms: float = 300.0,
        hmm: str | None = None,
        phone_lm: str | None = None,
    ) -> None:
        """Load the decoder.

        Args:
            sample_rate: Rate of the audio given to :meth:`push` (resampled to 16 kHz).
            lookahead_ms: Commit latency behind the live audio edge, rounded to 10 ms.
                Must be at least 60 ms (the decoder's own delay).  The default, 150 ms,
                commits a label identical to the one the full utterance would end up
                with for ~91 % of frames (~95 % at coarse mouth-class level); 200 ms
                gives ~96 % and 300 ms ~99 %.
            step_ms: Internal step (a multiple of 10 ms); decisions happen every step.
            lw: Weight of the phone language model.
            beam: Viterbi beam and phone-exit beam (``beam`` / ``pbeam``).
            restart_sil_ms: Trailing silence in the partial path that lets an utterance
                end and restart.
            min_utt_s: Minimum utterance length before a restart at silence.
            max_utt_s: Utterance length that forces a restart even without silence.
            overlap_ms: Audio before the commit horizon that is decoded again after a
                forced restart, so the new utterance has settled by the horizon.
            hmm: Acoustic model directory (default: pocketsphinx's ``en-us/en-us``).
            phone_lm: Phone language model (default: ``en-us/en-us-phone.lm.bin``).

        Raises:
            ValueError: On an invalid rate, step or lookahead.
        """
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if step_ms <= 0 or step_ms % 10:
            raise ValueError("step_ms must be a positive multiple of 10")
        la_frames = int(round(lookahead_ms / 10.0))
        if la_frames < int(self.MIN_LOOKAHEAD_MS / 10):
            raise ValueError(f"lookahead_ms must be at least {self.MIN_LOOKAHEAD_MS:g} ms")
        self.sample_rate = int(sample_rate)
        self.lookahead_ms = float(la_frames * 10)
        self.step_ms = int(step_ms)
        self._step = self.step_ms * _FRAME // 10
        self._la = la_frames * _FRAME
        self._restart_sil = int(round(restart_sil_ms / 10.0))
        self._min_utt = int(round(min_utt_s * DECODER_RATE))
        self._max_utt = max(int(round(max_utt_s * DECODER_RATE)), self._min_utt)
        refeed = self._la + int(round(overlap_ms / 10.0)) * _FRAME
        self._refeed_blocks = -(-refeed // self._step)
        if self._max_utt <= (self._refeed_blocks + 1) * self._step:
            raise ValueError("max_utt_s must exceed lookahead_ms + overlap_ms")
        self.config = {
            "hmm": hmm or pocketsphinx.get_model_path("en-us/en-us"),
            "allphone": phone_lm or pocketsphinx.get_model_path("en-us/en-us-phone.lm.bin"),
            "lm": None,
            "dict": None,
            "lw": float(lw),
            "beam": float(beam),
            "pbeam": float(beam),
            # no phonetic lookahead for choosing which senones to score: in allphone
            # search it costs more than it saves (1.90 -> 1.75-1.79 ms per 40 ms of audio;
            # 98.5% of 10 ms rows get the same phone; lip sync unchanged, see the commit)
            "pl_window": 0,
            "loglevel": "FATAL",
        }
        """The pocketsphinx Config keys used (``lm``/``dict`` unset, allphone search)."""
        self._resampler = (
            StreamResampler(self.sample_rate, DECODER_RATE)
            if self.sample_rate != DECODER_RATE
            else None
        )
        self.reset()

    # ----------------------------------------------------------------- public API

    def reset(self) -> None:
        """Forget the stream: times restart at zero and the decoder is rebuilt.

        A fresh decoder (a few ms: the model is memory-mapped) also resets the adaptive
        state that ``end_utt`` keeps, such as live CMN and the noise estimate, so a reset
        recognizer behaves exactly like a new one.
        """
        self._decoder = pocketsphinx.Decoder(**self.config)
        self._in_utt = False
        if self._resampler is not None:
            self._resampler.reset()
        self._pending = np.zeros(0, dtype=np.int16)
        self._recent: deque[np.ndarray] = deque(maxlen=self._refeed_blocks)
        self._fed = 0  # 16 kHz samples given to the decoder (absolute)
        self._skipped = 0  # samples of digital silence not decoded since the last utterance
        self._utt_start = 0  # absolute sample where the current utterance began
        self._final = 0  # absolute sample up to which segments are final
        self._pushed_in = 0  # input samples pushed since reset (at sample_rate)

    @property
    def final_until_s(self) -> float:
        """Time (s) up to which segments have been returned and will never change."""
        return self._final / DECODER_RATE

    @property
    def audio_pushed_s(self) -> float:
        """Duration (s) of the audio pushed since the last :meth:`reset`."""
        return self._pushed_in / self.sample_rate

    def push(self, pcm: np.ndarray) -> list[PhoneSegment]:
        """Feed audio and return the segments that became final.

        Args:
            pcm: Mono float samples in ``[-1, 1]`` at :attr:`sample_rate`, any length
                (a 2-D ``(n, channels)`` array is averaged to mono).  Integer arrays
                are taken as int16 PCM.

        Returns:
            Newly finalised segments, in order, contiguous with everything returned
            before, covering up to :attr:`final_until_s`.  Never revised later.  A phone
            still running at the commit horizon is returned in pieces over several
            calls (same label, touching); :func:`merge_segments` joins them.
        """
        x = self._to_mono_float(pcm)
        self._pushed_in += x.size
        if self._resampler is not None:
            x = self._resampler.process(x)
        if x.size:
            pcm16 = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
            self._pending = np.concatenate([self._pending, pcm16])
        out: list[PhoneSegment] = []
        n_steps = self._pending.size // self._step
        for i in range(n_steps):
            block = self._pending[i * self._step : (i + 1) * self._step]
            if self.SKIP_SILENCE and not self._in_utt and not block.any():
                out.extend(self._skip(block))
                continue
            self._feed(block)
            out.extend(self._advance())
        if n_steps:
            self._pending = self._pending[n_steps * self._step :].copy()
        return merge_segments(out)

    def flush(self) -> list[PhoneSegment]:
        """End of stream: finalise everything pushed so far.

        Later pushes continue the same time line in a new utterance.

        Returns:
            The remaining segments; afterwards :attr:`final_until_s` equals
            :attr:`audio_pushed_s` (to the 16 kHz sample).
        """
        out: list[PhoneSegment] = []
        if self._resampler is not None:
            tail = self._resampler.drain()
            if tail.size:
                pcm16 = np.clip(np.round(tail * 32767.0), -32768, 32767).astype(np.int16)
                self._pending = np.concatenate([self._pending, pcm16])
        if self._pending.size:
            self._feed(self._pending)
            self._pending = np.zeros(0, dtype=np.int16)
        if self._in_utt:
            out.extend(self._end_utterance())
        self._recent.clear()  # never decode audio across a stream end again
        if self._final < self._fed:  # nothing decoded at all (very short input)
            out.append(self._make("SIL", self._final, self._fed))
            self._final = self._fed
        return merge_segments(out)

    # ----------------------------------------------------------------- internals

    @staticmethod
    def _to_mono_float(pcm: np.ndarray) -> np.ndarray:
        x = np.asarray(pcm)
        if x.ndim == 2:
            x = x.mean(axis=1)
        elif x.ndim != 1:
            raise ValueError("pcm must be 1-D (mono) or 2-D (samples, channels)")
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float32) / 32768.0
        return x.astype(np.float32, copy=False)

    def _feed(self, block: np.ndarray) -> None:
        """Give one block of int16 samples to the decoder, starting an utterance if needed
        (after skipped silence, with up to ``SKIP_LEAD_MS`` of it: the decoder expects
        silence before speech, and labels an onset it starts on differently)."""
        if not self._in_utt:
            self._decoder.start_utt()
            self._in_utt = True
            lead = min(self._skipped, self.SKIP_LEAD_MS * _FRAME // 10)
            self._utt_start = self._fed - lead
            if lead:
                self._decoder.process_raw(bytes(2 * lead), False, False)
        self._skipped = 0
        self._decoder.process_raw(block.tobytes(), False, False)
        self._fed += block.size
        self._recent.append(block)

    def _skip(self, block: np.ndarray) -> list[PhoneSegment]:
        """Digital silence between utterances (a VAD gate's closed output, a muted or
        absent microphone) is silence: it is not decoded, which is most of a listening
        session's recogniser CPU. It is committed as SIL up to the lookahead horizon, as a
        decoded silence would be, so what follows is seen no later than before."""
        self._fed += block.size
        self._skipped += block.size
        self._recent.append(block)
        horizon = self._fed - self._la
        if horizon <= self._final:
            return []
        seg = self._make("SIL", self._final, horizon)
        self._final = horizon
        return [seg]

    def _restart_with_overlap(self) -> None:
        """Drop the current utterance and decode the recent audio again in a new one."""
        self._decoder.end_utt()
        blocks = list(self._recent)
        audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int16)
        self._decoder.start_utt()
        self._utt_start = self._fed - audio.size
        if audio.size:
            self._decoder.process_raw(audio.tobytes(), False, False)

    def _make(self, phone: str, start: int, end: int) -> PhoneSegment:
        return PhoneSegment(phone, start / DECODER_RATE, end / DECODER_RATE)

    def _path(self) -> list[tuple[str, int, int]]:
        """Current best path as ``(label, abs_start_sample, abs_end_sample)``."""
        segs = self._decoder.seg()
        if segs is None:
            return []
        base = self._utt_start
        return [
            (
                normalize_phone(s.word),
                base + s.start_frame * _FRAME,
                base + (s.end_frame + 1) * _FRAME,
            )
            for s in segs
        ]

    def _commit(self, path: list[tuple[str, int, int]], horizon: int) -> list[PhoneSegment]:
        """Emit the part of ``path`` between the final mark and ``horizon``."""
        out: list[PhoneSegment] = []
        if horizon <= self._final:
            return out
        if self._final < self._utt_start:  # skipped silence before this utterance
            sil_end = min(self._utt_start, horizon)
            out.append(self._make("SIL", self._final, sil_end))
            self._final = sil_end
            if horizon <= self._final:
                return out
        for label, start, end in path:
            lo = max(start, self._final)
            hi = min(end, horizon)
            if hi > lo:
                if lo > self._final:  # defensive: never leave a gap
                    out.append(self._make(label, self._final, lo))
                out.append(self._make(label, lo, hi))
                self._final = hi
            if end >= horizon:
                break
        return out

    def _end_utterance(self) -> list[PhoneSegment]:
        """End the utterance and commit its final path up to the decoder's input edge."""
        self._decoder.end_utt()
        self._in_utt = False
        path = self._path()
        if path:
            # The final backtrace stops one frame short; stretch the last phone.
            label, start, _ = path[-1]
            path[-1] = (label, start, self._fed)
        else:
            path = [("SIL", self._utt_start, self._fed)]
        return self._commit(path, self._fed)

    def _advance(self) -> list[PhoneSegment]:
        """Commit what is older than the lookahead; restart the utterance when due."""
        path = self._path()
        utt_len = self._fed - self._utt_start
        if path and utt_len >= self._min_utt:
            label, start, end = path[-1]
            if label == "SIL" and (end - start) >= self._restart_sil * _FRAME:
                return self._end_utterance()
        horizon = min(self._fed - self._la, path[-1][2] if path else self._final)
        out = self._commit(path, horizon)
        if utt_len >= self._max_utt:
            self._restart_with_overlap()
        return out
