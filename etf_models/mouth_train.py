"""Training the mouth interior (:mod:`etf_models.mouth_interior`) on real mouth patches.

Inputs are arrays per person (``engines.recordings.mouth_fit.samples``): patches
[N,H,W,3] uint8, conditions [N,C,H,W], the lips' colour [N,3]. The target is the patch's
``log(pixel / lips)``; the loss is an L1 inside the parted lips (grown by 2 px, so the
lips' inner edge is learned too) plus a least-squares patch-GAN term. Whole people are held
out and their L1 reported beside a flat-colour baseline (the mean interior colour).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from etf_models.mouth_interior import MouthDiscriminator, MouthGenerator

log = logging.getLogger(__name__)

#: only frames whose lips part at least this much (inter-ocular distances) teach the interior
MIN_GAP = 0.02


def tensors(people: dict[str, dict], names: list[str]):
    """(conditions [N,C,H,W], target log-ratio [N,3,H,W]) float32 for the named people."""
    cond, target = [], []
    for who in names:
        a = people[who]
        keep = a["gap"] >= MIN_GAP
        if not keep.any():
            continue
        cond.append(a["cond"][keep].astype(np.float32))
        p = a["patch"][keep].astype(np.float32)
        lip = a["lip"][keep].astype(np.float32)[:, None, None, :]
        target.append(np.log(np.maximum(p, 2.0) / np.maximum(lip, 4.0)).transpose(0, 3, 1, 2))
    return torch.from_numpy(np.concatenate(cond)), torch.from_numpy(np.concatenate(target))


def _weight(cond: torch.Tensor) -> torch.Tensor:
    """Where the loss looks: the parted lips grown by 2 px."""
    return F.max_pool2d(cond[:, :1], 5, 1, 2)


def _augment(cond: torch.Tensor, target: torch.Tensor, gen: torch.Generator):
    """Mirror half the batch (the x channel stays left-to-right) and tint the light: a
    gain on the lips' colour, which the log-ratio target does not see."""
    flip = torch.rand(len(cond), generator=gen) < 0.5
    cond, target = cond.clone(), target.clone()
    x = cond[0, 2].clone()
    cond[flip] = cond[flip].flip(-1)
    target[flip] = target[flip].flip(-1)
    cond[:, 2] = x
    cond[:, 5:8] += (torch.rand(len(cond), 3, 1, 1, generator=gen) - 0.5) * 0.3
    return _stretch(cond, target, gen)


#: the stretch augmentation's ranges (width, height of the opening around the mouth's centre)
STRETCH_X = (0.9, 1.3)
STRETCH_Y = (0.85, 1.35)


def _stretch(cond: torch.Tensor, target: torch.Tensor, gen: torch.Generator):
    """Stretch half the batch about the resting mouth's centre, lips and interior alike.

    Real mouths rarely open as wide as an animated one asks (a broad smile, a loud "aa"):
    without this the generator has never seen such an opening and paints it flat. The
    coordinate channels stay (they are the patch's own grid); the jaw's drop follows the
    vertical stretch."""
    from etf_models.mouth_patch import PATCH_H, STEP, Y_TOP

    n = len(cond)
    on = (torch.rand(n, generator=gen) < 0.5).float()
    sx = 1 + on * (STRETCH_X[0] + torch.rand(n, generator=gen) * (STRETCH_X[1] - STRETCH_X[0]) - 1)
    sy = 1 + on * (STRETCH_Y[0] + torch.rand(n, generator=gen) * (STRETCH_Y[1] - STRETCH_Y[0]) - 1)
    cy = 2 * (-Y_TOP / STEP) / PATCH_H - 1  # the mouth's centre, normalised
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / sx
    theta[:, 1, 1] = 1 / sy
    theta[:, 1, 2] = cy - cy / sy
    grid = F.affine_grid(theta, list(target.shape), align_corners=False)
    cond = cond.clone()
    cond[:, :2] = F.grid_sample(cond[:, :2], grid, padding_mode="border", align_corners=False)
    cond[:, 4] = cond[:, 4] * sy[:, None, None]
    target = F.grid_sample(target, grid, padding_mode="border", align_corners=False)
    return cond, target


def masked_l1(pred: torch.Tensor, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    w = _weight(cond)
    return ((pred - target).abs() * w).sum() / (3 * w.sum()).clamp_min(1.0)


def train(people: dict[str, dict], hold_out: list[str], steps: int = 3000,
          batch: int = 32, l1_weight: float = 20.0, seed: int = 0, width: int = 16):
    """Train on everyone not held out; return (generator, report)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_names = [p for p in sorted(people) if p not in hold_out]
    test_names = [p for p in sorted(people) if p in hold_out]
    cond, target = tensors(people, train_names)
    log.info("training on %d frames of %d people", len(cond), len(train_names))
    g, d = MouthGenerator(width), MouthDiscriminator()
    opt_g = torch.optim.Adam(g.parameters(), 2e-3, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), 2e-3, betas=(0.5, 0.99))
    sched = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps, 1e-4) for o in (opt_g, opt_d)]
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(cond), (batch,), generator=gen)
        c, t = _augment(cond[idx], target[idx], gen)
        m = _weight(c)
        pred = g(c)
        fake = t * (1 - m) + pred * m
        # discriminator
        gan = step >= steps // 10  # a plain L1 warm-up first
        if gan:
            opt_d.zero_grad()
            loss_d = ((d(c[:, :2], t) - 1) ** 2).mean() + (d(c[:, :2], fake.detach()) ** 2).mean()
            loss_d.backward()
            opt_d.step()
        # generator
        opt_g.zero_grad()
        l1 = masked_l1(pred, t, c)
        loss = l1_weight * l1
        if gan:
            loss = loss + ((d(c[:, :2], fake) - 1) ** 2).mean()
        loss.backward()
        opt_g.step()
        for s in sched:
            s.step()
        if step % 200 == 0:
            log.info("step %d l1 %.3f (%.0f s)", step, l1.item(), time.time() - t0)
    g.eval()
    report = {"train_people": train_names, "n_train_frames": len(cond), "steps": steps,
              "heldout": evaluate(g, people, test_names, target.mean((0, 2, 3)))}
    return g, report


@torch.no_grad()
def evaluate(g: MouthGenerator, people: dict[str, dict], names: list[str],
             flat: torch.Tensor) -> dict:
    """Per held-out person: the interior's L1 (log-ratio units) of the model and of a flat
    colour (the training frames' mean), over their open-mouth frames."""
    out = {}
    for who in names:
        c, t = tensors(people, [who])
        pred = torch.cat([g(c[i:i + 256]) for i in range(0, len(c), 256)])
        flat_pred = flat.view(1, 3, 1, 1).expand_as(t)
        out[who] = {"frames": len(c), "l1": round(float(masked_l1(pred, t, c)), 4),
                    "l1_flat_colour": round(float(masked_l1(flat_pred, t, c)), 4)}
    return out


def export_onnx(g: MouthGenerator, path) -> None:
    """The generator as ONNX (opset 17; OpenCV's DNN module and onnxruntime both run it)."""
    from etf_models.mouth_patch import N_COND, PATCH_H, PATCH_W

    g.eval()
    torch.onnx.export(g, torch.zeros(1, N_COND, PATCH_H, PATCH_W), str(path),
                      input_names=["cond"], output_names=["colour"], opset_version=17,
                      dynamo=False)
