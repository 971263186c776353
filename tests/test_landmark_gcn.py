"""G_L, the graph landmark generator: shapes, gradients, learning, checkpoints, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from etf_models.canonical_face import REGIONS  # noqa: E402
from etf_models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from etf_models.landmark_gcn import (  # noqa: E402
    GraphConv,
    GraphDiscriminator,
    LandmarkGCN,
    LandmarkGCNConfig,
    PerFrameGL,
    discriminator_loss,
    emotion_vector,
    face_graph,
    landmark_losses,
)


def _template() -> np.ndarray:
    """A plausible canonical 68-point face (the built-in identity's neutral landmarks)."""
    from engines.face.default_face import default_identity

    return default_identity().neutral.astype(np.float32)


@pytest.fixture(scope="module")
def cfg() -> LandmarkGCNConfig:
    return face_graph(_template(), audio_hidden=32, code_dim=24, vertex_dims=(8, 16),
                      region_dim=24)


def _batch(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    neutral = torch.from_numpy(np.repeat(_template()[None], b, 0))
    neutral = neutral + torch.randn(b, 68, 2, generator=g)  # a few identities
    emotion = torch.eye(7)[torch.randint(0, 7, (b,), generator=g)]
    intensity = torch.rand(b, generator=g)
    windows = torch.randn(b, 6, 29, generator=g)
    return windows, emotion, intensity, neutral


def _perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_graph_is_the_papers(cfg):
    assert cfg.n_points == 68
    assert [set(r) for r in cfg.regions] == [set(v.tolist()) for v in REGIONS.values()]
    assert 150 < len(cfg.edges) < 200  # Delaunay of 68 points: ~3N edges
    layer = GraphConv(torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float32),
                      1, 1)
    p = layer.propagation().detach()
    # D^-1/2 (A+I) D^-1/2 with unit weights: symmetric, zero where there is no edge
    assert torch.allclose(p, p.T) and p[0, 2] == 0
    assert torch.allclose(p[0, 0], torch.tensor(0.5)) and torch.allclose(p[1, 1],
                                                                         torch.tensor(1 / 3))


def test_shapes_and_per_frame_split(cfg):
    torch.manual_seed(0)
    g = LandmarkGCN(cfg).eval()
    _perturb(g)
    windows, emotion, intensity, neutral = _batch(5)
    out = g(windows, emotion, intensity, neutral)
    assert out.shape == (5, 68, 2)
    ident = g.encode_identity(neutral)
    assert [t.shape for t in ident] == [(5, 24), (5, 68, 16), (5, 8, 24)]
    split = PerFrameGL(g)(windows, emotion, intensity, neutral, *ident)
    assert torch.allclose(out, split)
    # intensity 0 is neutral whatever the emotion
    zero = torch.zeros(5)
    assert torch.allclose(g(windows, emotion, zero, neutral),
                          g(windows, torch.eye(7)[[0] * 5], zero, neutral), atol=1e-6)
    assert torch.allclose(emotion_vector(emotion, torch.ones(5)), emotion)
    # the audio and the emotion both move the landmarks
    assert (g(windows * 0, emotion, intensity, neutral) - out).abs().max() > 1e-3
    assert (g(windows, torch.eye(7)[[4] * 5], torch.ones(5), neutral)
            - g(windows, torch.eye(7)[[1] * 5], torch.ones(5), neutral)).abs().max() > 1e-3


def test_gradients_reach_every_parameter(cfg):
    torch.manual_seed(0)
    g, d = LandmarkGCN(cfg), GraphDiscriminator(cfg)
    windows, emotion, intensity, neutral = _batch(4)
    pred = g(windows, emotion, intensity, neutral)
    target = neutral + torch.randn_like(neutral)
    landmark_losses(pred, target, d(pred, emotion, intensity))["total"].backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing
    d.zero_grad()
    discriminator_loss(d(target, emotion, intensity),
                       d(pred.detach(), emotion, intensity)).backward()
    missing = [n for n, p in d.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_loss_decreases_on_a_learnable_task(cfg):
    """Mouth opening driven by one speech channel, brows by the emotion: G_L must fit it."""
    torch.manual_seed(0)
    g = LandmarkGCN(cfg)
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    lower_lip = torch.tensor([56, 57, 58, 65, 66, 67])
    brows = torch.arange(17, 27)

    def target(windows, emotion, intensity, neutral):
        t = neutral.clone()
        t[:, lower_lip, 1] += 8 * torch.sigmoid(windows[:, 2:4, 0].mean(1))[:, None]
        t[:, brows, 1] -= 6 * (emotion[:, 4] * intensity)[:, None]
        return t

    losses = []
    batch = _batch(16, seed=0)
    want = target(*batch)
    for _ in range(80):  # fit one batch: every path (audio, emotion, graph) must carry signal
        loss = landmark_losses(g(*batch), want, None)["ver"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses


def test_checkpoint_round_trip(cfg, tmp_path):
    torch.manual_seed(0)
    g = LandmarkGCN(cfg).eval()
    _perturb(g)
    path = tmp_path / "gl.pt"
    save_checkpoint(path, "landmark_gcn", cfg.to_dict(), g.state_dict())
    blob = load_checkpoint(path, model="landmark_gcn")
    g2 = LandmarkGCN(LandmarkGCNConfig.from_dict(blob["config"])).eval()
    g2.load_state_dict(blob["state_dict"])
    batch = _batch(3)
    assert torch.equal(g(*batch), g2(*batch))
    assert g2.config == cfg


def test_onnx_per_frame_graph_matches_pytorch(cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from etf_models.export import check_onnx, export_gl, gl_example

    torch.manual_seed(0)
    g = LandmarkGCN(cfg).eval()
    _perturb(g, 0.3)
    model = export_gl(g, tmp_path / "gl.onnx")
    assert (tmp_path / "gl.onnx").read_bytes() == model
    inputs = gl_example(g, batch=4, seed=9)  # another batch size than the export's
    with torch.no_grad():
        moved = (PerFrameGL(g)(*inputs.values()) - inputs["neutral"]).abs().max()
    assert moved > 1.0  # the comparison is about real displacements
    assert check_onnx(model, PerFrameGL(g), inputs) <= 1e-3


def test_trainer_learns_and_resumes(cfg, tmp_path):
    from etf_models.landmark_train import (
        LandmarkFrames,
        LandmarkTrainConfig,
        LandmarkTrainer,
        load_landmark_model,
    )

    windows, emotion, intensity, neutral = (t.numpy() for t in _batch(64, seed=4))
    target = neutral.copy()
    target[:, 57, 1] += 10 * (windows[:, 3, 5] > 0)  # the lower lip follows one speech channel
    data = LandmarkFrames(windows, emotion, intensity, neutral, target)
    with pytest.raises(ValueError, match="target has 3 frames"):
        LandmarkFrames(windows, emotion, intensity, neutral, target[:3])
    tcfg = LandmarkTrainConfig(lr=3e-3, batch=16, adv_start=20)
    trainer = LandmarkTrainer(cfg, tcfg)
    history = trainer.fit(data, 60, log_every=20, log=lambda s: None)
    assert "d" in history[-1] and "adv" in history[-1]  # the discriminator joined
    assert history[-1]["ver"] < 0.5 * history[0]["ver"]
    path = tmp_path / "gl.pt"
    trainer.save(path)
    again = LandmarkTrainer(cfg, tcfg)
    again.resume(path)
    assert again.steps == 60 and again.history == trainer.history
    batch = tuple(torch.from_numpy(a[:4]) for a in (windows, emotion, intensity, neutral))
    assert torch.equal(again.g.eval()(*batch), trainer.g.eval()(*batch))
    assert torch.equal(load_landmark_model(path)(*batch), trainer.g(*batch))
    # both continue identically (same optimiser state and batch sampling)
    trainer.fit(data, 62, log=lambda s: None)
    again.fit(data, 62, log=lambda s: None)
    assert torch.allclose(again.g(*batch), trainer.g(*batch), atol=1e-5)
