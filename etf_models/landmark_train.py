"""Training G_L: L_ver (1) + LSGAN with the graph discriminator (0.5), Adam 2e-4.

``LandmarkFrames`` holds training frames as arrays (what ``etf preprocess`` shards and the
devset benchmark produce): speech windows ``[N,6,29]``, emotion ``[N,7]``, intensity
``[N]``, the speaker's neutral landmarks ``[N,68,2]`` and the true landmarks ``[N,68,2]``,
all canonical. ``LandmarkTrainer`` runs the paper's alternating generator/discriminator
steps on random minibatches (checkpoints and logging: ``etf_models/gan_train.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from etf_models.checkpoint import load_checkpoint
from etf_models.gan_train import GanTrainer
from etf_models.landmark_gcn import (
    GraphDiscriminator,
    LandmarkGCN,
    LandmarkGCNConfig,
    discriminator_loss,
    landmark_losses,
)


@dataclass
class LandmarkFrames:
    windows: np.ndarray  # [N,6,29] float32
    emotion: np.ndarray  # [N,7]
    intensity: np.ndarray  # [N]
    neutral: np.ndarray  # [N,68,2] canonical
    target: np.ndarray  # [N,68,2] canonical

    def __post_init__(self) -> None:
        n = len(self.windows)
        for name in ("emotion", "intensity", "neutral", "target"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} frames, windows {n}")

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(np.ascontiguousarray(a[idx], np.float32)).to(device)
                     for a in (self.windows, self.emotion, self.intensity, self.neutral,
                               self.target))

    @classmethod
    def concat(cls, parts: list[LandmarkFrames]) -> LandmarkFrames:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("windows", "emotion", "intensity", "neutral", "target")))


@dataclass
class LandmarkTrainConfig:
    lr: float = 2e-4  # the paper's Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)
    batch: int = 32
    adv_weight: float = 0.5  # the paper's LSGAN weight (L_ver has weight 1)
    adv_start: int = 0  # steps of L_ver alone before the discriminator joins
    window_noise: float = 0.0  # Gaussian noise on the speech windows (regularises)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class LandmarkTrainer(GanTrainer):
    """G_L and its graph discriminator (``step``: one G and one D update). Under torchrun
    both are wrapped in DistributedDataParallel (``etf_models/distributed.py``)."""

    model_name = "landmark_gcn"

    def __init__(self, model_cfg: LandmarkGCNConfig, cfg: LandmarkTrainConfig,
                 device: torch.device | str = "cpu") -> None:
        torch.manual_seed(cfg.seed)
        super().__init__(LandmarkGCN(model_cfg), GraphDiscriminator(model_cfg), model_cfg, cfg,
                         device)

    def step(self, data: LandmarkFrames) -> dict[str, float]:
        idx = self.rng.integers(0, len(data), self.cfg.batch)
        windows, emotion, intensity, neutral, target = data.batch(idx, self.device)
        if self.cfg.window_noise:
            windows = windows + self.cfg.window_noise * torch.randn_like(windows)
        self.g.train()
        pred = self.g_par(windows, emotion, intensity, neutral)
        adv = self.steps >= self.cfg.adv_start and self.cfg.adv_weight > 0
        # the critic's view of the fake for G's loss: its own weights do not step here
        losses = landmark_losses(pred, target,
                                 self.d(pred, emotion, intensity) if adv else None,
                                 self.cfg.adv_weight)
        self.opt_g.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt_g.step()
        out = {k: v.item() for k, v in losses.items()}
        if adv:  # one critic pass over real and fake together (one DDP forward per step)
            n = len(target)
            scores = self.d_par(torch.cat([target, pred.detach()]), emotion.repeat(2, 1),
                                intensity.repeat(2))
            d_loss = discriminator_loss(scores[:n], scores[n:])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["d"] = d_loss.item()
        self.steps += 1
        return out

    def predict(self, data: LandmarkFrames, batch: int = 256) -> np.ndarray:
        self.g.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(data), batch):
                w, e, i, n, _ = data.batch(np.arange(s, min(len(data), s + batch)),
                                           self.device)
                out.append(self.g(w, e, i, n).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 68, 2), np.float32)


def load_landmark_model(path: str | Path) -> LandmarkGCN:
    """G_L from a checkpoint written by ``LandmarkTrainer.save``."""
    blob = load_checkpoint(path, model="landmark_gcn")
    g = LandmarkGCN(LandmarkGCNConfig.from_dict(blob["config"]))
    g.load_state_dict(blob["state_dict"])
    return g.eval()
