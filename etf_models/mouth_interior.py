"""The learned mouth interior: a small conditional generator and its patch discriminator.

``MouthGenerator``: conditioning channels [B, N_COND, 48, 64] (:mod:`etf_models.mouth_patch`:
where the lips part, the lips' extent, patch coordinates, the jaw's drop, the lips' colour)
-> the interior's colour as ``log(pixel / lips)`` [B, 3, 48, 64]. A three-level U-Net small
enough to run in ~1 ms a frame on one CPU core (OpenCV's DNN module runs its ONNX export).

``MouthDiscriminator``: a PatchGAN that sees where the lips part and the patch (real, or
the generator's interior inside the real lips) and scores each ~16 px window real or not,
so the generator draws definite teeth and tongue rather than the blur an L1 loss alone
settles on where the teeth's place is ambiguous.
"""

from __future__ import annotations

import torch
from torch import nn

from etf_models.mouth_patch import N_COND


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2))


class MouthGenerator(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.config = {"width": width}
        self.enc1 = nn.Sequential(_block(N_COND, w), _block(w, w))
        self.enc2 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.mid = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w),
                                 _block(4 * w, 4 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Sequential(_block(6 * w, 2 * w), _block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_block(3 * w, w), _block(w, w))
        self.out = nn.Conv2d(w, 3, 1)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(cond)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = self.dec2(torch.cat([self.up(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.out(d1)


class MouthDiscriminator(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(2 + 3, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 1, 3, 1, 1),
        )

    def forward(self, masks: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([masks, colour], 1))
