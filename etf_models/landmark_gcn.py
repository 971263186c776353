"""G_L, the paper's graph landmark generator, and its graph discriminator.

Inputs per frame (the LandmarkEngine contract of ``DESIGN.md``): the speech window
``[B, 6, 29]`` (DeepSpeech logits centred on the frame), the emotion ``[B, 7]`` (neutral +
6, one-hot or a blend), the intensity ``[B]`` in 0..1 and the identity's neutral landmarks
``[B, 68, 2]`` in the canonical 256 frame. Output: the frame's landmarks ``[B, 68, 2]``
(canonical), ``X' = X + delta``.

- **audio encoder**: 3 LSTM layers over the 6 rows (29 -> 256), the last state -> 128;
- **emotion encoder**: one 1x1 convolution of the emotion vector -> 128. Intensity is a
  continuous input: the vector is ``intensity * emotion + (1 - intensity) * neutral``, so 0
  is neutral and the paper's two levels are 0.5 and 1;
- **graph encoder**: spectral GCN layers with learnable edge weights (Eq. 1,
  ``f' = sigma(D^-1/2 w(A+I) D^-1/2 f W)``) over the Delaunay graph of the 68 points,
  hierarchical pooling into the 8 regions (mean over each region's points) and then into
  one vertex of ``d = 128``;
- **graph decoder**: the fused code (graph, audio, emotion) is unpooled to the 8 regions
  and then to the 68 vertices, with skip connections from the encoder level of the same
  size, and predicts the displacements ``delta``;
- **discriminator**: the same kind of graph layers over landmarks, pooled, with the
  emotion code, to one LSGAN score.

The neutral landmarks are the only identity input, so ``encode_identity`` runs once per
identity and ``step`` is the per-frame graph (``PerFrameGL`` wraps it for ONNX export).
Coordinates are scaled to about -1..1 inside (``(x - 128) / 128``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

N_EMOTIONS = 7
NEUTRAL = 0


@dataclass(frozen=True)
class LandmarkGCNConfig:
    """Architecture of G_L (stored in checkpoints; the graph itself is part of it)."""

    edges: tuple[tuple[int, int], ...] = ()
    regions: tuple[tuple[int, ...], ...] = ()
    n_points: int = 68
    window: int = 6
    n_chars: int = 29
    audio_hidden: int = 256
    audio_layers: int = 3
    code_dim: int = 128  # audio, emotion and graph codes (d = 128 in the paper)
    vertex_dims: tuple[int, ...] = (32, 64)
    region_dim: int = 128
    canon_centre: float = 128.0
    canon_scale: float = 128.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["edges"] = [list(e) for e in self.edges]
        d["regions"] = [list(r) for r in self.regions]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LandmarkGCNConfig:
        d = dict(d)
        d["edges"] = tuple(tuple(int(i) for i in e) for e in d.get("edges", ()))
        d["regions"] = tuple(tuple(int(i) for i in r) for r in d.get("regions", ()))
        d["vertex_dims"] = tuple(d.get("vertex_dims", (32, 64)))
        return cls(**d)


def face_graph(template: np.ndarray, **kw) -> LandmarkGCNConfig:
    """A config whose graph is the Delaunay triangulation of ``template`` [68,2] and whose
    regions are the paper's 8 (jaw, brows, nose, eyes, outer and inner lips)."""
    from etf_models.canonical_face import REGIONS, delaunay_triangles, triangle_edges

    edges = triangle_edges(delaunay_triangles(np.asarray(template, np.float64)))
    regions = tuple(tuple(int(i) for i in idx) for idx in REGIONS.values())
    return LandmarkGCNConfig(edges=tuple((int(a), int(b)) for a, b in edges),
                             regions=regions, n_points=len(template), **kw)


def emotion_vector(emotion: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """[B,7] emotion and [B] intensity -> the blended input vector [B,7]."""
    neutral = torch.zeros_like(emotion)
    neutral[:, NEUTRAL] = 1.0
    k = intensity.reshape(-1, 1).to(emotion.dtype)
    return k * emotion + (1.0 - k) * neutral


class GraphConv(nn.Module):
    """One layer of Eq. 1 with a learnable, symmetric, positive weight per edge."""

    def __init__(self, adjacency: torch.Tensor, n_in: int, n_out: int,
                 act: bool = True) -> None:
        super().__init__()
        n = adjacency.shape[0]
        self.register_buffer("mask", (adjacency + torch.eye(n)).clamp(max=1.0))
        # softplus(0.5413) = 1: every edge starts with weight 1 (the plain normalised graph)
        self.edge = nn.Parameter(torch.full((n, n), 0.5413))
        self.lin = nn.Linear(n_in, n_out)
        self.act = nn.LeakyReLU(0.2) if act else nn.Identity()

    def propagation(self) -> torch.Tensor:
        """D^-1/2 w(A+I) D^-1/2 [N,N]."""
        w = nn.functional.softplus(self.edge)
        w = 0.5 * (w + w.T) * self.mask
        d = w.sum(1).rsqrt()
        return d[:, None] * w * d[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,N,n_in] -> [B,N,n_out]."""
        return self.act(torch.matmul(self.propagation(), self.lin(x)))


def _adjacency(n: int, edges) -> torch.Tensor:
    a = torch.zeros(n, n)
    for i, j in edges:
        a[i, j] = a[j, i] = 1.0
    return a


def _pool_matrix(n: int, regions) -> torch.Tensor:
    """[K,N]: row k averages region k's points."""
    p = torch.zeros(len(regions), n)
    for k, idx in enumerate(regions):
        p[k, list(idx)] = 1.0 / len(idx)
    return p


class _GraphLevels(nn.Module):
    """Shared structure of the encoder and discriminator: vertex convs, region pooling."""

    def __init__(self, cfg: LandmarkGCNConfig, n_in: int) -> None:
        super().__init__()
        if not cfg.edges or not cfg.regions:
            raise ValueError("the config has no graph: build it with face_graph(template)")
        adj = _adjacency(cfg.n_points, cfg.edges)
        dims = (n_in, *cfg.vertex_dims)
        self.vertex = nn.ModuleList(GraphConv(adj, a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                            strict=True))
        pool = _pool_matrix(cfg.n_points, cfg.regions)
        self.register_buffer("pool", pool)
        # unpooling copies each region's feature to its points (a point in several regions
        # gets their mean)
        member = (pool > 0).float()
        self.register_buffer("unpool", (member / member.sum(0, keepdim=True).clamp(min=1)).T)
        k = len(cfg.regions)
        self.region = GraphConv(torch.ones(k, k) - torch.eye(k), cfg.vertex_dims[-1],
                                cfg.region_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,N,n_in] -> (vertex features [B,N,V], region features [B,K,R])."""
        for layer in self.vertex:
            x = layer(x)
        return x, self.region(torch.matmul(self.pool, x))


class LandmarkGCN(nn.Module):
    """G_L (see module docstring)."""

    def __init__(self, config: LandmarkGCNConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.code_dim
        self.audio_lstm = nn.LSTM(cfg.n_chars, cfg.audio_hidden, cfg.audio_layers,
                                  batch_first=True)
        self.audio_out = nn.Linear(cfg.audio_hidden, d)
        self.emotion_conv = nn.Conv1d(N_EMOTIONS, d, kernel_size=1)
        self.encoder = _GraphLevels(cfg, 2)
        self.to_code = nn.Linear(cfg.region_dim, d)
        self.fuse = nn.Sequential(nn.Linear(3 * d, d), nn.LeakyReLU(0.2))
        k = len(cfg.regions)
        adj = _adjacency(cfg.n_points, cfg.edges)
        self.dec_region = GraphConv(torch.ones(k, k) - torch.eye(k), d + cfg.region_dim,
                                    cfg.vertex_dims[-1])
        v = cfg.vertex_dims[-1]
        # which point is which: points of one region share their unpooled feature, and the
        # coordinates alone are a weak label, so every vertex has a learned embedding
        self.vertex_embed = nn.Parameter(torch.randn(cfg.n_points, cfg.vertex_dims[0]) * 0.5)
        self.dec_vertex = GraphConv(adj, 2 * v + d + cfg.vertex_dims[0], cfg.vertex_dims[0])
        self.dec_out = nn.Linear(cfg.vertex_dims[0], 2)  # per vertex: displacements
        with torch.no_grad():  # start from "no displacement"
            self.dec_out.weight.mul_(0.01)
            self.dec_out.bias.zero_()

    # -- parts

    def _norm(self, pts: torch.Tensor) -> torch.Tensor:
        return (pts - self.config.canon_centre) / self.config.canon_scale

    def encode_identity(self, neutral: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """neutral [B,68,2] canonical -> (graph code [B,d], vertex skip [B,N,V],
        region skip [B,K,R]); depends on the identity only (computed once)."""
        vert, reg = self.encoder(self._norm(neutral))
        code = self.to_code(reg.mean(1))
        return code, vert, reg

    def encode_audio(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B,6,29] -> [B,d]."""
        out, _ = self.audio_lstm(windows)
        return self.audio_out(out[:, -1])

    def encode_emotion(self, emotion: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """emotion [B,7], intensity [B] -> [B,d]."""
        return self.emotion_conv(emotion_vector(emotion, intensity)[:, :, None])[:, :, 0]

    def step(self, windows: torch.Tensor, emotion: torch.Tensor, intensity: torch.Tensor,
             neutral: torch.Tensor, code: torch.Tensor, vert: torch.Tensor,
             reg: torch.Tensor) -> torch.Tensor:
        """The per-frame graph: -> landmarks [B,68,2] canonical."""
        z = self.fuse(torch.cat([code, self.encode_audio(windows),
                                 self.encode_emotion(emotion, intensity)], dim=1))
        k, n = reg.shape[1], vert.shape[1]
        r = self.dec_region(torch.cat([z[:, None].expand(-1, k, -1), reg], dim=2))
        v = torch.matmul(self.encoder.unpool, r)  # [B,N,V]
        x = self.dec_vertex(torch.cat([v, vert, z[:, None].expand(-1, n, -1),
                                       self.vertex_embed[None].expand(v.shape[0], -1, -1)],
                                      dim=2))
        delta = self.dec_out(x)
        return neutral + delta * self.config.canon_scale

    def forward(self, windows: torch.Tensor, emotion: torch.Tensor, intensity: torch.Tensor,
                neutral: torch.Tensor) -> torch.Tensor:
        """windows [B,6,29], emotion [B,7], intensity [B], neutral [B,68,2] -> [B,68,2]."""
        return self.step(windows, emotion, intensity, neutral, *self.encode_identity(neutral))


class PerFrameGL(nn.Module):
    """G_L's per-frame graph with the identity's encoder outputs as inputs (for export).

    With ``shared_identity`` the identity inputs (neutral, code, vert, reg) have batch 1 and
    are broadcast to the frames' batch inside the graph: one identity serves every session
    of a server, so it is bound once instead of copied per frame.
    """

    def __init__(self, gl: LandmarkGCN, shared_identity: bool = False) -> None:
        super().__init__()
        self.gl = gl
        self.shared_identity = shared_identity

    def forward(self, windows, emotion, intensity, neutral, code, vert, reg):
        if self.shared_identity:
            b = windows.shape[0]
            neutral, code = neutral.expand(b, -1, -1), code.expand(b, -1)
            vert, reg = vert.expand(b, -1, -1), reg.expand(b, -1, -1)
        return self.gl.step(windows, emotion, intensity, neutral, code, vert, reg)


class GraphDiscriminator(nn.Module):
    """LSGAN critic over landmarks [B,68,2] canonical, conditioned on the emotion."""

    def __init__(self, config: LandmarkGCNConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = _GraphLevels(config, 2)
        self.emotion = nn.Linear(N_EMOTIONS, config.region_dim)
        self.out = nn.Sequential(nn.Linear(2 * config.region_dim, config.region_dim),
                                 nn.LeakyReLU(0.2), nn.Linear(config.region_dim, 1))

    def forward(self, landmarks: torch.Tensor, emotion: torch.Tensor,
                intensity: torch.Tensor) -> torch.Tensor:
        """-> scores [B] (LSGAN: 1 real, 0 fake)."""
        x = (landmarks - self.config.canon_centre) / self.config.canon_scale
        _, reg = self.levels(x)
        e = self.emotion(emotion_vector(emotion, intensity))
        return self.out(torch.cat([reg.mean(1), e], dim=1))[:, 0]


def landmark_losses(pred: torch.Tensor, target: torch.Tensor, d_fake: torch.Tensor | None,
                    adv_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """Generator losses: L_ver (weight 1, squared vertex distance in canonical pixels,
    mean over vertices) + ``adv_weight`` x LSGAN ((D(fake) - 1)^2).

    Pixels of the 256 canonical frame keep the loss near 1 for typical speech motion (in
    -1..1 units it is ~1e-4), which keeps the loss logs readable and the 0.5 LSGAN weight
    meaningful."""
    ver = (pred - target).pow(2).sum(-1).mean()
    out = {"ver": ver, "total": ver}
    if d_fake is not None:
        adv = (d_fake - 1.0).pow(2).mean()
        out["adv"] = adv
        out["total"] = ver + adv_weight * adv
    return out


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """LSGAN critic loss: real -> 1, fake -> 0."""
    return 0.5 * ((d_real - 1.0).pow(2).mean() + d_fake.pow(2).mean())
