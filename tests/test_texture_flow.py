"""G_T, the flow texture generator: shapes, warping, gradients, learning, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from etf_models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from etf_models.texture_flow import (  # noqa: E402
    FrameDiscriminator,
    PerFrameGT,
    TextureFlow,
    TextureFlowConfig,
    heatmap_difference,
    heatmaps,
    warp,
)

TINY = TextureFlowConfig(enc=(8, 12, 16), motion=(16, 24, 32), disc=(8, 16, 32))


def _inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(b, 3, 256, 256, generator=g) * 2 - 1
    src_lm = torch.rand(b, 68, 2, generator=g) * 120 + 68
    lm = src_lm + torch.randn(b, 68, 2, generator=g) * 3
    emo = torch.eye(7)[torch.randint(0, 7, (b,), generator=g)]
    return src, src_lm, lm, emo, torch.rand(b, generator=g)


def test_heatmaps_peak_at_landmarks():
    lm = torch.tensor([[[64.0, 128.0], [200.0, 40.0]]])
    h = heatmaps(lm, 64, 1.5, 256.0)
    assert h.shape == (1, 2, 64, 64)
    for k, (x, y) in enumerate(lm[0] / 4):
        iy, ix = divmod(int(h[0, k].argmax()), 64)
        assert abs(ix + 0.5 - x) <= 0.5 and abs(iy + 0.5 - y) <= 0.5
    cfg = TextureFlowConfig(n_points=2)
    d = heatmap_difference(lm, heatmaps(lm, 64, 1.5, 256.0), cfg)
    assert d.shape == (1, 3, 64, 64) and d[:, :2].abs().max() == 0  # no motion, no difference


def test_warp_identity_and_shift():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.allclose(warp(x, torch.zeros(1, 2, 4, 4)), x, atol=1e-5)
    shift = torch.zeros(1, 2, 4, 4)
    shift[:, 0] = 0.5  # half a pixel-unit of the -1..1 range = one pixel at width 4
    y = warp(x, shift)
    assert torch.allclose(y[0, 0, :, :3], x[0, 0, :, 1:], atol=1e-5)  # sampled from the right


def test_shapes_gradients_and_split():
    torch.manual_seed(0)
    g, d = TextureFlow(TINY), FrameDiscriminator(TINY)
    src, src_lm, lm, emo, inten = _inputs(2)
    out = g(src, src_lm, lm, emo, inten)
    assert out.shape == (2, 3, 256, 256) and out.abs().max() <= 1
    score, feats = d(out, lm)
    assert score.shape == (2, 1, 32, 32) and len(feats) == 3  # 70x70-style patches
    (out.abs().mean() + score.mean()).backward()
    assert not [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not [n for n, p in d.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    g.eval()
    with torch.no_grad():
        ident = g.prepare(src, src_lm)
        assert torch.allclose(PerFrameGT(g)(lm, emo, inten, *ident),
                              g(src, src_lm, lm, emo, inten), atol=1e-6)
    ids = {id(p) for p in g.identity_parameters()}
    assert ids == {id(p) for p in [*g.encoder.parameters(), *g.decoder.parameters()]}
    assert not ids & {id(p) for p in g.motion.parameters()}


def test_paper_widths():
    g = TextureFlow()
    cfg = g.config
    assert cfg.enc == (64, 128, 256) and cfg.motion == (512, 1024, 1024)
    assert g.motion.d1[0].in_channels == 256 + 69  # 325 channels, as the paper says


def test_learns_to_move_a_patch():
    """The target is the source with a bright patch moved by the landmark displacement."""
    torch.manual_seed(0)
    g = TextureFlow(TINY)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    src = -torch.ones(1, 3, 256, 256)
    src[..., 100:140, 100:140] = 1.0
    src_lm = torch.full((1, 68, 2), 120.0)
    lm = src_lm + torch.tensor([16.0, 0.0])
    target = torch.roll(src, 16, dims=-1)
    emo, inten = torch.eye(7)[[0]], torch.ones(1)
    losses = []
    for _ in range(40):
        loss = (g(src, src_lm, lm, emo, inten) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def test_checkpoint_and_onnx_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    g = TextureFlow(TINY).eval()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "gt.pt"
    save_checkpoint(path, "texture_flow", TINY.to_dict(), g.state_dict())
    blob = load_checkpoint(path, model="texture_flow")
    g2 = TextureFlow(TextureFlowConfig.from_dict(blob["config"])).eval()
    g2.load_state_dict(blob["state_dict"])
    src, src_lm, lm, emo, inten = _inputs(1, seed=3)
    with torch.no_grad():
        assert torch.equal(g(src, src_lm, lm, emo, inten), g2(src, src_lm, lm, emo, inten))
        ident = g.prepare(src, src_lm)
        pf = PerFrameGT(g).eval()
        want = pf(lm, emo, inten, *ident)
    from etf_models.export import check_onnx, export_gt, gt_example

    model = export_gt(g)
    inputs = gt_example(g, batch=2, seed=5)
    assert want.std() > 0.05  # a real image, not a constant
    assert check_onnx(model, pf, inputs) <= 1e-3
