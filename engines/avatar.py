"""The in-process avatar API: one face, many streams; push speech, set emotion, pull frames.

This is what ``etf serve`` runs per session (``server/session.py`` adds the wall clock,
WebRTC and the control channel on top) and what an agent embeds without a network::

    from engines.avatar import Avatar

    avatar = Avatar.load()                      # the built-in face; or image=..., identity=...
    stream = avatar.stream(fps=25, emotion="happy", intensity=0.7)
    stream.push_speech(pcm, rate=24000)         # an utterance: int16 or float, any common rate
    stream.set_emotion("surprise", 0.8)         # blended over 250 ms from now
    while True:
        for frame in stream.advance():          # one tick: 1/fps of stream time
            show(frame.pts, frame.image, frame.audio)   # audio: the same 1/fps, 48 kHz

Time is the stream's own content clock: each :meth:`AvatarStream.advance` is one frame
period (``1/fps``) of audio consumed, whether speech is queued or not (silence then, and the
face idles and blinks). Call it once per period for live output, or as fast as you like to
render offline. A frame comes out ``ready_lag`` ticks after its audio went in (the speech
front end's look-ahead); each :class:`AvatarFrame` carries its own slice of audio, so the
pairs are in sync by construction.

Speech comes in two kinds: *queued* (``push_speech`` / ``begin_speech`` + ``feed_speech``:
an agent's TTS, spoken in order, interruptible with :meth:`AvatarStream.interrupt`) and
*live* (``push_live``: a microphone at 48 kHz through the jitter buffer and VAD). Queued
speech has the floor while it plays.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.audio.audio_ingest import NET_RATE, AudioIngest
from engines.audio.phone_stream import StreamingPhoneRecognizer
from engines.face.identity import Identity
from engines.latency import LatencyRing
from engines.motion.emotion_state import DEFAULT_TRANSITION_S, EmotionState
from engines.render import texture_warp
from engines.render.landmark_default import SpeechLandmarkEngine
from engines.render.pipeline import FaceAnimator
from etf_models.emotions import EMOTIONS

#: Frames rendered in one tick at most when several became ready at once.
MAX_RENDER_PER_TICK = 3


@dataclass(frozen=True)
class StreamConfig:
    """Settings of one stream."""

    fps: float = 25.0
    emotion: str = "neutral"
    intensity: float = 1.0
    #: Live input: jitter buffer target (where it starts when adaptive) and bound, and the
    #: VAD gate. Adaptive: the target follows how late packets arrive, down to
    #: ``jitter_min_ms`` (engines/audio/audio_ingest.py).
    jitter_ms: float = 60.0
    max_buffer_ms: float = 300.0
    use_vad: bool = True
    jitter_adaptive: bool = True
    jitter_min_ms: float = 20.0
    #: The live path waits for 100 ms of audio after a frame's centre: the phone
    #: recogniser's 60 ms commit delay + the mouth's 40 ms lead over its sound, with no
    #: coarticulation reaching into the future (``etf render`` offline: 150 + 100 + 40 ms).
    #: benchmarks/lookahead_sweep.py: on 13 people's real talking clips this costs 0.02 of
    #: lip-sync correlation at the best lag (0.398 -> 0.378 median) against the old live
    #: setting (100 + 60 + 40 ms), and the mouth comes ~1 frame later (phones committed
    #: 60 ms behind the audio change late); it saves three frames of delay at 25 fps.
    phone_lookahead_ms: float = 60.0
    #: How far mouth coarticulation looks ahead (0..100 ms of the +-100 ms window).
    coart_future_ms: float = 0.0
    #: How far the mouth leads its sound (real mouths move ahead of what they shape).
    anticipation_ms: float = 40.0
    #: Queued speech may hold at most this much audio.
    max_queued_s: float = 120.0

    def make_ingest(self) -> AudioIngest:
        """The input side of one stream: jitter buffer, VAD and speech queue as set here."""
        return AudioIngest(self.jitter_ms, self.max_buffer_ms, use_vad=self.use_vad,
                           max_queued_s=self.max_queued_s, adaptive=self.jitter_adaptive,
                           min_target_ms=self.jitter_min_ms)

    def __post_init__(self) -> None:
        if self.fps not in (25.0, 30.0):
            raise ValueError(f"fps must be 25 or 30, got {self.fps:g}")
        if self.emotion not in EMOTIONS:
            raise ValueError(f"emotion {self.emotion!r} is not one of {', '.join(EMOTIONS)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity {self.intensity} is outside 0..1")
        if not 0.0 <= self.jitter_ms < self.max_buffer_ms:
            raise ValueError(f"jitter target {self.jitter_ms:g} ms is outside "
                             f"0..{self.max_buffer_ms:g}")
        if not 0.0 <= self.jitter_min_ms <= self.max_buffer_ms / 2:
            raise ValueError(f"minimum jitter target {self.jitter_min_ms:g} ms is outside "
                             f"0..{self.max_buffer_ms / 2:g}")
        # the engine's own bounds, checked here so a bad setting fails at start-up
        phones = StreamingPhoneRecognizer.MIN_LOOKAHEAD_MS
        if not phones <= self.phone_lookahead_ms <= 1000.0:
            raise ValueError(f"phone lookahead {self.phone_lookahead_ms:g} ms is outside "
                             f"{phones:g}..1000 ms")
        coart = SpeechLandmarkEngine.MAX_COART_FUTURE_MS
        if not 0.0 <= self.coart_future_ms <= coart:
            raise ValueError(f"coarticulation lookahead {self.coart_future_ms:g} ms is "
                             f"outside 0..{coart:g} ms")
        antic = SpeechLandmarkEngine.MAX_ANTICIPATION_MS
        if not 0.0 <= self.anticipation_ms <= antic:
            raise ValueError(f"anticipation {self.anticipation_ms:g} ms is outside "
                             f"0..{antic:g} ms")


@dataclass
class AvatarFrame:
    """One frame of a stream, with the audio it shows being spoken."""

    index: int
    pts: float  # seconds of stream time: index / fps
    image: np.ndarray  # [H,W,3] uint8 RGB (a buffer reused by the next advance())
    audio: np.ndarray  # [48000/fps] float32 mono at 48 kHz: content time [pts, pts + 1/fps)
    skipped: int = 0  # frames dropped just before this one to catch up


def measure_ready_lag(animator, config: StreamConfig, ticks: int = 60) -> int:
    """Ticks between a chunk's arrival and its frame being ready (``r``), measured.

    Runs the real ingest path and ``animator`` (a fresh stream: ``push_audio``,
    ``frames_ready``, ``skip``) on synthetic speech-like noise bursts and silence, taking
    the largest lag seen, so release times never wait on a frame that is not there.
    """
    ingest = AudioIngest(target_ms=0.0, max_ms=config.max_buffer_ms, use_vad=config.use_vad)
    n48 = int(round(NET_RATE / config.fps))
    rng = np.random.default_rng(0)
    lag = 0
    made = 0
    for n in range(ticks):
        burst = (n // 10) % 2 == 1
        ingest.push((rng.standard_normal(n48) * (0.2 if burst else 0.001)).astype(np.float32))
        _, speech = ingest.take(n48)
        animator.push_audio(speech)
        while animator.frames_ready() > 0:
            animator.skip()
            lag = max(lag, n - made)
            made += 1
    return lag


class Avatar:
    """One enrolled face and its prepared engines, shared by any number of streams."""

    def __init__(self, identity: Identity, warp: texture_warp.WarpState | None = None) -> None:
        self.identity = identity
        self.warp = warp or texture_warp.prepare(identity)
        self._lags: dict[tuple, int] = {}

    @classmethod
    def load(cls, image: str | np.ndarray | None = None, identity: str | None = None,
             max_side: int = 512) -> Avatar:
        """The built-in face, or a photo (path or RGB array) enrolled now, or a saved
        identity (``etf enroll``); scaled so its longer side is at most ``max_side``."""
        from engines.face.default_face import default_identity
        from engines.face.enrollment import enroll, enroll_image

        if identity is not None:
            ident = Identity.load(identity)
        elif isinstance(image, np.ndarray):
            ident = enroll_image(image, source="array")
        elif image is not None:
            ident = enroll(image)
        else:
            ident = default_identity()
        return cls(ident.for_video(max_side))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        h, w = self.identity.photo.shape[:2]
        return w, h

    def animator(self, config: StreamConfig, emotion: EmotionState | None = None,
                 seed: int = 0) -> FaceAnimator:
        return FaceAnimator(self.identity, config.fps, emotion=emotion, seed=seed,
                            warp=self.warp, phone_lookahead_ms=config.phone_lookahead_ms,
                            coart_future_ms=config.coart_future_ms,
                            anticipation_ms=config.anticipation_ms)

    def ready_lag(self, config: StreamConfig) -> int:
        """Ticks from audio in to its frame out for streams of ``config`` (measured once)."""
        key = (config.fps, config.phone_lookahead_ms, config.coart_future_ms,
               config.anticipation_ms,
               config.use_vad, config.max_buffer_ms)
        if key not in self._lags:
            self._lags[key] = measure_ready_lag(self.animator(config), config)
        return self._lags[key]

    def stream(self, fps: float = 25.0, emotion: str = "neutral", intensity: float = 1.0,
               seed: int = 0, **settings) -> AvatarStream:
        """A new stream (its own speech, emotion and clock); ``settings``: StreamConfig."""
        config = StreamConfig(fps=fps, emotion=emotion, intensity=intensity, **settings)
        return AvatarStream(self, config, seed=seed)


class AvatarStream:
    """One stream of frames (see the module docstring).

    Threads: the speech inputs (``push_speech``, ``begin/feed/end_speech``, ``push_live``,
    ``interrupt``), ``set_emotion`` and ``take_audio`` may be called from any thread (a
    lock guards the queue); rendering (``feed``, ``render``, ``advance``) from one thread
    at a time, which may hold no lock while it works, so an event loop can keep queueing
    speech while a worker renders."""

    def __init__(self, avatar: Avatar | None, config: StreamConfig, seed: int = 0,
                 animator=None, clock: Callable[[], float] | None = None,
                 latency: dict[str, LatencyRing] | None = None,
                 emotion: EmotionState | None = None,
                 ingest: AudioIngest | None = None) -> None:
        """``animator`` replaces the default engine's (the server's neural sessions pass
        theirs, built on ``emotion``); ``clock`` replaces the content clock for emotion
        timing (the server's session clock); ``latency`` receives the ``speech`` and
        ``frame`` timings."""
        self.avatar = avatar
        self.config = config
        self.period = 1.0 / config.fps
        self.samples_per_tick = int(round(NET_RATE / config.fps))
        self.emotion = emotion or EmotionState(config.emotion, config.intensity)
        self.ingest = ingest or config.make_ingest()
        if animator is None:
            animator = avatar.animator(config, self.emotion, seed)
        self.animator = animator
        self.ticks = 0  # audio chunks taken so far
        self._clock = clock
        self.latency = latency if latency is not None else {
            "speech": LatencyRing(), "frame": LatencyRing()}
        self._audio = deque()  # (tick index, 48 kHz chunk) waiting for their frame
        self._lock = threading.Lock()  # the input side: queue, jitter buffer, tick count

    # ----- inputs ----------------------------------------------------------------------

    def now(self) -> float:
        """Stream time in seconds (the content clock, or the owner's clock)."""
        return self._clock() if self._clock is not None else self.ticks * self.period

    def push_speech(self, pcm: np.ndarray | bytes, rate: int, channels: int = 1,
                    encoding: str = "s16le", emotion: str | None = None,
                    intensity: float | None = None) -> int:
        """Queue one whole utterance (int16 or float array, or raw PCM bytes in
        ``encoding``); ``emotion``/``intensity`` are shown from when it starts to play.
        Returns the utterance id."""
        uid = self.begin_speech(rate, channels, encoding, emotion, intensity)
        self.feed_speech(pcm)
        self.end_speech()
        return uid

    def begin_speech(self, rate: int, channels: int = 1, encoding: str = "s16le",
                     emotion: str | None = None, intensity: float | None = None,
                     transition_s: float = DEFAULT_TRANSITION_S) -> int:
        """Open a streamed utterance (then ``feed_speech`` chunks, then ``end_speech``)."""
        tag = None
        if emotion is not None or intensity is not None:
            if emotion is not None and emotion not in EMOTIONS:
                raise ValueError(f"emotion {emotion!r} is not one of {', '.join(EMOTIONS)}")
            if intensity is not None and not 0.0 <= intensity <= 1.0:
                raise ValueError(f"intensity {intensity} is outside 0..1")
            tag = {"emotion": emotion, "intensity": intensity, "transition_s": transition_s}
        with self._lock:
            return self.ingest.queue.begin(rate, channels, encoding, tag)

    def feed_speech(self, pcm: np.ndarray | bytes) -> float:
        """Append to the open utterance; returns the seconds of speech queued.
        Raises ``engines.audio.speech_queue.QueueFull`` beyond ``max_queued_s``."""
        with self._lock:
            return self.ingest.queue.push(pcm)

    def end_speech(self) -> None:
        with self._lock:
            self.ingest.queue.end()

    def push_live(self, pcm48: np.ndarray, media_end_s: float | None = None) -> None:
        """Live input (a microphone): mono float32 at 48 kHz, as it arrives;
        ``media_end_s``: its end on the sender's media clock (RTP), if known."""
        with self._lock:
            self.ingest.push(pcm48, media_end_s)

    def interrupt(self) -> float:
        """Barge-in: drop all queued speech now; returns the seconds dropped. What was
        already taken (``ready_lag`` ticks) still plays out with its frames, so the mouth
        closes when the audio the viewer hears stops."""
        with self._lock:
            return self.ingest.queue.clear()

    @property
    def queued_s(self) -> float:
        return self.ingest.queue.queued_s

    def set_emotion(self, emotion: str | None = None, intensity: float | None = None,
                    transition_s: float = DEFAULT_TRANSITION_S) -> None:
        """Aim at a new emotion and/or intensity now, blended over ``transition_s``."""
        self.emotion.set(emotion, intensity, at=self.now(), transition_s=transition_s)

    # ----- the tick --------------------------------------------------------------------

    def take_audio(self) -> tuple[np.ndarray, np.ndarray]:
        """One tick of input: (48 kHz chunk for the listener, 16 kHz copy for the face).
        Emotions of queued utterances that start now are applied."""
        with self._lock:
            chunk48, chunk16 = self.ingest.take(self.samples_per_tick)
            tags = list(self.ingest.tags)
            self.ingest.tags.clear()
            self.ticks += 1
        for tag in tags:
            self.set_emotion(tag["emotion"], tag["intensity"], tag["transition_s"])
        return chunk48, chunk16

    def feed(self, speech: list[np.ndarray]) -> tuple[int, int]:
        """Feed the 16 kHz audio of due ticks; (frames to render, frames skipped to catch
        up, at most ``MAX_RENDER_PER_TICK`` rendered)."""
        t_start = time.perf_counter()
        animator = self.animator
        for chunk in speech:
            animator.push_audio(chunk)
        self.latency["speech"].add(time.perf_counter() - t_start)
        ready = animator.frames_ready()
        skipped = max(0, ready - MAX_RENDER_PER_TICK)
        for _ in range(skipped):
            animator.skip()
        return ready - skipped, skipped

    def render(self, speech: list[np.ndarray], emotion_at: float | None = None):
        """Feed the due ticks' audio and render the frames that became ready (default
        engine): ``[(Frame, skipped before it)]``. Images are reused buffers."""
        n, skipped = self.feed(speech)
        at = self.now() if emotion_at is None else emotion_at
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            frame = self.animator.step(copy=False, emotion_at=at)
            self.latency["frame"].add(time.perf_counter() - t0)
            out.append((frame, skipped))
            skipped = 0
        return out

    def advance(self, ticks: int = 1) -> list[AvatarFrame]:
        """Consume ``ticks`` periods of input and return the frames that became ready,
        each with its own audio (see the module docstring)."""
        speech = []
        for _ in range(ticks):
            chunk48, chunk16 = self.take_audio()
            self._audio.append((self.ticks - 1, chunk48))
            speech.append(chunk16)
        out = []
        for frame, skipped in self.render(speech):
            while self._audio and self._audio[0][0] < frame.index:
                self._audio.popleft()
            audio = (self._audio.popleft()[1] if self._audio and
                     self._audio[0][0] == frame.index else
                     np.zeros(self.samples_per_tick, np.float32))
            out.append(AvatarFrame(frame.index, frame.index * self.period, frame.image, audio,
                                   skipped))
        return out

    @property
    def lookahead_ms(self) -> float:
        return self.animator.lookahead_ms
