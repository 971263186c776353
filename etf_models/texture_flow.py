"""G_T, the paper's flow texture generator, and its frame discriminator.

G_T animates the identity's neutral face crop (256x256, canonical) to a frame's landmarks:

- **image encoder** on the source crop: 256x256x64, 128x128x128, 64x64x256 (``widths``);
- **heatmap difference** at 64x64: 68 Gaussians of the target landmarks minus those of the
  source landmarks, plus a background channel (1 - max of the target's), 69 channels;
- **motion encoder**: the 64x64 image features concatenated with the heatmap difference
  (325 channels) -> 64x64x512, 32x32x1024, 16x16x1024; the **emotion** feature (one linear
  layer of the blended emotion vector, as in G_L) is added at 16x16;
- **motion decoder** back to 64x64: a ``tanh`` optical flow (2 channels, in units of half
  the image) and a ``softmax`` occlusion map (visible / hidden; the visible channel is used);
- the encoder features are **warped** by the flow (bilinear sampling; the flow is resized
  for the 128 and 256 skips) and multiplied by the occlusion map;
- **image decoder**: 64x64x256, 128x128x128, 256x256x64, 256x256x3 (``tanh``), with **AdaIN**
  at the bottleneck whose scale and bias come from the source encoder's features, and skip
  connections from the (warped) image encoder.

The paper's channel widths are the default (``TextureFlowConfig()``); tests use narrow ones.

The real-time split: ``prepare(source, source_landmarks)`` computes everything that
depends only on the identity (encoder features, source heatmaps, AdaIN parameters) once;
``render`` is the per-frame graph (``PerFrameGT`` wraps it for ONNX export). One-shot
adaptation fine-tunes only ``encoder`` and ``decoder`` (``identity_parameters``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from etf_models.landmark_gcn import N_EMOTIONS, emotion_vector


@dataclass(frozen=True)
class TextureFlowConfig:
    """Architecture of G_T (stored in checkpoints)."""

    size: int = 256
    enc: tuple[int, int, int] = (64, 128, 256)  # 256, 128, 64 px
    motion: tuple[int, int, int] = (512, 1024, 1024)  # 64, 32, 16 px
    heat_size: int = 64
    heat_sigma: float = 1.5  # Gaussian sd in heatmap pixels
    n_points: int = 68
    emotion_dim: int = 128
    canon_size: float = 256.0
    disc: tuple[int, ...] = (64, 128, 256, 512)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextureFlowConfig:
        d = dict(d)
        for k in ("enc", "motion", "disc"):
            d[k] = tuple(d[k])
        return cls(**d)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.InstanceNorm2d(cout, affine=True),
                         nn.LeakyReLU(0.2))


def heatmaps(landmarks: torch.Tensor, size: int, sigma: float,
             canon_size: float) -> torch.Tensor:
    """Gaussian heatmaps [B,N,size,size] of landmarks [B,N,2] (canonical pixels)."""
    scale = size / canon_size
    grid = (torch.arange(size, dtype=landmarks.dtype, device=landmarks.device) + 0.5)
    pts = landmarks * scale
    dx = grid[None, None, None, :] - pts[..., 0, None, None]
    dy = grid[None, None, :, None] - pts[..., 1, None, None]
    return torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))


def heatmap_difference(target: torch.Tensor, source_heat: torch.Tensor,
                       cfg: TextureFlowConfig) -> torch.Tensor:
    """[B,N+1,H,H]: target minus source Gaussians, plus the target's background."""
    th = heatmaps(target, cfg.heat_size, cfg.heat_sigma, cfg.canon_size)
    background = 1.0 - th.amax(dim=1, keepdim=True)
    return torch.cat([th - source_heat, background], dim=1)


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``features`` [B,C,H,W] at identity + ``flow`` [B,2,h,w] (normalised -1..1
    units, resized to H,W): the backward warp of the flow-based animation models."""
    b, _, h, w = features.shape
    if flow.shape[-2:] != (h, w):
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=features.device, dtype=flow.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=features.device, dtype=flow.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None] + flow.permute(0, 2, 3, 1)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: TextureFlowConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.enc
        self.e1 = nn.Sequential(_block(3, c1), _block(c1, c1))
        self.e2 = _block(c1, c2, 2)
        self.e3 = _block(c2, c3, 2)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """img [B,3,256,256] in -1..1 -> (s1 [B,c1,256], s2 [B,c2,128], s3 [B,c3,64])."""
        s1 = self.e1(img)
        s2 = self.e2(s1)
        return s1, s2, self.e3(s2)


class MotionNet(nn.Module):
    """Heatmap difference + image features (+ emotion) -> flow and occlusion at 64x64."""

    def __init__(self, cfg: TextureFlowConfig) -> None:
        super().__init__()
        m1, m2, m3 = cfg.motion
        cin = cfg.enc[2] + cfg.n_points + 1
        self.d1 = _block(cin, m1)
        self.d2 = _block(m1, m2, 2)
        self.d3 = _block(m2, m3, 2)
        self.emotion = nn.Linear(N_EMOTIONS, m3)
        self.u2 = _block(m3 + m2, m2)
        self.u1 = _block(m2 + m1, m1)
        self.out = nn.Conv2d(m1, 4, 3, 1, 1)  # 2 flow + 2 occlusion logits
        with torch.no_grad():  # start from the identity warp, everything visible
            self.out.weight.mul_(0.01)
            self.out.bias.copy_(torch.tensor([0.0, 0.0, 2.0, -2.0]))

    def forward(self, s3: torch.Tensor, heat_diff: torch.Tensor, emotion: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> flow [B,2,64,64] (tanh), visibility [B,1,64,64] (softmax channel 0)."""
        x1 = self.d1(torch.cat([s3, heat_diff], dim=1))
        x2 = self.d2(x1)
        x3 = self.d3(x2) + self.emotion(emotion)[:, :, None, None]
        y2 = self.u2(torch.cat([F.interpolate(x3, scale_factor=2.0), x2], dim=1))
        y1 = self.u1(torch.cat([F.interpolate(y2, scale_factor=2.0), x1], dim=1))
        o = self.out(y1)
        return torch.tanh(o[:, :2]), torch.softmax(o[:, 2:], dim=1)[:, :1]


class ImageDecoder(nn.Module):
    """Warped features -> image, AdaIN at the bottleneck, skips from the encoder."""

    def __init__(self, cfg: TextureFlowConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.enc
        self.b = nn.Sequential(_block(c3, c3), nn.Conv2d(c3, c3, 3, 1, 1))
        self.norm = nn.InstanceNorm2d(c3, affine=False)
        self.style = nn.Linear(2 * c3, 2 * c3)  # AdaIN scale and bias from source stats
        self.u2 = _block(c3 + c2, c2)
        self.u1 = _block(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 3, 3, 1, 1)

    def adain_params(self, s3: torch.Tensor) -> torch.Tensor:
        """[B,2*c3] from the source features' channel means and deviations."""
        stats = torch.cat([s3.mean(dim=(2, 3)), s3.std(dim=(2, 3))], dim=1)
        return self.style(stats)

    def forward(self, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor,
                style: torch.Tensor) -> torch.Tensor:
        c3 = w3.shape[1]
        x = self.norm(self.b(w3))
        x = F.leaky_relu(x * (1 + style[:, :c3, None, None]) + style[:, c3:, None, None], 0.2)
        x = self.u2(torch.cat([F.interpolate(x, scale_factor=2.0), w2], dim=1))
        x = self.u1(torch.cat([F.interpolate(x, scale_factor=2.0), w1], dim=1))
        return torch.tanh(self.out(x))


class TextureFlow(nn.Module):
    """G_T (see module docstring). Images are [B,3,H,W] in -1..1."""

    def __init__(self, config: TextureFlowConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TextureFlowConfig()
        self.encoder = ImageEncoder(cfg)
        self.motion = MotionNet(cfg)
        self.decoder = ImageDecoder(cfg)

    def identity_parameters(self) -> list[nn.Parameter]:
        """What one-shot adaptation fine-tunes: the image encoder and decoder only."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def prepare(self, source: torch.Tensor, source_landmarks: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        """Identity-only tensors: (s1, s2, s3, source heatmaps, AdaIN params)."""
        s1, s2, s3 = self.encoder(source)
        heat = heatmaps(source_landmarks, self.config.heat_size, self.config.heat_sigma,
                        self.config.canon_size)
        return s1, s2, s3, heat, self.decoder.adain_params(s3)

    def render(self, landmarks: torch.Tensor, emotion: torch.Tensor, intensity: torch.Tensor,
               s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, source_heat: torch.Tensor,
               style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The per-frame graph: landmarks [B,68,2] canonical -> (image [B,3,256,256],
        flow [B,2,64,64], visibility [B,1,64,64])."""
        diff = heatmap_difference(landmarks, source_heat, self.config)
        flow, vis = self.motion(s3, diff, emotion_vector(emotion, intensity))
        w3 = warp(s3, flow) * vis
        w2 = warp(s2, flow) * F.interpolate(vis, size=s2.shape[-2:], mode="bilinear",
                                            align_corners=False)
        w1 = warp(s1, flow) * F.interpolate(vis, size=s1.shape[-2:], mode="bilinear",
                                            align_corners=False)
        return self.decoder(w1, w2, w3, style), flow, vis

    def forward(self, source: torch.Tensor, source_landmarks: torch.Tensor,
                landmarks: torch.Tensor, emotion: torch.Tensor,
                intensity: torch.Tensor) -> torch.Tensor:
        """source [B,3,256,256], source_landmarks and landmarks [B,68,2], emotion [B,7],
        intensity [B] -> image [B,3,256,256] in -1..1."""
        return self.render(landmarks, emotion, intensity,
                           *self.prepare(source, source_landmarks))[0]


class PerFrameGT(nn.Module):
    """G_T's per-frame graph (identity tensors as inputs) returning the image only.

    With ``shared_identity`` the identity tensors (s1, s2, s3, source_heat, style) have
    batch 1 and are broadcast to the landmarks' batch inside the graph (see PerFrameGL).
    """

    def __init__(self, gt: TextureFlow, shared_identity: bool = False) -> None:
        super().__init__()
        self.gt = gt
        self.shared_identity = shared_identity

    def forward(self, landmarks, emotion, intensity, s1, s2, s3, source_heat, style):
        if self.shared_identity:
            b = landmarks.shape[0]
            s1, s2, s3 = s1.expand(b, -1, -1, -1), s2.expand(b, -1, -1, -1), s3.expand(
                b, -1, -1, -1)
            source_heat, style = source_heat.expand(b, -1, -1, -1), style.expand(b, -1)
        return self.gt.render(landmarks, emotion, intensity, s1, s2, s3, source_heat,
                              style)[0]


class FrameDiscriminator(nn.Module):
    """PatchGAN critic of a frame given its landmark heatmaps; also returns its features
    (for the feature-matching perceptual substitute)."""

    def __init__(self, config: TextureFlowConfig) -> None:
        super().__init__()
        self.config = config
        layers, cin = [], 3 + 1
        for i, c in enumerate(config.disc):
            layers.append(nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1),
                                        nn.InstanceNorm2d(c, affine=True) if i else
                                        nn.Identity(), nn.LeakyReLU(0.2)))
            cin = c
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(cin, 1, 3, 1, 1)

    def forward(self, image: torch.Tensor, landmarks: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = image.shape[-1]
        heat = heatmaps(landmarks, size, 2.0 * size / 256, self.config.canon_size)
        x = torch.cat([image, heat.amax(dim=1, keepdim=True) * 2 - 1], dim=1)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats
