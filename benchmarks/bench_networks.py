"""Parameters, per-frame FLOPs and CPU latency of the per-frame graphs of G_L and G_T.

At the paper's sizes (256x256 crops, the paper's channel widths; random weights, which
cost the same as trained ones), batch 1:

- parameters of the whole network and of its per-frame part;
- FLOPs of one per-frame call (``torch.utils.flop_counter``: multiply-adds count 2);
- CPU latency of the per-frame call in PyTorch (eager) and in ONNX Runtime, p50/p99 over
  ``--runs`` calls after a warm-up, with ``--threads`` threads;
- the time of the identity-only part (computed once per identity).

    python benchmarks/bench_networks.py            # -> benchmarks/results/networks_cpu.json

Timings on a shared machine are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402


def _times(fn, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.percentile(ts, 50)), 3),
            "p99_ms": round(float(np.percentile(ts, 99)), 3), "runs": runs}


def _flops(module, inputs, seq_len: int) -> int:
    """FLOPs of one call; torch's counter skips fused LSTMs, so those are added by hand
    (2 x 4H x (I + H) per step and layer, over ``seq_len`` steps)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(*inputs)
    lstm = 0
    for m in module.modules():
        if isinstance(m, torch.nn.LSTM):
            for layer in range(m.num_layers):
                n_in = m.input_size if layer == 0 else m.hidden_size
                lstm += 2 * seq_len * 4 * m.hidden_size * (n_in + m.hidden_size)
    return int(fc.get_total_flops()) + lstm


def measure(name: str, whole, per_frame, inputs: dict, prepare, runs: int, onnx_bytes) -> dict:
    import onnxruntime as ort
    import torch

    args = tuple(inputs.values())
    n_whole = sum(p.numel() for p in whole.parameters())
    with torch.no_grad():
        torch_t = _times(lambda: per_frame(*args), runs)
    prep_t = _times(prepare, max(3, runs // 10), warmup=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in inputs.items()}
    ort_t = _times(lambda: sess.run(None, feed), runs)
    return {"network": name, "parameters": n_whole,
            "per_frame_flops": _flops(per_frame, args, seq_len=6), "pytorch_cpu": torch_t,
            "onnxruntime_cpu": ort_t, "identity_part": prep_t,
            "onnx_bytes": len(onnx_bytes)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "networks_cpu.json"))
    args = p.parse_args(argv)
    import onnxruntime
    import torch

    from engines.face.default_face import default_identity
    from etf_models.export import export_gl, export_gt, gl_example, gt_example
    from etf_models.landmark_gcn import LandmarkGCN, PerFrameGL, face_graph
    from etf_models.texture_flow import PerFrameGT, TextureFlow

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gl = LandmarkGCN(face_graph(default_identity().neutral)).eval()
    gt = TextureFlow().eval()
    gl_in, gt_in = gl_example(gl), gt_example(gt)
    src = torch.rand(1, 3, 256, 256) * 2 - 1

    def gl_prepare():
        with torch.no_grad():
            gl.encode_identity(gl_in["neutral"])

    def gt_prepare():
        with torch.no_grad():
            gt.prepare(src, gt_in["landmarks"])

    results = [measure("G_L", gl, PerFrameGL(gl).eval(), gl_in, gl_prepare, args.runs,
                       export_gl(gl)),
               measure("G_T", gt, PerFrameGT(gt).eval(), gt_in, gt_prepare,
                       max(5, args.runs // 3), export_gt(gt))]
    out = {"benchmark": "bench_networks", "date": time.strftime("%Y-%m-%d"),
           "machine": machine_info(threads=args.threads, torch=torch.__version__,
                                   onnxruntime=onnxruntime.__version__),
           "input": "256x256 crop, paper channel widths, batch 1, random weights",
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1))
    for r in results:
        print(f"{r['network']}: {r['parameters'] / 1e6:.2f} M parameters, "
              f"{r['per_frame_flops'] / 1e9:.3f} GFLOPs per frame; CPU p50 "
              f"PyTorch {r['pytorch_cpu']['p50_ms']:.1f} ms, ONNX Runtime "
              f"{r['onnxruntime_cpu']['p50_ms']:.1f} ms (p99 {r['pytorch_cpu']['p99_ms']:.1f} / "
              f"{r['onnxruntime_cpu']['p99_ms']:.1f}); identity part "
              f"{r['identity_part']['p50_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
