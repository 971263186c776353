"""Training G_T and its one-shot adaptation.

Losses (the paper): L1 (weight 1) + VGG16 perceptual (10) + adversarial (1, LSGAN with the
frame discriminator). The perceptual loss needs ImageNet VGG16 weights, which cannot be
downloaded here: ``Vgg16Features.from_file`` loads the user's copy of torchvision's
``vgg16-397923af.pth`` (or any state dict with its ``features.N.weight`` names). Without
it the trainer uses a documented substitute and says so in its log: feature matching on
the frame discriminator's layers (pix2pixHD), which needs no outside weights.

``TextureFrames`` samples training pairs from ``etf preprocess`` shards: the source is a
frame of the same speaker's neutral clips (any of their clips if they have none), the
target a frame of any of their clips, with its landmarks and emotion.

``adapt`` is the one-shot adaptation: up to 5 Adam steps on the identity photo alone
(reconstructing it from its own landmarks), updating only the image encoder and decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from etf_models import distributed as dist
from etf_models.checkpoint import load_checkpoint
from etf_models.gan_train import GanTrainer
from etf_models.texture_flow import FrameDiscriminator, TextureFlow, TextureFlowConfig

# torchvision's VGG16 "features": conv widths, "M" = max pool
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3 (indices in "features")


class Vgg16Features(nn.Module):
    """VGG16's convolutional trunk (torchvision layout) returning relu1_2..relu4_3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers[: _VGG_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[None, :, None, None])
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[None, :, None, None])

    @classmethod
    def from_file(cls, path: str | Path) -> Vgg16Features:
        """Load ImageNet weights from a torchvision VGG16 state dict the user supplies."""
        net = cls()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for foreign files
            raise ValueError(f"{path}: not a readable VGG16 state dict ({e})") from None
        want = {k for k in net.state_dict() if k.startswith("features.")}
        picked = {k: v for k, v in state.items() if k in want}
        if set(picked) != want:
            raise ValueError(f"{path}: missing VGG16 weights {sorted(want - set(picked))[:3]}")
        net.load_state_dict({**net.state_dict(), **picked})
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img [B,3,H,W] in -1..1 -> the four tapped activations."""
        x = ((img + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                out.append(x)
        return out


@dataclass
class TextureTrainConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch: int = 4
    w_l1: float = 1.0
    w_perceptual: float = 10.0
    w_adv: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class TextureFrames:
    """Training pairs from ``etf preprocess`` shards (kept as JPEG until sampled)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.shards = []
        for path in sorted((Path(out_dir) / "shards").glob("*.npz")):
            with np.load(path) as z:
                d = {k: z[k] for k in ("landmarks", "jpeg", "jpeg_offsets", "emotion",
                                       "intensity", "speaker")}
            ok = np.flatnonzero(np.isfinite(d["landmarks"]).all(axis=(1, 2)))
            if len(ok):
                d["ok"] = ok
                self.shards.append(d)
        if not self.shards:
            raise ValueError(f"{out_dir}: no preprocessed frames (run etf preprocess first)")
        self.by_speaker: dict[str, list[int]] = {}
        self.neutral_by_speaker: dict[str, list[int]] = {}
        for i, d in enumerate(self.shards):
            spk = str(d["speaker"])
            self.by_speaker.setdefault(spk, []).append(i)
            if int(d["emotion"]) == 0:
                self.neutral_by_speaker.setdefault(spk, []).append(i)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        from etf_models.shards import decode_crops

        src, src_lm, tgt, tgt_lm, emo, inten = [], [], [], [], [], []
        for _ in range(n):
            t = self.shards[int(rng.integers(len(self.shards)))]
            spk = str(t["speaker"])
            pool = self.neutral_by_speaker.get(spk) or self.by_speaker[spk]
            s = self.shards[pool[int(rng.integers(len(pool)))]]
            i, j = int(rng.choice(s["ok"])), int(rng.choice(t["ok"]))
            src.append(decode_crops(s, np.array([i]))[0])
            src_lm.append(s["landmarks"][i])
            tgt.append(decode_crops(t, np.array([j]))[0])
            tgt_lm.append(t["landmarks"][j])
            e = np.zeros(7, np.float32)
            e[int(t["emotion"])] = 1.0
            emo.append(e)
            inten.append(float(t["intensity"]))
        return (_to_tensor(np.stack(src)), torch.from_numpy(np.stack(src_lm)).float(),
                _to_tensor(np.stack(tgt)), torch.from_numpy(np.stack(tgt_lm)).float(),
                torch.from_numpy(np.stack(emo)), torch.tensor(inten, dtype=torch.float32))


def _feature_l1(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.l1_loss(x, y.detach()) for x, y in zip(a, b, strict=True)) / len(a)


class TextureTrainer(GanTrainer):
    """G_T + frame discriminator (``step``: one G and one D update on a sampled batch)."""

    model_name = "texture_flow"

    def __init__(self, model_cfg: TextureFlowConfig, cfg: TextureTrainConfig,
                 vgg: Vgg16Features | None = None,
                 log: Callable[[str], None] = print, device: torch.device | str = "cpu") -> None:
        torch.manual_seed(cfg.seed)
        super().__init__(TextureFlow(model_cfg), FrameDiscriminator(model_cfg), model_cfg, cfg,
                         device)
        self.vgg = vgg.to(self.device) if vgg is not None else None
        self.perceptual = "vgg16" if vgg is not None else "discriminator feature matching"
        if vgg is None and dist.is_main():
            log("perceptual loss: no VGG16 weights given (--vgg16), so the substitute is "
                "used: L1 feature matching on the frame discriminator's layers (pix2pixHD)")

    def extra_meta(self) -> dict:
        return {"perceptual": self.perceptual}

    def perceptual_loss(self, fake: torch.Tensor, real: torch.Tensor,
                        f_fake: list[torch.Tensor], f_real: list[torch.Tensor]
                        ) -> torch.Tensor:
        if self.vgg is not None:
            return _feature_l1(self.vgg(fake), self.vgg(real))
        return _feature_l1(f_fake, f_real)

    def step(self, data: TextureFrames) -> dict[str, float]:
        batch = data.sample(self.cfg.batch, self.rng)
        src, src_lm, tgt, tgt_lm, emo, inten = (t.to(self.device) for t in batch)
        self.g.train()
        fake = self.g_par(src, src_lm, tgt_lm, emo, inten)
        score_fake, f_fake = self.d(fake, tgt_lm)  # D's weights do not step here
        with torch.no_grad():
            _, f_real = self.d(tgt, tgt_lm)
        l1 = F.l1_loss(fake, tgt)
        perc = self.perceptual_loss(fake, tgt, f_fake, f_real)
        adv = (score_fake - 1).pow(2).mean()
        total = self.cfg.w_l1 * l1 + self.cfg.w_perceptual * perc + self.cfg.w_adv * adv
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        n = len(tgt)  # one critic pass over real and fake (one DDP forward per step)
        scores, _ = self.d_par(torch.cat([tgt, fake.detach()]), tgt_lm.repeat(2, 1, 1))
        d_loss = 0.5 * ((scores[:n] - 1).pow(2).mean() + scores[n:].pow(2).mean())
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.steps += 1
        return {"l1": l1.item(), "perceptual": perc.item(), "adv": adv.item(),
                "total": total.item(), "d": d_loss.item()}


def load_texture_model(path: str | Path) -> TextureFlow:
    blob = load_checkpoint(path, model="texture_flow")
    g = TextureFlow(TextureFlowConfig.from_dict(blob["config"]))
    g.load_state_dict(blob["state_dict"])
    return g.eval()


def adapt(g: TextureFlow, photo: np.ndarray, landmarks: np.ndarray, iterations: int = 5,
          lr: float = 1e-4, vgg: Vgg16Features | None = None) -> dict:
    """One-shot adaptation on the identity's canonical crop [256,256,3] uint8 and its
    landmarks [68,2]: fine-tune the image encoder and decoder (only) to reconstruct it.

    Returns {"seconds", "l1_before", "l1_after", "iterations"}; ``g`` is updated in place.
    """
    if not 1 <= iterations <= 5:
        raise ValueError("one-shot adaptation takes 1 to 5 iterations")
    dev = next(g.parameters()).device  # adapt where the model lives (CPU or GPU)
    src = _to_tensor(np.asarray(photo, np.uint8)[None]).to(dev)
    lm = torch.as_tensor(np.asarray(landmarks, np.float32))[None].to(dev)
    emo = torch.eye(7, device=dev)[[0]]
    inten = torch.zeros(1, device=dev)
    params = g.identity_parameters()
    opt = torch.optim.Adam(params, lr=lr)
    frozen = [p for p in g.parameters() if all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    t0 = time.perf_counter()
    with torch.no_grad():
        before = F.l1_loss(g(src, lm, lm, emo, inten), src).item()
    try:
        g.train()
        for _ in range(iterations):
            out = g(src, lm, lm, emo, inten)
            loss = F.l1_loss(out, src)
            if vgg is not None:
                loss = loss + 10.0 * _feature_l1(vgg(out), vgg(src))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        g.eval()
        with torch.no_grad():
            after = F.l1_loss(g(src, lm, lm, emo, inten), src).item()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"seconds": round(time.perf_counter() - t0, 3), "l1_before": before,
            "l1_after": after, "iterations": iterations}
