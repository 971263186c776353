"""ONNX export of the per-frame graphs of G_L and G_T (the identity parts stay in PyTorch).

The per-frame graphs take what changes every frame plus the identity's cached tensors:

- G_L: ``windows [B,6,29], emotion [B,7], intensity [B], neutral [B,68,2], code [B,d],
  vert [B,68,V], reg [B,8,R] -> landmarks [B,68,2]``;
- G_T: ``landmarks [B,68,2], emotion [B,7], intensity [B], s1, s2, s3, source_heat, style
  -> image [B,3,256,256]`` (-1..1).

The batch axis is dynamic, so one engine serves any number of sessions per call. The live
engines export the shared-identity form instead (``engines/backends.PerFrameGraph.onnx``):
only the per-frame inputs have the batch axis, the identity tensors have batch 1 and are
broadcast inside the graph (one face per server: bound once, never copied per frame).
``check_onnx`` runs the file in ONNX Runtime against PyTorch and returns the largest
absolute difference (the tests and ``etf export`` require <= 1e-3 in fp32).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch

from etf_models.landmark_gcn import LandmarkGCN, PerFrameGL
from etf_models.texture_flow import PerFrameGT, TextureFlow

GL_FRAME_INPUTS = ("windows", "emotion", "intensity")
GL_IDENTITY_INPUTS = ("neutral", "code", "vert", "reg")
GT_FRAME_INPUTS = ("landmarks", "emotion", "intensity")
GT_IDENTITY_INPUTS = ("s1", "s2", "s3", "source_heat", "style")
OPSET = 17


def gl_example(gl: LandmarkGCN, batch: int = 1, seed: int = 0,
               shared_identity: bool = False) -> dict[str, torch.Tensor]:
    """Plausible per-frame inputs for G_L (the identity tensors computed by the model; batch
    1 with ``shared_identity``)."""
    g = torch.Generator().manual_seed(seed)
    cfg = gl.config
    ib = 1 if shared_identity else batch
    neutral = 128.0 + 40.0 * torch.randn(ib, cfg.n_points, 2, generator=g).clamp(-2, 2)
    with torch.no_grad():
        code, vert, reg = gl.encode_identity(neutral)
    return {"windows": torch.randn(batch, cfg.window, cfg.n_chars, generator=g),
            "emotion": torch.eye(7)[torch.randint(0, 7, (batch,), generator=g)],
            "intensity": torch.rand(batch, generator=g), "neutral": neutral,
            "code": code, "vert": vert, "reg": reg}


def gt_example(gt: TextureFlow, batch: int = 1, seed: int = 0,
               shared_identity: bool = False) -> dict[str, torch.Tensor]:
    """Plausible per-frame inputs for G_T (a random source image and face; identity tensors
    of batch 1 with ``shared_identity``)."""
    g = torch.Generator().manual_seed(seed)
    cfg = gt.config
    ib = 1 if shared_identity else batch
    src = torch.rand(ib, 3, cfg.size, cfg.size, generator=g) * 2 - 1
    src_lm = 128.0 + 40.0 * torch.randn(ib, cfg.n_points, 2, generator=g).clamp(-2, 2)
    with torch.no_grad():
        s1, s2, s3, heat, style = gt.prepare(src, src_lm)
    moved = src_lm.expand(batch, -1, -1) + 3 * torch.randn(batch, cfg.n_points, 2, generator=g)
    return {"landmarks": moved,
            "emotion": torch.eye(7)[torch.randint(0, 7, (batch,), generator=g)],
            "intensity": torch.rand(batch, generator=g), "s1": s1, "s2": s2, "s3": s3,
            "source_heat": heat, "style": style}


def export_module(module: torch.nn.Module, inputs: dict[str, torch.Tensor], output: str,
                  path: str | os.PathLike | None = None,
                  batch_inputs: tuple[str, ...] | None = None) -> bytes:
    """ONNX bytes (and the file at ``path``) of ``module`` traced on ``inputs``; the inputs
    named in ``batch_inputs`` (default: all) and the output get a dynamic batch axis."""
    buf = io.BytesIO()
    names = list(inputs)
    dynamic = names if batch_inputs is None else list(batch_inputs)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(inputs.values()), buf, input_names=names,
                          output_names=[output], dynamo=False, opset_version=OPSET,
                          dynamic_axes={n: {0: "batch"} for n in [*dynamic, output]})
    data = buf.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def export_gl(gl: LandmarkGCN, path: str | os.PathLike | None = None) -> bytes:
    return export_module(PerFrameGL(gl), gl_example(gl), "landmarks", path)


def export_gt(gt: TextureFlow, path: str | os.PathLike | None = None) -> bytes:
    return export_module(PerFrameGT(gt), gt_example(gt), "image", path)


def check_onnx(model: bytes, module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |ONNX Runtime - PyTorch| on ``inputs`` (fp32, CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    with torch.no_grad():
        want = module.eval()(*inputs.values()).numpy()
    return float(np.abs(got - want).max())
