"""The avatar in a real pipecat pipeline, run locally: TTS audio frames in, image frames and
the same audio out at the frame rate, the mouth moving with the speech, emotion frames
changing the face, an interruption shutting the mouth."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import WorkerRunner  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from served import OPENED  # noqa: E402

from engines.avatar import Avatar  # noqa: E402
from engines.face.face_metrics import (  # noqa: E402
    best_lag_corr,
    brow_raise,
    face_box,
    frame_landmarks,
    mouth_opening,
)
from engines.media.audio_io import load_audio  # noqa: E402
from server.cli import builtin_sentence  # noqa: E402
from server.pipecat_avatar import AvatarEmotionFrame, AvatarProcessor  # noqa: E402

FPS = 25.0
RATE = 24000


class Collect(FrameProcessor):
    """The pipeline's end: keeps images and audio with their arrival times."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[float, OutputImageRawFrame]] = []
        self.audio: list[tuple[float, TTSAudioRawFrame]] = []

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.images.append((time.monotonic(), frame))
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)


def _tts_frames(pcm: np.ndarray, chunk_s: float = 0.2) -> list:
    i16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    step = int(RATE * chunk_s)
    return ([TTSStartedFrame()]
            + [TTSAudioRawFrame(i16[i:i + step].tobytes(), RATE, 1)
               for i in range(0, len(i16), step)]
            + [TTSStoppedFrame()])


def test_avatar_in_a_pipecat_pipeline(identity):
    sentence = load_audio(builtin_sentence(), RATE)
    dur = len(sentence) / RATE
    marks: dict[str, float] = {}

    async def scenario():
        proc = AvatarProcessor(Avatar(identity), fps=FPS)
        sink = Collect()
        task = PipelineWorker(Pipeline([proc, sink]), idle_timeout_secs=None)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)

        async def drive():
            await asyncio.sleep(1.0)
            marks["speech"] = time.monotonic()
            await task.queue_frames(_tts_frames(sentence))  # all at once, as TTS does
            await asyncio.sleep(dur + 1.0)
            marks["emotion"] = time.monotonic()
            await task.queue_frame(AvatarEmotionFrame("surprise", 1.0))
            await asyncio.sleep(1.5)
            marks["second"] = time.monotonic()
            await task.queue_frames(_tts_frames(np.concatenate([sentence] * 2)))
            await asyncio.sleep(2.0)
            marks["interrupt"] = time.monotonic()
            await task.queue_frame(InterruptionFrame())
            await asyncio.sleep(1.5)
            await task.queue_frame(EndFrame())

        await asyncio.gather(runner.run(), drive())
        return proc, sink

    proc, sink = asyncio.run(scenario())
    t_img = np.array([t for t, _ in sink.images])
    frames = [f for _, f in sink.images]
    w, h = proc.size
    assert all(f.size == (w, h) and f.format == "RGB" for f in frames)

    # At the rate, on a steady clock, with stream time in the metadata.
    span = t_img[-1] - t_img[0]
    assert abs(len(frames) / span - FPS) < 1.0, (len(frames), span)
    assert np.diff(t_img).max() < 0.3
    pts = np.array([f.metadata["avatar_pts"] for f in frames])
    assert np.allclose(np.diff(pts), 1 / FPS)

    images = [np.frombuffer(f.image, np.uint8).reshape(h, w, 3) for f in frames]
    lm = frame_landmarks(images, face_box(identity.landmarks_photo))
    mouth = mouth_opening(lm)

    # The same speech comes out, paired with the frames by pts; the mouth moves with it.
    audio_pts = {a.metadata["avatar_pts"]: a for _, a in sink.audio}
    rms = np.array([np.sqrt(np.mean((np.frombuffer(audio_pts[p].audio, "<i2") / 32768.0) ** 2))
                    if p in audio_pts else 0.0 for p in pts])
    first = (t_img > marks["speech"]) & (t_img < marks["emotion"])
    assert (rms[first] > 0.01).sum() / FPS > 0.6 * dur * 0.7, "the speech did not come out"
    r, lag = best_lag_corr(np.nan_to_num(mouth[first]), rms[first], max_lag=4)
    assert r > 0.4 and abs(lag) <= 2, (r, lag)
    speaking = first & (rms > 0.02)
    quiet_before = t_img < marks["speech"]
    assert np.nanmax(mouth[speaking]) > OPENED, np.round(mouth[speaking], 3)
    assert np.nanmax(mouth[quiet_before]) < 0.12

    # The emotion frame changes the face: brows up for surprise.
    brows = brow_raise(lm)
    before = np.nanmedian(brows[(t_img > marks["emotion"] - 0.8) & (t_img < marks["emotion"])])
    after = np.nanmedian(brows[(t_img > marks["emotion"] + 0.6) & (t_img < marks["second"])])
    assert after > before + 0.02, (before, after)

    # The interruption drops the rest of the queued speech: silence follows, and the mouth
    # goes back to its rest (surprise holds the jaw a little open) as before the speech.
    rest = np.nanmax(mouth[(t_img > marks["emotion"] + 0.6) & (t_img < marks["second"])])
    assert np.nanmax(mouth[(t_img > marks["second"]) & (t_img < marks["interrupt"])]) > rest + 0.1
    late = t_img > marks["interrupt"] + 0.6
    assert late.sum() > 10
    assert rms[late].max() == 0.0
    assert np.nanmax(mouth[late]) < rest + 0.03, (np.nanmax(mouth[late]), rest)
