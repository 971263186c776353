"""One live session: audio in, paced video and delayed audio out, on one clock.

Timing (P = 1/fps, t0 = the session clock's origin, set when media starts flowing):

- Tick ``n`` fires at ``t0 + (n+1)P`` and takes audio chunk ``n`` (content time
  ``[nP, (n+1)P)``) from the jitter buffer, padding silence if the peer sent nothing, so a
  silent or audio-less peer still gets a live idle face.
- The landmark engine needs ``lookahead`` of audio after a frame, so frame ``k`` becomes
  ready at tick ``k + r``; ``r`` is measured once by :func:`measure_ready_lag`.  It is
  computed on a worker thread during that tick and released at ``t0 + (k + r + 1)P + B``:
  ``B`` is the compute budget (``SessionConfig.compute_budget_ms``, one period unless set),
  then a steady cadence.
- The same audio content is released to the viewer at ``t0 + (r + 1)P + B`` + content
  time, so the viewer hears chunk ``k`` while frame ``k`` is shown: audio and video leave
  aligned by construction, and the RTP timestamps (pts on the content clock) say the same.
- If compute falls behind, the next tick takes every chunk that became due and renders the
  frames that became ready (at most ``MAX_RENDER_PER_TICK``; older ones are skipped and
  counted as dropped), so latency stays bounded.
- Emotion changes are sampled at compute time on the session clock, so a change shows in
  the next frame computed (released the compute budget later), blended over its transition.

Two kinds of engines: the default one renders each session's frames in the session's own
render process (``server.render_worker``: one interpreter per session, so sessions do not
wait on each other's GIL; a thread of the engine pool waits on it), or on the engine pool
itself (``FaceAnimator``) when processes are off or none can be started; the neural one
(``engines.neural.live``) prepares each session's frame inputs on that pool and renders
the frames of all sessions together on the device worker (``BatchWorker``). Neural
sessions start on a shared tick grid (``aligned_start``) so their frames are due at the
same instants and batch together.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from engines.audio.audio_ingest import NET_RATE, SampleFifo
from engines.avatar import Avatar, AvatarStream, StreamConfig, measure_ready_lag
from engines.face.identity import Identity
from engines.latency import LatencyRing
from engines.motion.emotion_state import EmotionState
from engines.neural.batching import CapacityError, aligned_start
from engines.render import texture_warp
from etf_models.emotions import EMOTIONS

log = logging.getLogger("etf.session")

#: Stages timed per session (stats' latency_ms); "late": how long past its release time a
#: frame left (0 when on time: its compute fitted the budget).
STAGES = ("ingest", "speech", "frame", "yuv", "encode", "tick", "late")
#: Audio frames sent to the viewer (20 ms at 48 kHz, what Opus wants).
AUDIO_FRAME = 960
#: More than this many ticks behind (a suspended machine) resets the clock instead.
MAX_CATCHUP_TICKS = 25
#: A session sending under this fraction of its frame rate (over the last 2 s) for
#: ``BELOW_RATE_AFTER_S`` is reported as below its rate (stats, /metrics, the log).
BELOW_RATE = 0.9
BELOW_RATE_AFTER_S = 3.0
#: Ticks between checks of the sent frame rate.
RATE_CHECK_TICKS = 12
#: The smallest compute budget a session may be given (ms).
MIN_COMPUTE_BUDGET_MS = 5.0


@dataclass(frozen=True)
class SessionConfig(StreamConfig):
    """Per-session settings (one per server; filled by the CLI): a stream's, plus how long
    a silent or absent peer is waited for."""

    #: A connected peer from which nothing arrives for this long is gone. A live peer
    #: sends RTCP receiver reports at least every ~1.5 s (aiortc: 0.5-1.5 s; browsers
    #: ~1 s) and, with a microphone, 50 audio packets a second, so 3 s of nothing means
    #: the peer vanished; its session (and render process) is freed within ~3.5 s.
    idle_timeout_s: float = 3.0
    #: A peer that never connects after its offer is dropped after this long.
    connect_timeout_s: float = 20.0
    #: The time a frame gets to be rendered (and VP8-encoded) once its audio is in, before
    #: it leaves with that audio (ms); None: one frame period. A frame that takes longer
    #: leaves late, when it is done (its sound does not wait).
    compute_budget_ms: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compute_budget_ms is not None and not (
                MIN_COMPUTE_BUDGET_MS <= self.compute_budget_ms <= 1000.0 / self.fps):
            raise ValueError(f"compute budget {self.compute_budget_ms:g} ms is outside "
                             f"{MIN_COMPUTE_BUDGET_MS:g}..{1000.0 / self.fps:g} ms (one frame)")

    @property
    def compute_budget_s(self) -> float:
        return (1.0 / self.fps if self.compute_budget_ms is None
                else self.compute_budget_ms / 1000.0)


@dataclass
class VideoOut:
    """A rendered frame waiting for its release time."""

    index: int
    yuv: np.ndarray | None  # [H*3/2, W] uint8, I420 (None when ``packet`` is given)
    release: float  # session clock (monotonic seconds)
    skipped: int = 0  # frames advanced without rendering to catch up
    packet: bytes | None = None  # the frame already encoded (VP8, by the render process)


class Session:
    """State and clock of one live peer (see module docstring). Thread use: the tick loop
    and the tracks run on the event loop; only ``_compute`` runs on the worker pool."""

    def __init__(
        self,
        identity: Identity,
        avatar: Avatar | None,
        config: SessionConfig,
        executor: Executor,
        ready_lag: int,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        session_id: str | None = None,
        neural=None,
        tts_executor: Executor | None = None,
        pool=None,
    ) -> None:
        # The id is a capability: it grants control of the session, so it is unguessable
        # unless the caller names it (etf live's single local session).
        self.id = session_id or secrets.token_urlsafe(16)
        self.label = self.id[:6]  # public name (logs, metrics); the registry numbers it
        self.identity = identity
        self.avatar = avatar  # the face with the default engine's prepared state; or None
        self.config = config
        self.executor = executor
        self.clock = clock
        self.seed = secrets.randbelow(2**31) if seed is None else seed
        self.period = 1.0 / config.fps
        self.samples_per_tick = int(round(NET_RATE / config.fps))
        # frame k is ready at the tick that fires at t0 + (k + ready_lag + 1)P (module
        # docstring) and leaves the compute budget after it
        self.delay_s = (ready_lag + 1) * self.period + config.compute_budget_s
        self.emotion = EmotionState(config.emotion, config.intensity)
        self.neural = neural  # engines.neural.live.NeuralEngines, or None: the default engine
        self.pool = pool  # server.render_worker.RenderPool, or None: render on the pool thread
        self.worker = None  # this session's render process (server.render_worker), if any
        #: The WebRTC sender of the video (set by the server): once it has made its VP8
        #: encoder, the render process encodes instead (see _video_request)
        self.video_sender = None
        self._encode_in_worker = False
        #: Input, speech queue, animator and emotion: the in-process API (engines.avatar);
        #: built by prepare().
        self.stream: AvatarStream | None = None
        self.ingest = config.make_ingest()
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
        self.tts_executor = tts_executor or executor  # text to speech for say()
        self._speech_generation = 0  # bumped by interrupt(): says in flight are dropped
        self._say_lock = asyncio.Lock()
        self._below_since: float | None = None  # when the sent rate fell under BELOW_RATE
        self._below_reported = False  # ... and stayed there BELOW_RATE_AFTER_S
        self._below_total_s = 0.0  # seconds of finished below-rate episodes

    # ----- lifecycle -------------------------------------------------------------------

    async def prepare(self) -> None:
        """Build the per-session engines off the event loop."""
        loop = asyncio.get_running_loop()
        if self.neural is not None:
            self.neural.worker.open(self.id)  # CapacityError when the device is full
            self.on_close.append(lambda s: s.neural.worker.close(s.id))

        if self.neural is None and self.pool is not None:
            from server.render_worker import WorkerError

            worker = None
            try:
                worker = await self.pool.acquire()
                await loop.run_in_executor(self.executor, worker.open, self.config, self.seed)
            except WorkerError as e:
                log.warning("session %s renders on a thread: %s", self.label, e)
                if worker is not None:
                    self.pool.release_later(worker)
            except BaseException:  # the offer failed or was cancelled meanwhile
                if worker is not None:
                    self.pool.release_later(worker)
                raise
            else:
                self.on_close.append(lambda s: s.pool.release_later(worker))
                self.worker = worker

        def build() -> AvatarStream:
            if self.neural is not None:
                animator = self.neural.stream(self.config.fps, self.emotion, self.seed)
            elif self.worker is not None:
                animator = self.worker  # frames come from the render process (_compute_remote)
            else:
                animator = self.avatar.animator(self.config, self.emotion, self.seed)
            return AvatarStream(self.avatar, self.config, animator=animator, clock=self.now,
                                latency=self.latency, emotion=self.emotion,
                                ingest=self.ingest)

        self.stream = await loop.run_in_executor(self.executor, build)

    @property
    def animator(self):
        return self.stream.animator if self.stream is not None else None

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

    def push_audio(self, pcm48: np.ndarray, media_end_s: float | None = None) -> None:
        """Mono 48 kHz float32 samples from the peer (event loop); ``media_end_s``: their
        end on the peer's media clock (RTP timestamps), which the jitter buffer's
        adaptive target measures lateness against."""
        t = time.perf_counter()
        self.ingest.push(pcm48, media_end_s)
        self.latency["ingest"].add(time.perf_counter() - t)

    # Speech queued ahead of time (an agent's audio, ``say``): engines.avatar's queue.

    def begin_speech(self, rate: int, channels: int, encoding: str, emotion: str | None,
                     intensity: float | None, transition_s: float) -> int:
        """Open an utterance whose PCM chunks follow (``feed_speech``); ValueError if the
        format is not one we take."""
        self.counters["utterances"] += 1
        return self.stream.begin_speech(rate, channels, encoding, emotion, intensity,
                                        transition_s)

    def feed_speech(self, data: bytes) -> float:
        """PCM for the open utterance; seconds queued. ValueError / QueueFull."""
        return self.stream.feed_speech(data)

    def end_speech(self) -> float:
        self.stream.end_speech()
        return self.stream.queued_s

    def interrupt(self) -> float:
        """Barge-in: drop queued speech and any ``say`` still being synthesised."""
        self._speech_generation += 1
        self.counters["interrupts"] += 1
        return self.stream.interrupt()

    async def say(self, text: str, voice: str | None, emotion: str | None,
                  intensity: float | None, transition_s: float) -> tuple[int | None, float]:
        """Synthesise ``text`` sentence by sentence (on the TTS thread) and queue each as
        soon as it is made, so speech starts after the first sentence; (the first
        utterance's id, seconds in all), or (None, 0) when an ``interrupt`` came first.
        Says of one session are spoken in the order they came. TTSError when it cannot be
        said."""
        from engines.audio import tts

        loop = asyncio.get_running_loop()
        async with self._say_lock:
            generation = self._speech_generation
            first, seconds = None, 0.0
            for i, part in enumerate(tts.sentences(text)):
                pcm, rate = await loop.run_in_executor(self.tts_executor, tts.synthesize,
                                                       part, voice)
                if generation != self._speech_generation or self.closed:
                    return None, 0.0
                uid = self.stream.begin_speech(rate, 1, "f32le", emotion if i == 0 else None,
                                               intensity if i == 0 else None, transition_s)
                self.stream.feed_speech(pcm)
                self.stream.end_speech()
                first = uid if first is None else first
                seconds += pcm.size / rate
            self.counters["utterances"] += 1
            return first, seconds

    def set_emotion(self, emotion: str | None, intensity: float | None,
                    transition_s: float, mix: dict[str, float] | None = None) -> None:
        """Aim at a new emotion (or mix) and/or intensity now, blended over
        ``transition_s``."""
        self.emotion.set(emotion, intensity, at=self.now(), transition_s=transition_s, mix=mix)
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
        self.latency["late"].add(max(0.0, -wait))
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
        release = self._release_at(m * AUDIO_FRAME / NET_RATE)
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
                    chunk48, chunk16 = self.stream.take_audio()
                    self._queue_output_audio(chunk48)
                    speech.append(chunk16)
                frames = await self._frames(speech)
                n += due
                for frame in frames:
                    self._publish(frame)
                if n % RATE_CHECK_TICKS < due:
                    self.check_rate()
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
        if self.worker is not None:
            return await loop.run_in_executor(self.executor, self._compute_remote, speech,
                                              self.now(), self._video_request())
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
            out.append(VideoOut(index, yuv, self._release_at(index * self.period),
                                skipped=skipped))
        if out:
            self.latency["tick"].add(time.perf_counter() - t_start)
        return out

    def _compute_inputs(self, speech: list[np.ndarray], emotion_at: float) -> list[tuple]:
        """Worker thread (neural): [(frame index, FrameInputs, skipped before it)]."""
        n, skipped = self.stream.feed(speech)
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
        out = []
        for frame, skipped in self.stream.render(speech, emotion_at):
            t1 = time.perf_counter()
            yuv = cv2.cvtColor(frame.image, cv2.COLOR_RGB2YUV_I420)
            self.latency["yuv"].add(time.perf_counter() - t1)
            release = self._release_at(frame.index * self.period)
            out.append(VideoOut(frame.index, yuv, release, skipped=skipped))
        if out:
            self.latency["tick"].add(time.perf_counter() - t_start)
        return out

    def _video_request(self) -> tuple[int, bool] | None:
        """Event loop: (bitrate, key frame) for the render process to encode this tick's
        frames in VP8 itself, or None to send I420 for aiortc to encode.

        It takes over once aiortc's sender has made its encoder for the negotiated codec and
        that is VP8 (the first frames go as I420; the worker's first frame is a key frame),
        and then for good (aiortc's encoder, left behind, must not get frames again). The
        bitrate is the one the sender's congestion control set on its encoder; a viewer's
        key-frame request (the sender's flag, set on PLI/FIR) is taken and passed on. Both
        are aiortc internals: without them aiortc keeps encoding, as before."""
        sender = self.video_sender
        encoder = getattr(sender, "_RTCRtpSender__encoder", None)
        if not self._encode_in_worker:
            try:
                from aiortc.codecs.vpx import Vp8Encoder
            except ImportError:
                return None
            if not (isinstance(encoder, Vp8Encoder)
                    and hasattr(sender, "_RTCRtpSender__force_keyframe")):
                return None
            self._encode_in_worker = True
        key = bool(getattr(sender, "_RTCRtpSender__force_keyframe", False))
        if key:
            sender._RTCRtpSender__force_keyframe = False
            self.counters["key_frames_asked"] += 1
        return int(getattr(encoder, "target_bitrate", 500_000)), key

    def _compute_remote(self, speech: list[np.ndarray], emotion_at: float,
                        video: tuple[int, bool] | None) -> list[VideoOut]:
        """Pool thread: what ``_compute`` does, in this session's render process (it waits
        there without the GIL), encoding VP8 there too when ``video`` asks."""
        t_start = time.perf_counter()
        h, w = self.identity.photo.shape[:2]
        frames, speech_s, cpu_s = self.worker.render(speech, self.emotion.vector_at(emotion_at),
                                                     h, w, video)
        self.latency["speech"].add(speech_s)
        self.counters["engine_cpu_us"] += int(cpu_s * 1e6)
        out = []
        for f in frames:
            self.latency["frame"].add(f.frame_s)
            self.latency["yuv"].add(f.yuv_s)
            if f.packet is not None:
                self.latency["encode"].add(f.encode_s)
            release = self._release_at(f.index * self.period)
            out.append(VideoOut(f.index, f.yuv, release, skipped=f.skipped, packet=f.packet))
        if out:
            self.latency["tick"].add(time.perf_counter() - t_start)
        return out

    def _release_at(self, content_s: float) -> float:
        """When what holds content time ``content_s`` leaves (session clock): the pipeline
        delay after it, the same for frames and audio, so they leave aligned."""
        return self.t0 + self.delay_s + content_s

    def _publish(self, out: VideoOut) -> None:
        self.counters["frames_rendered"] += 1
        self.counters["frames_dropped"] += out.skipped
        if self.video_queue.full():  # nobody is pulling video fast enough: newest wins
            self.video_queue.get_nowait()
            self.counters["frames_dropped"] += 1
        self.video_queue.put_nowait(out)

    # ----- reporting -------------------------------------------------------------------

    def sent_fps(self, now: float | None = None) -> float:
        """Frames per second sent over the last 2 s (0 until there are a few)."""
        now = self.clock() if now is None else now
        recent = [t for t in self._sent_times if now - t <= 2.0]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0

    def check_rate(self) -> None:
        """Follow whether the session sends below ``BELOW_RATE`` of its frame rate: an
        episode starts (logged, counted) once it has lasted ``BELOW_RATE_AFTER_S``; the
        first 3 s of media (start-up) do not count."""
        now = self.clock()
        below = self.now() > 3.0 and self.sent_fps(now) < BELOW_RATE * self.config.fps
        if below:
            if self._below_since is None:
                self._below_since = now
            elif not self._below_reported and now - self._below_since >= BELOW_RATE_AFTER_S:
                self._below_reported = True
                self.counters["below_rate_episodes"] += 1
                log.warning("session %s is below its frame rate: %.1f of %g fps for %.1f s",
                            self.label, self.sent_fps(now), self.config.fps,
                            now - self._below_since)
            return
        if self._below_reported:
            self._below_total_s += now - self._below_since
        self._below_since, self._below_reported = None, False

    def below_rate(self) -> dict:
        """Whether the session is below its rate now, since when, and in all."""
        now = self.clock()
        current = now - self._below_since if self._below_reported else 0.0
        return {"now": self._below_reported, "for_s": round(current, 2),
                "episodes": self.counters["below_rate_episodes"],
                "seconds_total": round(self._below_total_s + current, 2)}

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
            "pipeline_delay_ms": round(self.delay_s * 1e3, 1),
        }

    def stats(self, public: bool = False) -> dict:
        """Live statistics (JSON-ready); ``public`` names the session by label, not id."""
        now = self.clock()
        fps = self.sent_fps(now)
        ing = self.ingest.stats
        queue = self.ingest.queue
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
            "below_rate": self.below_rate(),
            "emotion": self.emotion.emotion,
            "intensity": self.emotion.intensity,
            "speech": ing.speech,
            "lookahead_ms": self.lookahead_ms,
            "pipeline_delay_ms": round(self.delay_s * 1e3, 1),
            "render_process": self.worker.pid if self.worker is not None else None,
            "video_encoder": "render process" if self._encode_in_worker else "aiortc",
            "key_frames_asked": self.counters["key_frames_asked"],
            "render_cpu_s": round(self.counters["engine_cpu_us"] / 1e6, 3),
            "latency_ms": {s: r.quantiles_ms() for s, r in self.latency.items()},
            "queues": {
                "audio_ms": round(self.ingest.buffered_ms, 1),
                "audio_mean_ms": round(ing.mean_depth_ms, 1),
                "audio_target_ms": round(self.ingest.target_ms, 1),
                "audio_lateness_ms": (None if (late := self.ingest.lateness_ms) is None
                                      else round(late, 1)),
                "video_frames": self.video_queue.qsize(),
                "audio_out_ms": round(len(self._audio_out) * 1000.0 / NET_RATE, 1),
            },
            "speech_queue": {
                "queued_ms": round(queue.queued_s * 1e3, 1),
                "played_s": round(queue.played_s, 3),
                "dropped_s": round(queue.dropped_s, 3),
                "underflows": queue.underflows,
                "utterances": self.counters["utterances"],
                "interrupts": self.counters["interrupts"],
            },
            "audio": {
                "received_s": round(ing.received_s, 3),
                "underflows": ing.underflows,
                "silence_padded_s": round(ing.silence_padded_s, 3),
                "dropped_s": round(ing.dropped_s, 3),
                "trims": ing.trims,
                "grows": ing.grows,
                "out_underruns": self.counters["audio_out_underruns"],
            },
        }


class SessionRegistry:
    """All live sessions of one server; they share only the identity and its warp state."""

    def __init__(self, identity: Identity, config: SessionConfig, executor: Executor,
                 max_sessions: int, warp: texture_warp.WarpState | None = None,
                 neural=None, admit_headroom: float = 0.0, render_processes: bool = False,
                 ) -> None:
        self.identity = identity
        self.config = config
        self.executor = executor
        self.max_sessions = max_sessions
        self.admit_headroom = admit_headroom
        self.neural = neural
        if neural is not None:
            self.avatar = None
            self.ready_lag = measure_ready_lag(neural.stream(config.fps, EmotionState(), 0),
                                               config)
        else:
            self.avatar = Avatar(identity, warp)
            self.ready_lag = self.avatar.ready_lag(config)
        #: The default engine's render processes (one per session), or None: threads.
        self.pool = self.cpu = None
        if render_processes and neural is None:
            from server.cpu_meter import CpuMeter
            from server.render_worker import RenderPool

            # one more than the sessions: a worker still being handed back (its session
            # just closed) does not send the next session to a thread
            self.pool = RenderPool(self.avatar.identity, max_sessions + 1)
            self.cpu = CpuMeter(self.pool.pids)
        self.sessions: dict[str, Session] = {}
        #: One thread speaks every session's ``say`` (in order; off the render pool).
        self.tts_executor = ThreadPoolExecutor(1, thread_name_prefix="etf-tts")
        from engines.audio import tts

        self.tts_executor.submit(tts.warm)
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
        session = Session(self.identity, self.avatar, self.config, self.executor, self.ready_lag,
                          session_id=session_id, neural=self.neural,
                          tts_executor=self.tts_executor, pool=self.pool)
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
        slow everyone down. With ``admit_headroom`` (0 = off) the server also refuses what
        it measures it could not serve:

        - render processes: when the CPU the machine has free is under the measured cost
          of one session (the server's CPU, render processes included, over its sessions)
          divided by ``admit_headroom``; one more would take the others' share
          (benchmarks/live_latency.py, 2-core machine with the peers on it: three sessions
          held 25 fps with 0.34 cores free, a fourth fell to 23.7-25);
        - render threads: when a running session's p99 compute per frame is over
          ``admit_headroom`` of the frame period: it still keeps its rate, but the
          sessions share one interpreter lock and one more would push it over (two
          sessions at p99 32-45 ms of 40 held 25 fps, three fell to ~17-20 fps).
        """
        if self.neural is not None:
            why = self.neural.worker.overloaded(1.0 / self.config.fps)
            if why:
                return why
        running = 0
        sessions = list(self.sessions.values())  # a copy: sessions end on the event loop
        for s in sessions:
            st = s.stats(public=True)
            if st["media_s"] <= 3.0:
                continue
            running += 1
            if st["fps"] < 0.9 * self.config.fps:
                return (f"the server is overloaded (session {st['session']} runs at "
                        f"{st['fps']:.1f} of {self.config.fps:g} fps); try again later")
            budget = self.admit_headroom * 1e3 / self.config.fps
            p99 = st.get("latency_ms", {}).get("tick", {}).get("p99", 0.0)
            if self.neural is None and self.pool is None and budget > 0 and p99 > budget:
                return (f"the server is full (session {st['session']} needs up to "
                        f"{p99:.0f} ms of its {1e3 / self.config.fps:.0f} ms per frame); "
                        "try again later")
        rates = self.cpu.rates() if self.cpu is not None else None
        if running and rates is not None and self.admit_headroom > 0:
            free, used = rates
            per_session = used / max(1, len(sessions))
            if free < per_session / self.admit_headroom:
                return (f"the server is full (a session here costs {per_session:.2f} CPU "
                        f"cores and {free:.2f} are free); try again in a few seconds")
        return None

    async def close_all(self, reason: str = "server shutting down") -> None:
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())))

    def shutdown(self) -> None:
        """Stop the render processes and the CPU meter (after ``close_all``)."""
        if self.pool is not None:
            self.pool.close()
            self.cpu.close()

    def server_stats(self) -> dict:
        return {
            "sessions": len(self.sessions),
            "max_sessions": self.max_sessions,
            "sessions_started": self.counters["started"],
            "refused": dict(self.refused) or {"capacity": 0},
            "uptime_s": time.monotonic() - self.started,
            **({"device_worker": self.neural.worker.stats()} if self.neural else {}),
            **({"render_processes": self.pool.stats()} if self.pool else {}),
        }

