"""The paper's networks as engines: G_L (LandmarkEngine) and G_T (TextureEngine).

- ``GCNLandmarkEngine``: windows [B,6,29], emotion [B,7], intensity [B], neutral landmarks
  [B,68,2] -> landmarks [B,68,2] (canonical). The identity-only part (the graph encoder of
  the neutral landmarks) runs once per identity and is cached.
- ``FlowTextureEngine``: ``prepare(identity, adapt_iterations)`` encodes the identity's
  canonical crop once (optionally after one-shot adaptation, up to 5 iterations, on a copy
  of the network); ``render(state, landmarks [B,68,2], emotion [B,7])`` -> frames
  [B,256,256,3] uint8.

Weights live in one folder: ``landmarks.pt`` (``etf train landmarks``), ``texture.pt``
(``etf train texture``) and optionally ``speech.pt`` (else the shipped speech model).
PyTorch is imported here, never by the default engines. Offline rendering that pairs these
with the default engines is ``engines/animators.py``; live serving is ``live.py``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engines.face.identity import Identity

LANDMARKS_FILE = "landmarks.pt"
TEXTURE_FILE = "texture.pt"
SPEECH_FILE = "speech.pt"


class NeuralWeightsError(ValueError):
    """Neural engines asked for without usable trained weights."""


def weights_file(folder: str | os.PathLike | None, name: str, what: str, how: str) -> Path:
    if folder is None:
        raise NeuralWeightsError(f"{what} needs trained weights: pass --weights DIR holding "
                                 f"{name} (train it with '{how}')")
    path = Path(folder) / name
    if not path.is_file():
        raise NeuralWeightsError(f"{what}: {path} does not exist (train it with '{how}')")
    return path


def _torch():
    try:
        import torch
    except ImportError:
        raise NeuralWeightsError("the neural engines need PyTorch: pip install "
                                 "'etf-avatar[train]' (CPU: torch==2.13.0)") from None
    return torch


def gl_identity_inputs(gl, identity: Identity) -> dict:
    """G_L's identity inputs for its per-frame graph (batch 1, computed once): the neutral
    landmarks and their graph encoding."""
    t = _torch()
    neutral = t.from_numpy(identity.neutral.astype(np.float32))[None]
    with t.no_grad():
        code, vert, reg = gl.encode_identity(neutral)
    return {"neutral": neutral, "code": code, "vert": vert, "reg": reg}


def gt_identity_inputs(gt, identity: Identity) -> dict:
    """G_T's identity inputs for its per-frame graph (batch 1, computed once): the image
    encoder's features of the canonical crop, its landmark heatmaps and AdaIN parameters."""
    t = _torch()
    src = t.from_numpy(identity.crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    with t.no_grad():
        s1, s2, s3, heat, style = gt.prepare(
            src, t.from_numpy(identity.neutral.astype(np.float32))[None])
    return {"s1": s1, "s2": s2, "s3": s3, "source_heat": heat, "style": style}


def _load(loader, path: str | os.PathLike, what: str):
    """A trained network, or NeuralWeightsError naming the file and the reason."""
    from etf_models.checkpoint import CheckpointError

    try:
        return loader(path)
    except (CheckpointError, TypeError, RuntimeError, KeyError) as e:
        raise NeuralWeightsError(f"cannot use {what} model {path}: {e}") from None


class GCNLandmarkEngine:
    """The LandmarkEngine contract over a trained G_L."""

    def __init__(self, path: str | os.PathLike) -> None:
        from etf_models.landmark_train import load_landmark_model

        self.torch = _torch()
        self.model = _load(load_landmark_model, path, "landmark")
        self._key: bytes | None = None
        self._codes = None

    def __call__(self, windows: np.ndarray, emotion: np.ndarray, intensity: np.ndarray,
                 neutral: np.ndarray) -> np.ndarray:
        t = self.torch
        neutral = np.asarray(neutral, np.float32)
        with t.inference_mode():
            key = neutral.tobytes()
            if key != self._key:  # a new identity (or batch of them): encode once
                self._codes = self.model.encode_identity(t.from_numpy(neutral))
                self._key = key
            out = self.model.step(t.from_numpy(np.asarray(windows, np.float32)),
                                  t.from_numpy(np.asarray(emotion, np.float32)),
                                  t.from_numpy(np.asarray(intensity, np.float32)),
                                  t.from_numpy(neutral), *self._codes)
        return out.numpy()


@dataclass
class FlowState:
    model: object  # the (possibly adapted) TextureFlow
    tensors: tuple
    adaptation: dict = field(default_factory=dict)


def adapted_path(identity_file: str | os.PathLike) -> Path:
    """Where the one-shot adaptation of an identity file is stored: next to it."""
    p = Path(identity_file)
    return p.with_name(p.stem + ".texture.pt")


class FlowTextureEngine:
    """The TextureEngine contract over a trained G_T."""

    def __init__(self, path: str | os.PathLike) -> None:
        from etf_models.checkpoint import sha256_of
        from etf_models.texture_train import load_texture_model

        self.torch = _torch()
        self.model = _load(load_texture_model, path, "texture")
        self.sha256 = sha256_of(path)

    def adapt(self, identity: Identity, iterations: int = 5):
        """(adapted copy of G_T, report): one-shot adaptation to this identity."""
        from etf_models.texture_train import adapt

        model = copy.deepcopy(self.model)  # adaptation is per identity
        return model, adapt(model, identity.crop, identity.neutral, iterations)

    def save_adapted(self, model, report: dict, identity: Identity, path: str | os.PathLike
                     ) -> str:
        """Store the adapted encoder and decoder (the only weights adaptation changes)."""
        from etf_models.checkpoint import save_checkpoint

        state = {k: v for k, v in model.state_dict().items()
                 if k.startswith(("encoder.", "decoder."))}
        return save_checkpoint(path, "texture_flow_adapted", model.config.to_dict(), state,
                               {"base_sha256": self.sha256, "identity": identity.source,
                                **report})

    def load_adapted(self, path: str | os.PathLike):
        """G_T with the adapted weights from ``save_adapted`` (for this base model only)."""
        from etf_models.checkpoint import load_checkpoint

        blob = load_checkpoint(path, model="texture_flow_adapted")
        if blob["meta"].get("base_sha256") != self.sha256:
            raise NeuralWeightsError(f"{path} adapts another texture model; run etf adapt "
                                     "again for this one")
        model = copy.deepcopy(self.model)
        model.load_state_dict({**model.state_dict(), **blob["state_dict"]})
        return model.eval(), dict(blob["meta"], loaded_from=str(path))

    def prepare(self, identity: Identity, adapt_iterations: int = 0,
                adapted: str | os.PathLike | None = None) -> FlowState:
        model, report = self.model, {}
        if adapted is not None:
            model, report = self.load_adapted(adapted)
        elif adapt_iterations:
            model, report = self.adapt(identity, adapt_iterations)
        return FlowState(model, tuple(gt_identity_inputs(model, identity).values()), report)

    def render(self, state: FlowState, landmarks: np.ndarray,
               emotion: np.ndarray | None = None) -> np.ndarray:
        t = self.torch
        lm = t.from_numpy(np.asarray(landmarks, np.float32).reshape(-1, 68, 2))
        b = lm.shape[0]
        emo = (t.eye(7)[[0] * b] if emotion is None else
               t.from_numpy(np.asarray(emotion, np.float32).reshape(b, 7)))
        tensors = tuple(x.expand(b, *x.shape[1:]) for x in state.tensors)
        with t.inference_mode():
            img, _, _ = state.model.render(lm, emo, t.ones(b), *tensors)
        return ((img.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
