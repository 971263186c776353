"""The default landmark engine: speech -> phones -> visemes, plus emotion, blinks, idle motion.

Streaming by construction (the live server runs it as it is): audio is pushed in chunks of
any size, a streaming phone recogniser finalises phones a fixed time behind the audio
edge, and frame ``t`` (centred at ``t / fps`` seconds) is produced once the phones and the
loudness up to ``t / fps + COART`` are final. ``lookahead_ms`` states that delay.

Mouth movement = viseme targets (:mod:`engines.render.visemes`) scaled by loudness (a quiet vowel
opens less than a shouted one), coarticulated over +-100 ms, then scaled by ``opening_gain``
so that the mouth opens as far as real talking mouths do (measured on real talking clips).
The emotion arrives per frame
from the caller as a blend vector [7]; its landmark offsets (learned from real faces,
:mod:`engines.motion.emotion_model`) are added to speech so that closures still close.
"""

from __future__ import annotations

import math

import numpy as np

from engines.audio.phone_stream import StreamingPhoneRecognizer
from engines.motion.emotion_model import EmotionModel, close_lips, emotion_offsets
from engines.motion.face_motion import P, apply, build_fields
from engines.motion.idle import Blinker, IdleMotion, pose_points
from engines.render import lip_shapes, mouth_ridge
from engines.render.mouth_ridge import mouth_width
from engines.render.visemes import (
    COART_ROWS,
    DOMINANCE,
    FITTED_OPENING_GAIN,
    ROW_S,
    SILENCE,
    TARGETS,
    blend,
    phone_id,
)
from etf_models.canonical_face import IOD, mouth_opening

#: Phones that stay in place when the signal is quiet: closures are silent by nature.
_QUIET_OK = {phone_id(p) for p in ("P", "B", "M")}
_SPEECH_OPENING = np.array([P["jaw_open"], P["lips_part"]])
#: Everything that parts the inner lips (rounding and the f/v lip tuck do a little):
#: ``opening_gain`` scales them together, so the opening's time course keeps its shape
#: (scaling the jaw alone cost 0.02 of lip-sync correlation on real clips).
_LIPS_APART = np.array([P["jaw_open"], P["lips_part"], P["lip_round"], P["labiodental"]])
#: The learned opening works fully from this held loudness (0..1) on, less below it.
OPENING_GATE = 0.1


class Loudness:
    """10 ms loudness rows with automatic gain: 0 (silence) .. 1 (loud for this speaker).

    The level is judged against a slowly decaying peak and a slowly rising noise floor, so
    a quiet microphone and a loud one animate alike.
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        self.hop = int(round(sample_rate * ROW_S))
        self.reset()

    def reset(self) -> None:
        self._tail = np.zeros(0, np.float32)
        self.peak_db = -30.0
        self.floor_db = -70.0

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Levels in 0..1 for each complete 10 ms row of the new audio."""
        x = np.concatenate([self._tail, pcm.astype(np.float32, copy=False)])
        n = len(x) // self.hop
        self._tail = x[n * self.hop :]
        if n == 0:
            return np.zeros(0, np.float32)
        rows = x[: n * self.hop].reshape(n, self.hop)
        db = 10.0 * np.log10(np.mean(rows * rows, axis=1) + 1e-10)
        out = np.empty(n, np.float32)
        for i, d in enumerate(db):  # per 10 ms row: cheap, and the gain is sequential
            self.peak_db = max(d, self.peak_db - 0.02)  # ~2 dB/s decay
            self.floor_db = min(d, self.floor_db + 0.005) if d > -95 else self.floor_db
            gate = self.floor_db + 8.0
            out[i] = 0.0 if d < gate else min(1.0, (d - max(gate, self.peak_db - 30.0)) / 24.0)
        return np.maximum(out, 0.0)


def lips_closing(speech: np.ndarray) -> float:
    """How far the lips press or tuck in speech parameters [N_PARAMS] (0..1: p b m, f v).
    Closing lips keep the fields' own opening and shape, not the learned ones."""
    return min(1.0, float(speech[P["lip_press"]] + speech[P["labiodental"]]))


class SpeechLandmarkEngine:
    """Streaming landmarks for one identity and one session (see module docstring)."""

    #: Opening of a phone at silence-level loudness, as a fraction of its full target.
    base_gain = 0.4
    #: Jaw opening held while speech goes on (slow loudness), so the mouth does not snap
    #: shut between syllables: real mouths stay parted through running speech.
    speech_jaw = 0.25
    #: Articulators move ahead of the sound they shape (lips close before a /b/ is heard,
    #: the jaw opens before the vowel): frame t shows the speech of t + anticipation.
    anticipation_s = 0.04
    #: The most anticipation and coarticulation reach the engine takes (ms).
    MAX_ANTICIPATION_MS = 200.0
    MAX_COART_FUTURE_MS = COART_ROWS * ROW_S * 1e3
    #: The most the learned mouth's loudness rows reach past its phones' (10 ms rows): the
    #: live recogniser's commit delay.
    LEVEL_LEAD_ROWS = 6
    #: A live stream runs for hours: rows older than this (10 ms rows) behind the earliest
    #: row a coming frame reads are dropped, in steps of TRIM_ROWS (so the copy is rare),
    #: and the engine's memory stays bounded (whole files, read before any frame is taken,
    #: keep everything).
    HISTORY_ROWS = 500
    TRIM_ROWS = 6000
    #: The viseme targets and the held jaw were drawn by hand and opened the mouth ~1.8x as
    #: far as real talking mouths (inner-lip gap / eye-corner distance, median and 90th
    #: percentile, 13 people of ../shared/data/talking; benchmarks/lipsync_talking.py).
    #: This gain brought the median person's median and 90th percentile to the real ones
    #: with the hand table (0.56 fitted on all people; 0.56-0.57 with each person left out);
    #: with the visemes fitted to real mouths (``visemes.TARGETS``) the gain is fitted with
    #: them (benchmarks/visemes_real.py).
    hand_opening_gain = 0.56
    opening_gain = FITTED_OPENING_GAIN
    #: [n_phones, N_PARAMS] the viseme targets this engine shows (the fitted table)
    targets = TARGETS

    @classmethod
    def articulate(cls, speech: np.ndarray, level: float,
                   opening_gain: float | None = None) -> np.ndarray:
        """Speech parameters as the face shows them (in place, and returned): the jaw held
        open with the running loudness ``level`` (0..1) unless the lips press, then every
        lips-apart parameter scaled by the opening gain (the class's unless given). Nor is
        it held open under /f v/: the lower lip rests on the upper teeth there."""
        gain = cls.opening_gain if opening_gain is None else opening_gain
        closing = min(1.0, float(speech[P["lip_press"]] + speech[P["labiodental"]]))
        speech[P["jaw_open"]] += cls.speech_jaw * level * (1.0 - closing)
        speech[_LIPS_APART] *= gain
        return speech

    @classmethod
    def viseme(cls, phone: str, level: float = 1.0) -> np.ndarray:
        """One phone's parameters [N_PARAMS] held at loudness ``level``, as shown."""
        return cls.articulate(cls.targets[phone_id(phone)].copy(), level)

    def __init__(
        self,
        neutral: np.ndarray,
        fps: float = 25.0,
        seed: int = 0,
        sample_rate: int = 16000,
        idle_amplitude: float = 1.0,
        phone_lookahead_ms: float | None = None,
        coart_future_ms: float | None = None,
        emotion_model: EmotionModel | None = None,
        depth: np.ndarray | None = None,
        anticipation_ms: float | None = None,
        learned_mouth: bool = True,
        learned_lips: bool = True,
    ) -> None:
        """``phone_lookahead_ms``: the phone recogniser's commit delay (default 150 ms).
        ``coart_future_ms``: how far the coarticulation window reaches into the future
        (default and at most ``COART_ROWS`` rows, 100 ms); rows beyond it repeat the last
        row it reaches. Both trade lip-sync quality for latency (see ``lookahead_ms``).
        ``anticipation_ms``: how far the mouth leads its sound (default
        :attr:`anticipation_s`, 40 ms; 0..200); it adds to the latency too.
        ``emotion_model``: the emotions' geometry (default: the shipped model).
        ``depth``: the 68 points' depth [68] (canonical pixels, :meth:`Identity.
        canonical_depth`), what the head turns and nods through; default a typical
        face's. ``learned_mouth``: blend the visemes' opening and width with the ones
        learned from real mouths (:mod:`engines.render.mouth_ridge`); off, the visemes
        alone. ``learned_lips``: shape the lips for that opening and width as real lips
        are shaped (:mod:`engines.render.lip_shapes`); off, as the hand-made fields shape
        them."""
        self.neutral = np.asarray(neutral, np.float32)
        if depth is None:
            from engines.face.mesh68 import template_depth_68

            depth = template_depth_68() * IOD
        self.depth = np.asarray(depth, np.float64)
        self.fields = build_fields(self.neutral)
        self.emotion_offsets = emotion_offsets(self.neutral, emotion_model,
                                               fields=self.fields).reshape(7, -1)
        self.fps = float(fps)
        self.sample_rate = sample_rate
        self.seed = seed
        self.idle_amplitude = idle_amplitude
        future = COART_ROWS
        if coart_future_ms is not None:
            future = int(round(coart_future_ms / 1e3 / ROW_S))
        if not 0 <= future <= COART_ROWS:
            raise ValueError(f"coart_future_ms must be within 0..{self.MAX_COART_FUTURE_MS:g}")
        self.coart_future = future
        if anticipation_ms is not None:
            if not 0.0 <= anticipation_ms <= self.MAX_ANTICIPATION_MS:
                raise ValueError(
                    f"anticipation_ms must be within 0..{self.MAX_ANTICIPATION_MS:g}")
            self.anticipation_s = anticipation_ms / 1e3
        self.recognizer = (
            StreamingPhoneRecognizer(sample_rate=sample_rate)
            if phone_lookahead_ms is None
            else StreamingPhoneRecognizer(sample_rate=sample_rate, lookahead_ms=phone_lookahead_ms)
        )
        self.loudness = Loudness(sample_rate)
        #: the learned opening and width blended with the visemes' (None: the visemes alone)
        self.mouth_model: mouth_ridge.MouthRidge | None = (
            mouth_ridge.default_model() if learned_mouth else None)
        #: the lips' shape learned from real mouths (None: the fields' own)
        self.lip_model: lip_shapes.LipShapes | None = (
            lip_shapes.default_model() if learned_lips else None)
        #: the spectral envelope the learned mouth reads (None: it reads none)
        self.envelope = None if self.mouth_model is None else self.mouth_model.spectral_envelope()
        # The loudness is known as soon as the audio arrives, the phones only once the
        # recogniser commits them: the learned mouth reads the loudness up to the
        # recogniser's commit delay further ahead, at no extra latency.
        lead = int(round(self.recognizer.lookahead_ms / 1e3 / ROW_S))
        self._level_reach = self.coart_future + min(lead, self.LEVEL_LEAD_ROWS)
        ridges = () if self.mouth_model is None else (self.mouth_model.opening,
                                                      self.mouth_model.width)
        #: loudness rows past a frame's row it waits for
        self._level_rows_needed = max([self.coart_future] + [
            min(self._level_reach, r.level_future_rows) for r in ridges if r is not None])

        def slope(measure, name: str) -> float:  # the measure's change per unit parameter
            f = self.fields[P[name]]
            return 2.0 * float(measure(self.neutral + f) - measure(self.neutral + 0.5 * f))

        self._jaw_slope = max(slope(mouth_opening, "jaw_open"), 1e-3)
        self._round_slope = min(slope(mouth_width, "lip_round"), -1e-3)  # narrows
        self._stretch_slope = max(slope(mouth_width, "lip_stretch"), 1e-3)  # widens
        self._rest_width = float(mouth_width(self.neutral))
        self._rest_opening = float(mouth_opening(self.neutral))
        self.reset()

    @property
    def lookahead_ms(self) -> float:
        """Audio after a frame's centre that the frame waits for."""
        return (
            float(self.recognizer.lookahead_ms)
            + (self.coart_future * ROW_S + self.anticipation_s) * 1e3
        )

    def rewind(self) -> None:
        """Back to the first frame of what was heard (phones and loudness kept): the same
        audio replayed, e.g. with other ``targets`` or ``opening_gain``."""
        if self._row0 > 0:
            raise RuntimeError("the stream's first rows were dropped (HISTORY_ROWS): "
                               "it cannot be replayed from its start")
        self._frame = 0
        self._slow_level = 0.0

    def reset(self) -> None:
        """Start a new stream (new utterance or session)."""
        self.recognizer.reset()
        self.loudness.reset()
        rng = np.random.default_rng(self.seed)
        self.blinker = Blinker(rng)
        self.idle = IdleMotion(rng, self.idle_amplitude)
        self._phones = np.zeros(0, np.int16)  # phone id per 10 ms row (final rows only)
        self._levels = np.zeros(0, np.float32)  # loudness per 10 ms row
        # the spectral envelope per 10 ms row [n, n_cep] (None: the learned mouth reads none)
        self._cepstra: np.ndarray | None = None
        if self.envelope is not None:
            self.envelope.reset()
            self._cepstra = np.zeros((0, self.envelope.n_cep), np.float32)
        self._row0 = 0  # the stream's row that the arrays' first element is (rows dropped)
        self._slow_level = 0.0
        self._frame = 0
        self._flushed = False
        self._pushed_s = 0.0

    def push_audio(self, pcm: np.ndarray) -> None:
        """Feed 16 kHz mono float32 audio of any length (samples that are not finite are
        taken as silence: one NaN would otherwise stay in the running loudness and
        spectral envelope for the rest of the stream)."""
        pcm = np.asarray(pcm, np.float32).ravel()
        if not np.isfinite(pcm).all():
            pcm = np.nan_to_num(pcm, nan=0.0, posinf=0.0, neginf=0.0)
        self._pushed_s += len(pcm) / self.sample_rate
        levels = self.loudness.push(pcm)
        self._levels = np.concatenate([self._levels, levels])
        if self.envelope is not None:
            self._cepstra = np.concatenate([self._cepstra, self.envelope.push(pcm, levels)])
        self._add_segments(self.recognizer.push(pcm))
        self._drop_old_rows()

    def _drop_old_rows(self) -> None:
        """Drop the rows no coming frame reads any more (see HISTORY_ROWS)."""
        if self._frame == 0:
            return
        first = (int(round((self._frame / self.fps + self.anticipation_s) / ROW_S))
                 - COART_ROWS - self.HISTORY_ROWS)
        drop = min(first - self._row0, len(self._phones), len(self._levels))
        if drop < self.TRIM_ROWS:
            return
        self._phones = self._phones[drop:].copy()
        self._levels = self._levels[drop:].copy()
        if self._cepstra is not None:
            self._cepstra = self._cepstra[drop:].copy()
        self._row0 += drop

    def flush(self) -> None:
        """End of stream: every remaining frame up to the audio's end becomes ready."""
        self._add_segments(self.recognizer.flush())
        self._flushed = True

    def _add_segments(self, segments) -> None:
        for seg in segments:
            a, b = int(round(seg.start_s / ROW_S)), int(round(seg.end_s / ROW_S))
            have = self._row0 + len(self._phones)
            if b <= have:
                continue
            a = max(a, have)
            gap = a - have  # defensive: a hole in the segments is silence
            self._phones = np.concatenate(
                [
                    self._phones,
                    np.full(gap, SILENCE, np.int16),
                    np.full(b - a, phone_id(seg.phone), np.int16),
                ]
            )

    @property
    def frames_total(self) -> int:
        """Frames covering the audio pushed so far (one per 1/fps, at least one)."""
        return max(1, int(math.ceil(self._pushed_s * self.fps - 1e-6)))

    def frames_ready(self) -> int:
        """How many frames can be produced now without waiting for more audio."""
        if self._flushed:
            return self.frames_total - self._frame
        rows = self._row0 + min(len(self._phones) - self.coart_future,
                                len(self._levels) - self._level_rows_needed)
        last = int(math.floor(((rows - 1) * ROW_S - self.anticipation_s) * self.fps))
        return max(0, last + 1 - self._frame)

    def speech_params(self, t: float) -> np.ndarray:
        """Coarticulated speech parameters [N_PARAMS] at time t (s)."""
        c = int(round(t / ROW_S))
        # Rows past the window's reach repeat its last row (the same offline and live).
        idx = np.minimum(np.arange(c - COART_ROWS, c + COART_ROWS + 1), c + self.coart_future)
        idx = idx - self._row0
        n = min(len(self._phones), len(self._levels))
        ok = (idx >= 0) & (idx < n)
        phones = np.full(len(idx), SILENCE, np.int16)
        levels = np.zeros(len(idx), np.float32)
        phones[ok] = self._phones[idx[ok]]
        levels[ok] = self._levels[idx[ok]]
        quiet = (levels <= 0.0) & ~np.isin(phones, list(_QUIET_OK))
        phones[quiet] = SILENCE
        targets = self.targets[phones].copy()
        gain = np.where(phones == SILENCE, 0.0, self.base_gain + (1 - self.base_gain) * levels)
        targets[:, _SPEECH_OPENING] *= gain[:, None]
        return blend(targets, DOMINANCE[phones])

    def next_frame(self, emotion: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next frame's landmarks [68,2] (canonical) and its speech parameters [N_PARAMS].

        ``emotion``: the blend vector [7] (:meth:`EmotionState.vector_at`); None = neutral.

        Call only when :meth:`frames_ready` > 0 (or after :meth:`flush`).
        """
        t = self._frame / self.fps
        self._frame += 1
        speech = self.speech_params(t + self.anticipation_s)
        c = int(round((t + self.anticipation_s) / ROW_S))
        i = c - self._row0
        level = float(self._levels[i]) if 0 <= i < len(self._levels) else 0.0
        self._slow_level += (level - self._slow_level) * min(1.0, 3.0 / self.fps)
        self.articulate(speech, self._slow_level, self.opening_gain)
        speech[P["inner_brow_raise"]] += 0.12 * self._slow_level
        speech[P["outer_brow_raise"]] += 0.10 * self._slow_level
        speech[P["blink"]] = self.blinker.at(t)
        lm = apply(self.neutral, self.fields, speech)
        if self.mouth_model is not None:
            lm = self._learned_mouth(lm, speech, c)
        if self.lip_model is not None:
            lm = self.lip_model.apply(lm, self.neutral, self._lips_free(speech),
                                      (self._rest_opening, self._rest_width))
        if emotion is not None:
            offset = (np.asarray(emotion, np.float32) @ self.emotion_offsets).reshape(68, 2)
            lm = lm + close_lips(offset, float(speech[P["lip_press"]]))
        pose = self.idle.at(t, self._slow_level)
        lm = pose_points(lm, self.depth, pose, self.neutral[27:31].mean(axis=0))
        return lm, speech

    @property
    def _gate(self) -> float:
        """How far the learned mouth acts (0..1), by the held loudness (OPENING_GATE): a
        face at rest stays as it is."""
        return min(1.0, self._slow_level / OPENING_GATE)

    def _lips_free(self, speech: np.ndarray) -> float:
        """How free the lips are to take the learned width and shape (0..1): not at rest
        and not pressed or tucked (p b m, f v keep the fields' shape)."""
        return self._gate * (1.0 - lips_closing(speech))

    def _learned_mouth(self, lm: np.ndarray, speech: np.ndarray, row: int) -> np.ndarray:
        """``lm`` with the mouth opened and widened as far as the visemes' own blended with
        the learned ones (:mod:`engines.render.mouth_ridge`) say: the jaw makes up the
        opening, lip rounding or stretching the width; ``speech`` is updated too. Lips
        that press or tuck (p b m, f v) keep their opening and their width fades to the
        visemes' as they close; both blends fade in and out with the held loudness
        (OPENING_GATE): a face at rest stays as it is. ``row``: the stream's 10 ms row."""
        gate = self._gate
        if gate <= 0.0:
            return lm
        m = self.mouth_model
        row -= self._row0  # where it is in the rows kept
        closing = lips_closing(speech)
        if closing < 0.5:
            ours = float(mouth_opening(lm))
            want = m.opening.target(ours, m.opening.predict(
                self._phones, self._levels, row, self.coart_future, self._level_reach,
                self._cepstra))
            d = max(gate * (want - ours) / self._jaw_slope, -float(speech[P["jaw_open"]]))
            speech[P["jaw_open"]] += d
            lm = lm + d * self.fields[P["jaw_open"]]
        weight = self._lips_free(speech)
        if weight <= 0.0 or m.width is None:
            return lm
        ours = float(mouth_width(lm))
        want = m.width.target(ours, m.width.predict(
            self._phones, self._levels, row, self.coart_future, self._level_reach,
            self._cepstra), self._rest_width)
        # narrower: less stretch first, then more rounding; wider: the other way round
        r, s = float(speech[P["lip_round"]]), float(speech[P["lip_stretch"]])
        dw = weight * (want - ours)
        if dw < 0.0:
            ds = max(-s, dw / self._stretch_slope)
            dr = min(1.0 - r, (dw - ds * self._stretch_slope) / self._round_slope)
        else:
            dr = max(-r, dw / self._round_slope)
            ds = min(1.0 - s, (dw - dr * self._round_slope) / self._stretch_slope)
        speech[P["lip_round"]] += dr
        speech[P["lip_stretch"]] += ds
        return lm + dr * self.fields[P["lip_round"]] + ds * self.fields[P["lip_stretch"]]

    @property
    def frame_index(self) -> int:
        return self._frame
