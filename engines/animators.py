"""Offline rendering with any landmark engine and any texture engine, for ``etf render``.

``NeuralAnimator`` pairs either landmark engine (the default phone-driven one of
``engines/render``, or G_L on DeepSpeech windows from ``engines/neural``) with either
texture engine (the mesh warp, or G_T); eye blinks are added to the landmarks before the
texture, and the face is pasted back into the full photo. It sits above both runtimes,
which never import each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engines.audio.speech_frontend import DeepSpeechFrontend, audio_to_windows
from engines.face.identity import Identity
from engines.motion.face_motion import P, apply, build_fields
from engines.motion.idle import Blinker
from engines.neural.networks import (
    LANDMARKS_FILE,
    SPEECH_FILE,
    TEXTURE_FILE,
    FlowTextureEngine,
    GCNLandmarkEngine,
    weights_file,
)
from engines.render import texture_warp
from engines.render.compositor import paste_crop, paste_roi
from engines.render.expression_texture import ExpressionTexture
from engines.render.landmark_default import SpeechLandmarkEngine


class NeuralAnimator:
    """Offline rendering with the neural engines (see module docstring)."""

    def __init__(self, identity: Identity, fps: float, emotion, landmarks: str = "default",
                 texture: str = "warp", weights: str | os.PathLike | None = None,
                 seed: int = 0, adapt_iterations: int = 0,
                 adapted: str | os.PathLike | None = None) -> None:
        self.identity, self.fps, self.emotion = identity, fps, emotion
        self.gcn = self.speech = None
        if landmarks == "gcn":
            self.gcn = GCNLandmarkEngine(weights_file(weights, LANDMARKS_FILE,
                                                      "--landmarks gcn",
                                                      "etf train landmarks"))
            speech = Path(weights) / SPEECH_FILE
            self.speech = (DeepSpeechFrontend.from_checkpoint(speech) if speech.is_file()
                           else DeepSpeechFrontend.default())
        elif landmarks != "default":
            raise ValueError(f"unknown landmark engine {landmarks!r}: default or gcn")
        self.flow = self.flow_state = self.warp = self.texture = None
        if texture == "flow":
            self.flow = FlowTextureEngine(weights_file(weights, TEXTURE_FILE, "--texture flow",
                                                       "etf train texture"))
            self.flow_state = self.flow.prepare(identity, adapt_iterations, adapted)
        elif texture == "warp":
            self.warp = texture_warp.prepare(identity)
            self.texture = ExpressionTexture(self.warp.expression)
        else:
            raise ValueError(f"unknown texture engine {texture!r}: warp or flow")
        self.blinker = Blinker(np.random.default_rng(seed))
        self.fields = build_fields(identity.neutral)
        self.seed = seed

    @property
    def adaptation(self) -> dict:
        return self.flow_state.adaptation if self.flow_state else {}

    def _landmarks(self, audio: np.ndarray) -> Iterator[np.ndarray]:
        if self.gcn is None:  # the default engine: emotion, blinks and idle motion included
            engine = SpeechLandmarkEngine(self.identity.neutral, fps=self.fps, seed=self.seed,
                                          depth=self.identity.canonical_depth())

            def ready() -> Iterator[np.ndarray]:
                while engine.frames_ready() > 0:
                    t = engine.frame_index / self.fps
                    yield engine.next_frame(self.emotion.vector_at(t))[0]

            for i in range(0, len(audio), 320):
                engine.push_audio(audio[i : i + 320])
                yield from ready()
            engine.flush()
            yield from ready()
            return
        windows = audio_to_windows(self.speech, audio, self.fps)
        neutral = self.identity.neutral.astype(np.float32)[None]
        blink = np.zeros(len(P), np.float32)
        for k, win in enumerate(windows):
            t = k / self.fps
            vec = self.emotion.vector_at(t)[None]
            lm = self.gcn(win[None], vec, np.ones(1, np.float32), neutral)[0]
            blink[P["blink"]] = self.blinker.at(t)
            # eye blinks are added to the landmarks before the texture (as in the paper)
            yield apply(lm, self.fields, blink)

    def render_all(self, audio: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(full photo frame [H,W,3] uint8, landmarks [68,2]) per video frame."""
        for k, lm in enumerate(self._landmarks(audio)):
            if self.flow is not None:
                vec = self.emotion.vector_at(k / self.fps)[None]
                crop = self.flow.render(self.flow_state, lm[None], vec)[0]
                yield paste_crop(self.identity, crop), lm
            else:
                src = self.texture.source(self.emotion.vector_at(k / self.fps))
                roi = texture_warp.render_roi(self.warp, lm, src)
                yield paste_roi(self.identity.photo, roi, self.warp.roi, self.warp.feather,
                                solid=self.warp.solid), lm
