"""Paste-back and colour conversion in torch, so a rendered frame stays on its device.

The neural engines render a canonical 256x256 crop on the GPU; ``TorchPasteBack`` maps it
into the photo there and ``rgb_to_i420`` turns the frame into the planar YUV the encoder
takes, so only the final I420 bytes cross to the host. Both run on any torch device.

``TorchPasteBack`` reproduces ``engines.render.compositor.paste_crop`` (bilinear sampling through
the enrollment similarity, reflected border, the identity's feathered face mask) up to
interpolation rounding: cv2 quantises sample positions to 1/32 px and rounds the warped
face to uint8, this module samples in float32. ``rgb_to_i420`` is bit-exact with
``cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engines.face.identity import Identity
from etf_models.canonical_face import CANON_SIZE

# OpenCV's RGB -> YUV 4:2:0 coefficients (BT.601, limited range), fixed point with 20
# fractional bits, from modules/imgproc/src/color_yuv.simd.hpp (ITUR_BT_601_C*).
_SHIFT = 20
_CY = (269484, 528482, 102760)  # 0.257, 0.504, 0.098; + 16
_CU = (-155188, -305135, 460324)  # -0.148, -0.291, 0.439; + 128
_CV = (460324, -385875, -74448)  # 0.439, -0.368, -0.071; + 128
_HALF = 1 << (_SHIFT - 1)


class TorchPasteBack:
    """Paste canonical crops back into an identity's photo on one device.

    Everything constant is prepared once: the region of interest (the photo box the
    warped face mask touches), the ``grid_sample`` grid taking each ROI pixel to the
    canonical crop, and the blend terms. Per frame there is one ``grid_sample`` over the
    ROI, one fused multiply-add and one copy of the photo.

    Attributes:
        roi: ``(x0, y0, w, h)`` in photo pixels. x0, y0, w and h are even (so the box
            falls on whole I420 chroma samples) unless the box reaches the right or
            bottom edge of a photo of odd size; ``w == h == 0`` for an empty mask.
        photo: the photo [1,3,H,W] float32 0..255 on the device.
        mask: the face mask over the ROI [1,1,h,w] float32 0..1 on the device.
        grid: the sampling grid [1,h,w,2] float32 (x, y normalised, align_corners=False).
    """

    def __init__(self, identity: Identity, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        photo = identity.photo
        H, W = photo.shape[:2]
        self.size = (H, W)
        mask = identity.photo_face_mask
        ys, xs = np.nonzero(np.any(mask > 0, axis=1)), np.nonzero(np.any(mask > 0, axis=0))
        if len(xs[0]):
            x0, y0 = int(xs[0][0]) & ~1, int(ys[0][0]) & ~1
            x1, y1 = min(W, (int(xs[0][-1]) + 2) & ~1), min(H, (int(ys[0][-1]) + 2) & ~1)
        else:
            x0 = y0 = x1 = y1 = 0
        self.roi = (x0, y0, x1 - x0, y1 - y0)

        # cv2.warpAffine samples the crop at to_canonical(x, y) for integer pixel centres;
        # with align_corners=False pixel i of n sits at normalised (2i + 1) / n - 1.
        gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float64),
                             np.arange(y0, y1, dtype=np.float64))
        A = identity.to_canonical
        sx = A[0, 0] * gx + A[0, 1] * gy + A[0, 2]
        sy = A[1, 0] * gx + A[1, 1] * gy + A[1, 2]
        grid = np.stack([(2 * sx + 1) / CANON_SIZE - 1, (2 * sy + 1) / CANON_SIZE - 1], -1)

        dev = self.device
        self.photo = torch.from_numpy(photo).to(dev).permute(2, 0, 1)[None].float().contiguous()
        self.grid = torch.from_numpy(grid[None].astype(np.float32)).to(dev)
        self.mask = torch.from_numpy(np.ascontiguousarray(mask[y0:y1, x0:x1])).to(dev)[None, None]
        # out = photo + m * (face - photo) with face = 127.5 * (crop + 1), rearranged to
        # out = base + gain * sampled so that per frame it is a single addcmul.
        roi_photo = self.photo[:, :, y0:y1, x0:x1]
        self._gain = 127.5 * self.mask
        self._base = (roi_photo * (1 - self.mask) + self._gain).contiguous()

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Paste a batch of crops into the photo.

        Args:
            crops: canonical crops [B,3,256,256] RGB in -1..1, any float dtype, on the
                device (fp16 is upcast: the blend runs in float32).
            out: optional [B,3,H,W] float32 buffer on the device to write into (saves
                an allocation per frame); it is overwritten entirely.

        Returns:
            Frames [B,3,H,W] float32 RGB, 0..255 where the crops are within -1..1 (values
            are not clamped; ``rgb_to_i420`` clamps). Outside the face mask it is exactly
            the photo.
        """
        B = crops.shape[0]
        H, W = self.size
        if out is None:
            out = torch.empty((B, 3, H, W), dtype=torch.float32, device=self.device)
        out.copy_(self.photo.expand(B, -1, -1, -1))
        x0, y0, w, h = self.roi
        if w == 0 or h == 0 or B == 0:
            return out
        # Folding the batch into channels lets all crops share the one [1,h,w,2] grid.
        src = crops.to(device=self.device, dtype=torch.float32)
        src = src.reshape(1, B * 3, CANON_SIZE, CANON_SIZE)
        face = F.grid_sample(src, self.grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False).view(B, 3, h, w)
        torch.addcmul(self._base, self._gain, face, out=out[:, :, y0 : y0 + h, x0 : x0 + w])
        return out


@torch.no_grad()
def rgb_to_i420(frames: torch.Tensor) -> torch.Tensor:
    """RGB frames to planar I420, byte-for-byte as ``cv2.COLOR_RGB2YUV_I420``.

    OpenCV's conversion: BT.601 limited range (Y 16..235, U/V 16..240) in 20-bit fixed
    point with round-half-up, and chroma taken from the top-left pixel of each 2x2 block
    (point-sampled, not averaged). The same integer arithmetic is done here in int32, so
    the result is identical on every device.

    Args:
        frames: [B,3,H,W] RGB, uint8 or float 0..255 (float is rounded half up and
            clamped to 0..255 first, as ``np.clip(x + 0.5, 0, 255).astype(np.uint8)``);
            H and W must be even.

    Returns:
        [B, H*3//2, W] uint8: the Y plane (H rows), then U (H/2 x W/2) and V (H/2 x W/2),
        each packed row-major into rows of width W; ``out[i].cpu().numpy()`` is what
        ``cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)`` returns for frame i.
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [B,3,H,W], got {tuple(frames.shape)}")
    B, _, H, W = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"I420 needs even width and height, got {W}x{H}")
    if frames.dtype == torch.uint8:
        rgb = frames.to(torch.int32)
    else:
        rgb = (frames.float() + 0.5).floor_().clamp_(0, 255).to(torch.int32)

    def plane(x: torch.Tensor, c: tuple[int, int, int], offset: int) -> torch.Tensor:
        acc = x[:, 0] * c[0]
        acc.add_(x[:, 1] * c[1]).add_(x[:, 2] * c[2]).add_((offset << _SHIFT) + _HALF)
        return acc.bitwise_right_shift_(_SHIFT).clamp_(0, 255).to(torch.uint8)

    n = H * W
    out = torch.empty((B, n * 3 // 2), dtype=torch.uint8, device=frames.device)
    out[:, :n] = plane(rgb, _CY, 16).view(B, n)
    sub = rgb[:, :, ::2, ::2]
    out[:, n : n + n // 4] = plane(sub, _CU, 128).reshape(B, n // 4)
    out[:, n + n // 4 :] = plane(sub, _CV, 128).reshape(B, n // 4)
    return out.view(B, H * 3 // 2, W)
