"""The default animation pipeline: audio -> landmarks -> warped face -> full photo frames.

``FaceAnimator`` owns one identity's prepared state and one session's streaming landmark
engine. Offline rendering pushes the whole file and flushes; the live server pushes chunks
and pulls frames as they become ready. The per-frame work is ``step()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engines.face.identity import Identity
from engines.motion.emotion_model import EmotionModel
from engines.motion.emotion_state import EmotionState
from engines.render import texture_warp
from engines.render.compositor import paste_roi
from engines.render.expression_texture import ExpressionTexture
from engines.render.landmark_default import SpeechLandmarkEngine


@dataclass
class Frame:
    """One output frame with its index, time and the motion that made it."""

    index: int
    time_s: float
    image: np.ndarray  # [H,W,3] uint8, the full photo size
    landmarks: np.ndarray  # [68,2] canonical
    params: np.ndarray  # [N_PARAMS]


class FaceAnimator:
    """Animate one identity (prepared once) for one stream of audio."""

    def __init__(
        self,
        identity: Identity,
        fps: float = 25.0,
        emotion: EmotionState | None = None,
        seed: int = 0,
        warp: texture_warp.WarpState | None = None,
        phone_lookahead_ms: float | None = None,
        coart_future_ms: float | None = None,
        emotion_model: EmotionModel | None = None,
        anticipation_ms: float | None = None,
    ) -> None:
        self.identity = identity
        self.fps = fps
        self.emotion = emotion or EmotionState()
        self.warp = warp or texture_warp.prepare(identity)
        self.engine = SpeechLandmarkEngine(
            identity.neutral, fps=fps, seed=seed, phone_lookahead_ms=phone_lookahead_ms,
            coart_future_ms=coart_future_ms, emotion_model=emotion_model,
            depth=identity.canonical_depth(), anticipation_ms=anticipation_ms,
        )
        self._out = np.empty_like(identity.photo)
        self.texture = ExpressionTexture(self.warp.expression)

    @property
    def lookahead_ms(self) -> float:
        return self.engine.lookahead_ms

    def push_audio(self, pcm: np.ndarray) -> None:
        self.engine.push_audio(pcm)

    def flush(self) -> None:
        self.engine.flush()

    def frames_ready(self) -> int:
        return self.engine.frames_ready()

    def step(self, copy: bool = True, emotion_at: float | None = None,
             emotion: np.ndarray | None = None) -> Frame:
        """Produce the next frame (requires ``frames_ready() > 0``).

        With ``copy=False`` the image is a buffer reused by the next call (no allocation).
        The emotion is sampled at the frame's own time, or at ``emotion_at`` on the
        emotion state's clock (the live server uses wall time, so a switch shows in the
        next frame computed rather than a lookahead later), or given as the vector
        ``emotion`` (a render process, whose emotion state lives in the server).
        """
        index = self.engine.frame_index
        t = index / self.fps
        if emotion is None:
            emotion = self.emotion.vector_at(t if emotion_at is None else emotion_at)
        lm, params = self.engine.next_frame(emotion)
        roi = texture_warp.render_roi(self.warp, lm, self.texture.source(emotion))
        img = paste_roi(self.identity.photo, roi, self.warp.roi, self.warp.feather, out=self._out,
                        solid=self.warp.solid)
        return Frame(index, t, img.copy() if copy else img, lm, params)

    def skip(self) -> None:
        """Advance one frame without rendering it (a live session catching up)."""
        self.engine.next_frame(None)

    def render_all(self, audio: np.ndarray, chunk: int = 320) -> Iterator[Frame]:
        """All frames for a whole audio array, fed in live-sized chunks."""
        for i in range(0, len(audio), chunk):
            self.push_audio(audio[i : i + chunk])
            while self.frames_ready() > 0:
                yield self.step()
        self.flush()
        while self.frames_ready() > 0:
            yield self.step()
