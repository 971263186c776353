"""A pipecat ``FrameProcessor`` that gives a voice agent this avatar's face.

Put it right after the TTS service of a pipecat pipeline (``pip install -e '.[pipecat]'``)::

    from server.pipecat_avatar import AvatarEmotionFrame, AvatarProcessor

    avatar = AvatarProcessor()                 # the built-in face; or image= / identity=
    pipeline = Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])
    ...
    await task.queue_frame(AvatarEmotionFrame("happy", 0.7))

It takes the TTS's audio frames (``TTSAudioRawFrame``, any rate) into an
:class:`engines.avatar.AvatarStream` and, on its own clock at ``fps``, pushes downstream one
``OutputImageRawFrame`` (RGB, the face's size) per period and, while speech plays, the same
speech as ``TTSAudioRawFrame`` at 48 kHz, in sync with the frames (the output transport
resamples it). With nothing to say the face idles and blinks. The stream time of each image
is in ``frame.metadata["avatar_pts"]`` (seconds; ``avatar_index`` is its number); ``pts`` is
left unset so the transport plays frames as they come.

Control: ``AvatarEmotionFrame`` sets the emotion, from the next utterance on if speech is
queued, else at once; ``InterruptionFrame`` (barge-in) drops the queued speech; ``EndFrame``
lets queued speech finish before it passes. Rendering runs on a worker thread, so the
pipeline's event loop stays free.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    ControlFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from engines.audio.audio_ingest import NET_RATE
from engines.avatar import Avatar, AvatarStream
from etf_models.emotions import EMOTIONS


@dataclass
class AvatarEmotionFrame(ControlFrame):
    """Show ``emotion`` at ``intensity`` (0..1), blended over ``transition_ms``."""

    emotion: str = "neutral"
    intensity: float = 1.0
    transition_ms: float = 250.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.emotion not in EMOTIONS:
            raise ValueError(f"emotion {self.emotion!r} is not one of {', '.join(EMOTIONS)}")
        if not 0.0 <= self.intensity <= 1.0:
            raise ValueError(f"intensity {self.intensity} is outside 0..1")


class AvatarProcessor(FrameProcessor):
    """TTS audio in; avatar video frames and the same audio, in sync, out."""

    def __init__(self, avatar: Avatar | None = None, fps: float = 25.0,
                 emotion: str = "neutral", intensity: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.avatar = avatar or Avatar.load()
        self.stream: AvatarStream = self.avatar.stream(fps=fps, emotion=emotion,
                                                       intensity=intensity, use_vad=False)
        self.fps = fps
        self.size = self.avatar.size
        self._lag = self.avatar.ready_lag(self.stream.config)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="etf-avatar")
        self._clock_task: asyncio.Task | None = None
        self._rate: int | None = None  # the open utterance's sample rate
        self._pending_emotion: AvatarEmotionFrame | None = None
        self.frames_out = 0

    # ----- frames in -------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._clock_task is None:
                self._clock_task = self.create_task(self._clock(), name="avatar-clock")
            return
        if isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._speech(frame)
            return
        if isinstance(frame, TTSStartedFrame):
            self._end_utterance()
        elif isinstance(frame, TTSStoppedFrame):
            self._end_utterance()
        elif isinstance(frame, AvatarEmotionFrame):
            self._emotion(frame)
            return
        elif isinstance(frame, InterruptionFrame):
            self.stream.interrupt()
            self._rate = None
            self._pending_emotion = None
        elif isinstance(frame, EndFrame):
            self._end_utterance()
            await self._drain()
            await self._stop_clock()
        elif isinstance(frame, CancelFrame):
            await self._stop_clock()
        await self.push_frame(frame, direction)

    def _speech(self, frame: TTSAudioRawFrame) -> None:
        if self._rate != frame.sample_rate or not self.stream.ingest.queue.open:
            self._end_utterance()
            tag = self._pending_emotion
            self._pending_emotion = None
            self.stream.begin_speech(
                frame.sample_rate, frame.num_channels, "s16le",
                tag.emotion if tag else None, tag.intensity if tag else None,
                (tag.transition_ms if tag else 250.0) / 1000.0)
            self._rate = frame.sample_rate
        self.stream.feed_speech(frame.audio)

    def _end_utterance(self) -> None:
        if self._rate is not None:
            self.stream.end_speech()
            self._rate = None

    def _emotion(self, frame: AvatarEmotionFrame) -> None:
        if self.stream.ingest.queue.active or self._rate is not None:
            self._pending_emotion = frame  # shown with the next utterance
            self._end_utterance()
        else:
            self.stream.set_emotion(frame.emotion, frame.intensity, frame.transition_ms / 1e3)

    # ----- frames out ------------------------------------------------------------------

    async def _clock(self) -> None:
        """One tick per period on the loop's clock; late ticks catch up (at most 3)."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        t0 = loop.time()
        n = 0
        while True:
            n += 1
            wait = t0 + n * period - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            due = min(3, max(1, int((loop.time() - t0) / period) - n + 1))
            n += due - 1
            frames = await loop.run_in_executor(self._executor, self.stream.advance, due)
            for f in frames:
                await self._emit(f)

    async def _emit(self, f) -> None:
        w, h = self.size
        image = OutputImageRawFrame(image=f.image.tobytes(), size=(w, h), format="RGB")
        image.metadata["avatar_pts"] = f.pts
        image.metadata["avatar_index"] = f.index
        await self.push_frame(image)
        self.frames_out += 1
        if np.any(f.audio):
            pcm = (np.clip(f.audio, -1.0, 1.0) * 32767.0).astype("<i2")
            audio = TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=NET_RATE, num_channels=1)
            audio.metadata["avatar_pts"] = f.pts
            await self.push_frame(audio)

    async def _drain(self, timeout_s: float = 120.0) -> None:
        """Wait until queued speech has been spoken and its frames pushed."""
        if self._clock_task is None:
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.stream.ingest.queue.active and loop.time() < end:
            await asyncio.sleep(0.05)
        await asyncio.sleep((self._lag + 2) / self.fps)

    async def _stop_clock(self) -> None:
        if self._clock_task is not None:
            await self.cancel_task(self._clock_task)
            self._clock_task = None

    async def cleanup(self) -> None:
        await self._stop_clock()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await super().cleanup()
