"""One live session: audio in, paced video and delayed audio out, on one clock.

Timing (P = 1/fps, t0 = the session clock's origin, set when media starts flowing):

- Tick ``n`` fires at ``t0 + (n+1)P`` and takes audio chunk ``n`` (content time
  ``[nP, (n+1)P)``) from the jitter buffer, padding silence if the peer sent nothing, so a
  silent or audio-less peer still gets a live idle face.
- The landmark engine needs ``lookahead`` of audio after a frame, so frame ``k`` becomes
  ready at tick ``k + r``; ``r`` is measured once by :func:`measure_ready_lag`.  It is
  computed on a worker thread during that tick and released at ``t0 + (k + d)P`` with
  ``d = r + 2``: one period of compute budget, then a steady cadence.
- The same audio content is released to the viewer at ``t0 + dP + content time``, so the
  viewer hears chunk ``k`` while frame ``k`` is shown: audio and video leave aligned by
  construction, and the RTP timestamps (pts on the content clock) say the same.
- If compute falls behind, the next tick takes every chunk that became due and renders the
  frames that became ready (at most ``MAX_RENDER_PER_TICK``; older ones are skipped and
  counted as dropped), so latency stays bounded.
- Emotion changes are sampled at compute time on the session clock, so a change shows in
  the next frame computed (released one period later), blended over its transition.

Two kinds of engines: the default one renders each session's frames on the engine thread
pool (``FaceAnimator``); the neural one (``engines.neural.live``) prepares each session's
frame inputs on that pool and renders the frames of all sessions together on the device
worker (``BatchWorker``). Neural sessions start on a shared tick grid
(``aligned_start``) so their frames are due at the same instants and batch together.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from engines.audio.audio_ingest import NET_RATE, AudioIngest, SampleFifo
from engines.face.identity import Identity
from engines.latency import LatencyRing
from engines.motion.emotion_state import EmotionState
from engines.neural.batching import CapacityError, aligned_start
from engines.render import texture_warp
from engines.render.pipeline import FaceAnimator
from etf_models.emotions import EMOTIONS

log = logging.getLogger("etf.session")

STAGES = ("ingest", "speech", "frame", "yuv", "tick")
#: Audio frames sent to the viewer (20 ms at 48 kHz, what Opus wants).
AUDIO_FRAME = 960
#: Frames rendered in one tick at most when several became ready at once.
MAX_RENDER_PER_TICK = 3
#: More than this many ticks behind (a suspended machine) resets the clock instead.
MAX_CATCHUP_TICKS = 25


@dataclass(frozen=True)
class SessionConfig:
    """Per-session settings (one per server; filled by the CLI)."""

    fps: float = 25.0
    jitter_ms: float = 60.0
    max_buffer_ms: float = 300.0
    phone_lookahead_ms: float = 100.0
    #: How far mouth coarticulation looks ahead (live default 60 ms of the 100 ms window:
    #: one frame less delay at 25 fps for ~1% lower lip-sync correlation on the devset).
    coart_future_ms: float = 60.0
    use_vad: bool = True
    emotion: str = "neutral"
    intensity: float = 1.0
    #: A connected peer from which nothing arrives for this long is gone.
    idle_timeout_s: float = 5.0
    #: A peer that never connects after its offer is dropped after this long.
    connect_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.fps not in (25.0, 30.0):
            raise ValueError(f"fps must be 25 or 30, got {self.fps:g}")
        if self.emotion not in EMOTIONS:
            raise ValueError(f"emotion {self.emotion!r} is not one of {', '.join(EMOTIONS)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity {self.intensity} is outside 0..1")


@dataclass
class VideoOut:
    """A rendered frame waiting for its release time."""

    index: int
    yuv: np.ndarray  # [H*3/2, W] uint8, I420
    release: float  # session clock (monotonic seconds)
    skipped: int = 0  # frames advanced without rendering to catch up


def measure_ready_lag(animator, config: SessionConfig, ticks: int = 60) -> int:
    """Ticks between a chunk's arrival and its frame being ready (``r``), measured.

    Runs the real ingest path and ``animator`` (a fresh per-session stream: ``push_audio``,
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


class Session:
    """State and clock of one live peer (see module docstring). Thread use: the tick loop
    and the tracks run on the event loop; only ``_compute`` runs on the worker pool."""

    def __init__(
        self,
        identity: Identity,
        warp: texture_warp.WarpState,
        config: SessionConfig,
        executor: Executor,
        ready_lag: int,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        session_id: str | None = None,
        neural=None,
    ) -> None:
        # The id is a capability: it grants control of the session, so it is unguessable
        # unless the caller names it (etf live's single local session).
        self.id = session_id or secrets.token_urlsafe(16)
        self.label = self.id[:6]  # public name (logs, metrics); the registry numbers it
        self.identity = identity
        self.warp = warp
        self.config = config
        self.executor = executor
        self.clock = clock
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        self.period = 1.0 / config.fps
        self.samples_per_tick = int(round(NET_RATE / config.fps))
        self.delay_ticks = ready_lag + 2
        self.emotion = EmotionState(config.emotion, config.intensity)
        self.neural = neural  # engines.neural.live.NeuralEngines, or None: the default engine
        self.ingest = AudioIngest(config.jitter_ms, config.max_buffer_ms, use_vad=config.use_vad)
        self.animator: FaceAnimator | None = None
        self.created = clock()
        self.t0: float | None = None
        self.closed = False
        self.close_reason = ""
        self.video_queue: asyncio.Queue[VideoOut] = asyncio.Queue(maxsize=3)
        self._audio_out = SampleFifo()  # input audio waiting for its release time
        self._audio_frames = 0  # outgoing 20 ms audio frames handed out so far
        self._task: asyncio.Task | None = None
        self._closed_event = asyncio.Event()
        self.latency = {s: LatencyRing() for s in STAGES}
        self.counters = collections.Counter()
        self._sent_times: collections.deque[float] = collections.deque(maxlen=100)
        self.on_close: list[Callable[[Session], None]] = []

    # ----- lifecycle -------------------------------------------------------------------

    async def prepare(self) -> None:
        """Build the per-session engines off the event loop."""
        loop = asyncio.get_running_loop()
        if self.neural is not None:
            self.neural.worker.open(self.id)  # CapacityError when the device is full
            self.on_close.append(lambda s: s.neural.worker.close(s.id))
            self.animator = await loop.run_in_executor(
                self.executor,
                lambda: self.neural.stream(self.config.fps, self.emotion, self.seed))
            return
        self.animator = await loop.run_in_executor(
            self.executor,
            lambda: FaceAnimator(self.identity, self.config.fps, emotion=self.emotion,
                                 seed=self.seed, warp=self.warp,
                                 phone_lookahead_ms=self.config.phone_lookahead_ms,
                                 coart_future_ms=self.config.coart_future_ms),
        )

    def ensure_started(self) -> None:
        """Start the clock and the tick loop (first media pull from either track)."""
        if self._task is None and not self.closed:
            now = self.clock()
            self.t0 = now if self.neural is None else aligned_start(now, self.period)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.info("session %s closed: %s", self.label, reason)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._closed_event.set()
        for cb in self.on_close:
            cb(self)

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    # ----- inputs ----------------------------------------------------------------------

    def push_audio(self, pcm48: np.ndarray) -> None:
        """Mono 48 kHz float32 samples from the peer (event loop)."""
        t = time.perf_counter()
        self.ingest.push(pcm48)
        self.latency["ingest"].add(time.perf_counter() - t)

    def set_emotion(self, emotion: str | None, intensity: float | None,
                    transition_s: float) -> None:
        """Aim at a new emotion/intensity now, blended over ``transition_s``."""
        self.emotion.set(emotion, intensity, at=self.now(), transition_s=transition_s)
        self.counters["emotion_changes"] += 1

    def now(self) -> float:
        """Seconds on the session clock (0 before media starts)."""
        return 0.0 if self.t0 is None else self.clock() - self.t0

    # ----- outputs (pulled by the tracks) ------------------------------------------------

    async def next_video(self) -> VideoOut:
        """The next frame, at its release time (waits for it)."""
        self.ensure_started()
        out = await self.video_queue.get()
        wait = out.release - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -self.period:
            self.counters["frames_late"] += 1
        self.counters["frames_sent"] += 1
        self._sent_times.append(self.clock())
        return out

    async def next_audio(self) -> tuple[int, np.ndarray]:
        """The next 20 ms of delayed input audio for the viewer, at its release time:
        ``(m, 960 samples)``, where frame ``m`` holds content time ``m * 20 ms``."""
        self.ensure_started()
        m = self._audio_frames
        self._audio_frames += 1
        release = self.t0 + self.delay_ticks * self.period + m * AUDIO_FRAME / NET_RATE
        wait = release - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm = self._audio_out.pop(AUDIO_FRAME)
        if pcm.size < AUDIO_FRAME:
            self.counters["audio_out_underruns"] += 1
            pcm = np.concatenate([pcm, np.zeros(AUDIO_FRAME - pcm.size, np.float32)])
        return m, pcm

    # ----- the tick loop ---------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        try:
            while not self.closed:
                fire = self.t0 + (n + 1) * self.period
                wait = fire - self.clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                due = int((self.clock() - self.t0) / self.period) - n
                if due > MAX_CATCHUP_TICKS:
                    # Far behind (the process was stopped): skip the gap, keep the cadence.
                    self.counters["ticks_skipped"] += due - 1
                    n += due - 1
                    due = 1
                due = max(1, due)
                speech = []
                for _ in range(due):
                    chunk48, chunk16 = self.ingest.take(self.samples_per_tick)
                    self._queue_output_audio(chunk48)
                    speech.append(chunk16)
                frames = await self._frames(speech)
                n += due
                for frame in frames:
                    self._publish(frame)
        except asyncio.CancelledError:
            raise
        except Exception:  # an engine failure ends this session only
            log.exception("session %s failed", self.label)
            loop.create_task(self.close("engine error"))

    def _queue_output_audio(self, chunk48: np.ndarray) -> None:
        self._audio_out.push(chunk48)
        limit = 2 * NET_RATE  # nobody is pulling audio (no audio transceiver): keep 2 s
        if len(self._audio_out) > limit:
            self._audio_out.pop(len(self._audio_out) - limit)

    async def _frames(self, speech: list[np.ndarray]) -> list[VideoOut]:
        """This tick's frames: rendered on the engine pool (default engine), or inputs
        prepared on the pool and rendered in a batch on the device worker (neural)."""
        loop = asyncio.get_running_loop()
        if self.neural is None:
            return await loop.run_in_executor(self.executor, self._compute, speech,
                                              self.now())
        t_start = time.perf_counter()
        jobs = await loop.run_in_executor(self.executor, self._compute_inputs, speech,
                                          self.now())
        futures = [asyncio.wrap_future(self.neural.worker.submit(self.id, inputs))
                   for _, inputs, _ in jobs]
        t0 = time.perf_counter()
        images = await asyncio.gather(*futures)
        out = []
        for (index, _, skipped), yuv in zip(jobs, images, strict=True):
            self.latency["frame"].add(time.perf_counter() - t0)
            release = self.t0 + (index + self.delay_ticks) * self.period
            out.append(VideoOut(index, yuv, release, skipped=skipped))
        if out:
            self.latency["tick"].add(time.perf_counter() - t_start)
        return out

    def _ready_frames(self, speech: list[np.ndarray]) -> tuple[int, int]:
        """Feed the audio of due ticks; (frames to render, frames skipped to catch up)."""
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

    def _compute_inputs(self, speech: list[np.ndarray], emotion_at: float) -> list[tuple]:
        """Worker thread (neural): [(frame index, FrameInputs, skipped before it)]."""
        n, skipped = self._ready_frames(speech)
        jobs = []
        for _ in range(n):
            index = self.animator.frame_index
            jobs.append((index, self.animator.next_inputs(emotion_at), skipped))
            skipped = 0
        return jobs

    def _compute(self, speech: list[np.ndarray], emotion_at: float) -> list[VideoOut]:
        """Worker thread: feed the audio of due ticks, render the frames that became ready.

        Normally one frame is ready per tick. After a hiccup (a late tick, the phone
        recogniser committing in a burst) up to ``MAX_RENDER_PER_TICK`` are rendered, each
        released at its own time; beyond that the oldest are skipped (counted as dropped).
        """
        t_start = time.perf_counter()
        n, skipped = self._ready_frames(speech)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            frame = self.animator.step(copy=False, emotion_at=emotion_at)
            t1 = time.perf_counter()
            yuv = cv2.cvtColor(frame.image, cv2.COLOR_RGB2YUV_I420)
            t2 = time.perf_counter()
            self.latency["frame"].add(t1 - t0)
            self.latency["yuv"].add(t2 - t1)
            release = self.t0 + (frame.index + self.delay_ticks) * self.period
            out.append(VideoOut(frame.index, yuv, release, skipped=skipped))
            skipped = 0
        if out:
            self.latency["tick"].add(time.perf_counter() - t_start)
        return out

    def _publish(self, out: VideoOut) -> None:
        self.counters["frames_rendered"] += 1
        self.counters["frames_dropped"] += out.skipped
        if self.video_queue.full():  # nobody is pulling video fast enough: newest wins
            self.video_queue.get_nowait()
            self.counters["frames_dropped"] += 1
        self.video_queue.put_nowait(out)

    # ----- reporting -------------------------------------------------------------------

    @property
    def lookahead_ms(self) -> float:
        return self.animator.lookahead_ms if self.animator is not None else float("nan")

    def describe(self) -> dict:
        """Static facts a client wants on connect."""
        h, w = self.identity.photo.shape[:2]
        return {
            "session": self.id,
            "emotions": list(EMOTIONS),
            "emotion": self.emotion.emotion,
            "intensity": self.emotion.intensity,
            "fps": self.config.fps,
            "width": w,
            "height": h,
            "lookahead_ms": self.lookahead_ms,
            "pipeline_delay_ms": round(self.delay_ticks * self.period * 1e3, 1),
        }

    def stats(self, public: bool = False) -> dict:
        """Live statistics (JSON-ready); ``public`` names the session by label, not id."""
        now = self.clock()
        recent = [t for t in self._sent_times if now - t <= 2.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
        ing = self.ingest.stats
        return {
            "session": self.label if public else self.id,
            "label": self.label,
            "uptime_s": round(now - self.created, 3),
            "media_s": round(self.now(), 3),
            "fps": round(fps, 2),
            "target_fps": self.config.fps,
            "frames_sent": self.counters["frames_sent"],
            "frames_rendered": self.counters["frames_rendered"],
            "frames_dropped": self.counters["frames_dropped"],
            "frames_late": self.counters["frames_late"],
            "emotion": self.emotion.emotion,
            "intensity": self.emotion.intensity,
            "speech": ing.speech,
            "lookahead_ms": self.lookahead_ms,
            "pipeline_delay_ms": round(self.delay_ticks * self.period * 1e3, 1),
            "latency_ms": {s: r.quantiles_ms() for s, r in self.latency.items()},
            "queues": {
                "audio_ms": round(self.ingest.buffered_ms, 1),
                "audio_mean_ms": round(ing.mean_depth_ms, 1),
                "video_frames": self.video_queue.qsize(),
                "audio_out_ms": round(len(self._audio_out) * 1000.0 / NET_RATE, 1),
            },
            "audio": {
                "received_s": round(ing.received_s, 3),
                "underflows": ing.underflows,
                "silence_padded_s": round(ing.silence_padded_s, 3),
                "dropped_s": round(ing.dropped_s, 3),
                "out_underruns": self.counters["audio_out_underruns"],
            },
        }


class SessionRegistry:
    """All live sessions of one server; they share only the identity and its warp state."""

    def __init__(self, identity: Identity, config: SessionConfig, executor: Executor,
                 max_sessions: int, warp: texture_warp.WarpState | None = None,
                 neural=None) -> None:
        self.identity = identity
        self.config = config
        self.executor = executor
        self.max_sessions = max_sessions
        self.neural = neural
        if neural is not None:
            self.warp = None
            probe = neural.stream(config.fps, EmotionState(), 0)
        else:
            self.warp = warp or texture_warp.prepare(identity)
            probe = FaceAnimator(identity, config.fps, warp=self.warp,
                                 phone_lookahead_ms=config.phone_lookahead_ms,
                                 coart_future_ms=config.coart_future_ms)
        self.ready_lag = measure_ready_lag(probe, config)
        self.sessions: dict[str, Session] = {}
        self.started = time.monotonic()
        self.counters = collections.Counter()
        self.refused: collections.Counter = collections.Counter()

    def get(self, sid: str) -> Session | None:
        return self.sessions.get(sid)

    def check_capacity(self) -> None:
        """Raise :class:`CapacityError` (and count it) when every slot is taken."""
        if len(self.sessions) >= self.max_sessions:
            self.refused["capacity"] += 1
            raise CapacityError(
                f"the server is at capacity ({self.max_sessions} sessions); try again later"
            )

    async def create(self, session_id: str | None = None) -> Session:
        self.check_capacity()
        session = Session(self.identity, self.warp, self.config, self.executor, self.ready_lag,
                          session_id=session_id, neural=self.neural)
        session.label = f"s{self.counters['created'] + 1}"
        self.counters["created"] += 1
        self.sessions[session.id] = session  # reserve the slot before awaiting
        try:
            await session.prepare()
        except Exception:
            self.sessions.pop(session.id, None)
            raise
        session.on_close.append(lambda s: self.sessions.pop(s.id, None))
        self.counters["started"] += 1
        return session

    def overloaded(self) -> str | None:
        """Why a new session would degrade the others, or None.

        A running session (past its first 3 s) sending below 90% of its frame rate means
        the machine is already at its limit: better to refuse a newcomer clearly than to
        slow everyone down.
        """
        if self.neural is not None:
            why = self.neural.worker.overloaded(1.0 / self.config.fps)
            if why:
                return why
        for s in self.sessions.values():
            st = s.stats(public=True)
            if st["media_s"] > 3.0 and st["fps"] < 0.9 * self.config.fps:
                return (f"the server is overloaded (session {st['session']} runs at "
                        f"{st['fps']:.1f} of {self.config.fps:g} fps); try again later")
        return None

    async def close_all(self, reason: str = "server shutting down") -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())))

    def server_stats(self) -> dict:
        return {
            "sessions": len(self.sessions),
            "max_sessions": self.max_sessions,
            "sessions_started": self.counters["started"],
            "refused": dict(self.refused) or {"capacity": 0},
            "uptime_s": time.monotonic() - self.started,
            **({"device_worker": self.neural.worker.stats()} if self.neural else {}),
        }

