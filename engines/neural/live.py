"""Live serving with the paper's networks: many sessions, one face, one device worker.

- :class:`NeuralStream` is one session's CPU side: the streaming speech front end, the
  per-frame DeepSpeech windows, the emotion state and eye blinks sampled per frame. It
  yields :class:`FrameInputs`, a few hundred bytes per frame.
- :class:`NeuralFrameStep` is the device side, run by the ``BatchWorker`` on a batch of
  frames from all sessions: G_L (one backend call) -> blinks added to the landmarks (as in
  the paper, before the texture) -> G_T (one backend call) -> paste-back into the photo ->
  RGB to I420, all on the backend's device; only the I420 bytes come back to the host.
- :class:`NeuralEngines` loads the weights once, prepares the identity once (G_L's graph
  code, G_T's encoder features, one-shot adaptation if stored) and owns the worker.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.face.identity import Identity
from engines.latency import LatencyRing
from engines.motion.emotion_state import EmotionState
from engines.neural.batching import BatchWorker

#: Per-frame stages of the device step, in order (timed per batch).
STEP_STAGES = ("upload", "landmarks", "texture", "paste", "yuv", "download")


@dataclass
class FrameInputs:
    """What one frame of one session needs from the device."""

    window: np.ndarray  # [6,29] DeepSpeech logits centred on the frame
    emotion: np.ndarray  # [7] blended emotion vector (intensity folded in)
    blink: float  # eyelid closure 0..1


class NeuralStream:
    """One session's streaming inputs to the neural engines (CPU; see module docstring)."""

    def __init__(self, speech_model, fps: float, emotion: EmotionState | None = None,
                 seed: int = 0) -> None:
        from engines.audio.speech_frontend import DeepSpeechFrontend, VideoWindows
        from engines.motion.idle import Blinker

        self.fps = fps
        self.emotion = emotion or EmotionState()
        self.frontend = DeepSpeechFrontend(speech_model)  # shared weights, own state
        self.windows = VideoWindows(fps, speech_model.config.n_output,
                                    self.frontend.row_centre_s)
        self.blinker = Blinker(np.random.default_rng(seed))
        self._pending: deque[np.ndarray] = deque()
        self.frame_index = 0

    @property
    def lookahead_ms(self) -> float:
        return self.frontend.lookahead_ms + self.windows.lookahead_ms

    def push_audio(self, pcm16k: np.ndarray) -> None:
        """16 kHz mono float32 audio, any chunk size."""
        self._pending.extend(self.windows.push(self.frontend.push(pcm16k)))

    def frames_ready(self) -> int:
        return len(self._pending)

    def skip(self) -> None:
        """Advance one frame without rendering it (a session catching up)."""
        self._pending.popleft()
        self.frame_index += 1

    def next_inputs(self, emotion_at: float | None = None) -> FrameInputs:
        """The next frame's inputs (requires ``frames_ready() > 0``); the emotion is
        sampled at ``emotion_at`` on the emotion state's clock, else at the frame's time."""
        t = self.frame_index / self.fps
        self.frame_index += 1
        vec = self.emotion.vector_at(t if emotion_at is None else emotion_at)
        return FrameInputs(self._pending.popleft(), vec.astype(np.float32),
                           self.blinker.at(t))


class NeuralFrameStep:
    """The device side of a batch (see module docstring): ``step(list[FrameInputs])`` ->
    list of I420 frames [H*3/2, W] uint8 (numpy, on the host)."""

    def __init__(self, gl_backend, gt_backend, identity: Identity) -> None:
        import torch

        from engines.motion.face_motion import P, build_fields
        from engines.neural.gpu_compositor import TorchPasteBack

        self.torch = torch
        self.gl, self.gt = gl_backend, gt_backend
        self.device = gt_backend.device
        self.paste = TorchPasteBack(identity, self.device)
        blink = build_fields(identity.neutral)[P["blink"]]  # [68,2] px per unit closure
        self.blink_field = torch.from_numpy(blink.astype(np.float32)).to(self.device)
        self.latency = {s: LatencyRing() for s in STEP_STAGES}
        self._cuda = self.device.type == "cuda"

    def _mark(self, stage: str, t0: float) -> float:
        if self._cuda:  # per-stage host timing needs the stream drained (benchmarks only)
            self.torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.latency[stage].add(t1 - t0)
        return t1

    def __call__(self, frames: list[FrameInputs], timed: bool = False) -> list[np.ndarray]:
        from engines.neural.gpu_compositor import rgb_to_i420

        torch = self.torch
        t = time.perf_counter()
        b = len(frames)
        windows = torch.from_numpy(np.stack([f.window for f in frames]))
        emotion = torch.from_numpy(np.stack([f.emotion for f in frames]))
        blink = torch.tensor([f.blink for f in frames], dtype=torch.float32)
        if self._cuda:
            windows, emotion, blink = (x.pin_memory().to(self.device, non_blocking=True)
                                       for x in (windows, emotion, blink))
        ones = torch.ones(b, device=self.device)
        t = self._mark("upload", t) if timed else t
        lm = self.gl.infer({"windows": windows, "emotion": emotion, "intensity": ones}
                           )["landmarks"].float()
        # Eye blinks are added to the landmarks before the texture (as in the paper).
        lm = lm + blink[:, None, None] * self.blink_field
        t = self._mark("landmarks", t) if timed else t
        crops = self.gt.infer({"landmarks": lm, "emotion": emotion, "intensity": ones}
                              )["image"]
        t = self._mark("texture", t) if timed else t
        full = self.paste(crops)
        t = self._mark("paste", t) if timed else t
        yuv = rgb_to_i420(full)
        t = self._mark("yuv", t) if timed else t
        host = yuv.cpu().numpy()  # the one device -> host copy of the frame
        if timed:
            self._mark("download", t)
        return list(host)


@dataclass(frozen=True)
class NeuralConfig:
    """The live neural engines (filled by ``etf serve``)."""

    weights: str
    backend: str = "torch"  # see engines/neural/backends.py
    max_batch: int = 16
    max_wait_ms: float = 4.0
    capacity: int = 16


class NeuralEngines:
    """Weights, identity preparation and the device worker, shared by all sessions."""

    def __init__(self, identity: Identity, config: NeuralConfig,
                 identity_file: str | os.PathLike | None = None) -> None:
        from engines.audio.speech_frontend import DeepSpeechFrontend, SpeechModelError
        from engines.neural.backends import gl_graph, gt_graph, make_backend
        from engines.neural.networks import (
            LANDMARKS_FILE,
            SPEECH_FILE,
            TEXTURE_FILE,
            FlowTextureEngine,
            GCNLandmarkEngine,
            adapted_path,
            gl_identity_inputs,
            weights_file,
        )

        self.identity, self.config = identity, config
        speech = Path(config.weights) / SPEECH_FILE
        frontend = (DeepSpeechFrontend.from_checkpoint(speech) if speech.is_file()
                    else DeepSpeechFrontend.default())
        if not frontend.streaming:
            raise SpeechModelError(
                f"{speech}: this speech model cannot stream (a bidirectional DeepSpeech 0.1.x "
                "model needs the whole utterance); live serving needs a streaming one such "
                "as the shipped default or an imported 0.9.x release. Offline rendering "
                "(etf render) can use it.")
        self.speech_model = frontend.model
        self.speech_lookahead_ms = frontend.lookahead_ms

        gl = GCNLandmarkEngine(weights_file(config.weights, LANDMARKS_FILE, "neural serving",
                                            "etf train landmarks")).model
        flow = FlowTextureEngine(weights_file(config.weights, TEXTURE_FILE, "neural serving",
                                              "etf train texture"))
        adapted = adapted_path(identity_file) if identity_file else None
        state = flow.prepare(identity, adapted=adapted if adapted and adapted.is_file()
                             else None)
        self.adaptation = state.adaptation
        self.gl = make_backend(gl_graph(gl), config.backend, max_batch=config.max_batch)
        self.gt = make_backend(gt_graph(state.model), config.backend,
                               max_batch=config.max_batch)
        gt_inputs = dict(zip(self.gt.graph.identity_inputs, state.tensors, strict=True))
        for backend, tensors in ((self.gl, gl_identity_inputs(gl, identity)),
                                 (self.gt, gt_inputs)):
            backend.activate()
            backend.bind(tensors)
        self.step = NeuralFrameStep(self.gl, self.gt, identity)
        self.worker = BatchWorker(self.step, config.max_batch, config.capacity,
                                  config.max_wait_ms / 1e3)

    def stream(self, fps: float, emotion: EmotionState, seed: int) -> NeuralStream:
        return NeuralStream(self.speech_model, fps, emotion, seed)

    def close(self) -> None:
        self.worker.stop()
        self.gl.deactivate()
        self.gt.deactivate()
