"""Benchmark suite of the fast engines: latency, build time, sessions per device, adaptation.

One command, on the CPU or a GPU, over the device step that serves live frames
(``engines.neural.live.NeuralFrameStep``: upload -> G_L -> blinks -> G_T -> paste-back ->
I420 -> download, for the default face at its served size):

1. per backend x batch size: latency p50/p99 of each stage and of the whole step, and
   frames/s = batch / step p50 (backends that cannot run here are skipped, with the
   reason). The headline is the per-frame latency at batch 1;
2. engine build time per backend (``activate``), and the first step's time (torch.compile,
   CUDA graph capture, a TensorRT build or cache load happen there);
3. sessions per device at 25 and 30 fps: N simulated sessions submit one frame per period
   on the shared tick grid to a ``BatchWorker`` running the step; the largest N whose p99
   compute latency (submit -> result) stays below the frame period (doubling, then
   bisection, up to ``--max-sessions``);
4. one-shot adaptation time (5 iterations on the default face's crop).

    python -m benchmarks.bench_engines --device cpu            # torch, ort
    python -m benchmarks.bench_engines --device cuda           # cuda, cuda-fp16, +graphs, tensorrt
    python -m benchmarks.bench_engines --quick --channels tiny -o /tmp/e.json

Without ``--weights`` the networks have random weights (they cost the same as trained
ones): G_L at the paper's configuration, G_T at ``--channels`` (paper: the paper's widths).
Writes JSON and a PNG with the same stem. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402

CHANNELS = {  # G_T widths: (image encoder, motion network)
    "paper": None,  # TextureFlowConfig's defaults
    "small": ((32, 64, 128), (128, 256, 256)),
    "tiny": ((8, 12, 16), (16, 24, 32)),
}
DEFAULT_BACKENDS = {"cpu": "torch,ort", "cuda": "cuda,cuda-fp16,cuda-fp16+graphs,tensorrt"}
DEFAULT_BATCHES = {"cpu": "1,2,4", "cuda": "1,2,4,8,16,32"}
FPS = (25, 30)
TARGET_MS = 3.0  # per-frame compute at batch 1 on an H100 (the target)
PHOTO_SIDE = 512  # the served photo size (engines.face.identity.Identity.for_video)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _q(times_s: list[float]) -> dict:
    from engines.latency import quantiles_ms

    return {**quantiles_ms(times_s), "n": len(times_s)}


# ----- setup -----------------------------------------------------------------------------


def load_networks(weights: str | None, channels: str):
    """(G_L, G_T) in eval mode on the CPU: trained from ``weights`` or random."""
    import torch

    from etf_models.landmark_gcn import LandmarkGCN, face_graph
    from etf_models.texture_flow import TextureFlow, TextureFlowConfig

    if weights:
        from engines.neural.networks import LANDMARKS_FILE, TEXTURE_FILE, weights_file
        from etf_models.landmark_train import load_landmark_model
        from etf_models.texture_train import load_texture_model

        gl = load_landmark_model(weights_file(weights, LANDMARKS_FILE, "bench_engines",
                                              "etf train landmarks"))
        gt = load_texture_model(weights_file(weights, TEXTURE_FILE, "bench_engines",
                                             "etf train texture"))
        return gl.eval(), gt.eval()
    from engines.face.default_face import default_identity

    torch.manual_seed(0)
    gl = LandmarkGCN(face_graph(default_identity().neutral))
    widths = CHANNELS[channels]
    cfg = TextureFlowConfig() if widths is None else TextureFlowConfig(enc=widths[0],
                                                                       motion=widths[1])
    return gl.eval(), TextureFlow(cfg).eval()


class Setup:
    """The served identity, its tensors for both networks, and random frame inputs."""

    def __init__(self, gl, gt, pool: int = 64, seed: int = 0) -> None:
        from engines.face.default_face import default_identity
        from engines.neural.live import FrameInputs
        from engines.neural.networks import gl_identity_inputs, gt_identity_inputs

        self.gl, self.gt = gl, gt
        self.identity = default_identity().for_video(PHOTO_SIDE)
        self.gl_identity = gl_identity_inputs(gl, self.identity)
        self.gt_identity = gt_identity_inputs(gt, self.identity)
        rng = np.random.default_rng(seed)
        self.frames = [FrameInputs(rng.standard_normal((6, 29)).astype(np.float32),
                                   rng.dirichlet(np.ones(7)).astype(np.float32),
                                   float(rng.choice([0.0, 0.0, 0.0, rng.uniform()])))
                       for _ in range(pool)]

    def batch(self, n: int, offset: int = 0) -> list:
        return [self.frames[(offset + i) % len(self.frames)] for i in range(n)]


class Engine:
    """Both backends of one spec, activated and bound, and the device step over them."""

    def __init__(self, setup: Setup, spec: str, max_batch: int) -> None:
        from engines.neural.backends import gl_graph, gt_graph, make_backend
        from engines.neural.live import NeuralFrameStep

        self.spec = spec
        # Fresh graphs per backend, so each build pays for its own ONNX export.
        self.gl = make_backend(gl_graph(setup.gl), spec, max_batch=max_batch)
        self.gt = make_backend(gt_graph(setup.gt), spec, max_batch=max_batch)
        self.build = {}
        try:
            for name, backend, tensors in (("gl", self.gl, setup.gl_identity),
                                           ("gt", self.gt, setup.gt_identity)):
                backend.activate()
                backend.bind(tensors)
                self.build[f"{name}_build_s"] = round(backend.build_s, 3)
                if getattr(backend, "cache_hit", None) is not None:
                    self.build[f"{name}_cache_hit"] = backend.cache_hit
        except BaseException:
            self.close()
            raise
        self.step = NeuralFrameStep(self.gl, self.gt, setup.identity)
        self.cuda = self.step.device.type == "cuda"

    def close(self) -> None:
        for b in (self.gl, self.gt):
            try:
                b.deactivate()
            except Exception:  # never activated
                pass
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----- 1 and 2: latency per backend and batch, build time ----------------------------------


def measure_cell(engine: Engine, setup: Setup, batch: int, budget_s: float, min_iters: int,
                 warmup: int, max_iters: int = 5000) -> dict:
    """Stage and step latency of one batch size. On a GPU per-stage timing synchronises
    after every stage, so timed and untimed (the serving path) steps alternate and the
    step's latency comes from the untimed ones."""
    from engines.latency import LatencyRing
    from engines.neural.live import STEP_STAGES

    step, frames = engine.step, setup.batch(batch)
    t = time.perf_counter()
    step(frames)
    first_s = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        step(frames)
    step.latency = {s: LatencyRing(max_iters) for s in STEP_STAGES}
    times: list[float] = []
    end = time.perf_counter() + budget_s
    i = 0
    while len(times) < max_iters and (time.perf_counter() < end or len(times) < min_iters
                                      or step.latency["download"].count < min_iters):
        timed = not engine.cuda or i % 2 == 0
        t = time.perf_counter()
        step(frames, timed=timed)
        if not (engine.cuda and timed):
            times.append(time.perf_counter() - t)
        i += 1
    q = _q(times)
    return {"batch": batch, "first_step_s": round(first_s, 3), "iterations": len(times),
            "stages_ms": {s: step.latency[s].quantiles_ms() for s in STEP_STAGES},
            "step_ms": q, "frames_per_s": round(batch / (q["p50"] / 1e3), 2)}


def measure_backend(setup: Setup, spec: str, batches: list[int], budget_s: float,
                    min_iters: int, warmup: int) -> dict:
    """Build time and one cell per batch size; ``{"skipped": reason}`` if it cannot run."""
    from engines.neural.backends import BackendUnavailable

    log(f"[{spec}] building")
    try:
        engine = Engine(setup, spec, max(batches))
    except BackendUnavailable as e:
        log(f"[{spec}] skipped: {e}")
        return {"skipped": str(e)}
    except Exception as e:  # a failed build (compile, TensorRT parse) is a result too
        log(f"[{spec}] failed to build: {e!r}")
        return {"skipped": f"build failed: {e!r}"}
    out = {"build": dict(engine.build), "cells": []}
    try:
        for b in batches:
            try:
                cell = measure_cell(engine, setup, b, budget_s, min_iters, warmup)
            except Exception as e:  # e.g. out of GPU memory at a large batch: record, go on
                log(f"[{spec}] batch {b} failed: {e!r}")
                out["cells"].append({"batch": b, "error": repr(e)})
                continue
            if b == batches[0]:  # includes graph capture / compile for this batch size
                out["build"]["first_step_s"] = cell["first_step_s"]
            out["cells"].append(cell)
            log(f"[{spec}] batch {b}: step p50 {cell['step_ms']['p50']:.2f} ms, p99 "
                f"{cell['step_ms']['p99']:.2f} ms, {cell['frames_per_s']:.1f} frames/s "
                f"({cell['iterations']} steps)")
    finally:
        engine.close()
    return out


# ----- 3: sessions per device -------------------------------------------------------------


def sessions_trial(engine: Engine, setup: Setup, n: int, fps: float, max_batch: int,
                   window_s: float, warm_s: float) -> dict:
    """N sessions ticking together for ``warm_s + window_s``; p50/p99 of the compute
    latency of the frames after the warm-up. A trial stops early once more than 1% of its
    frames are over the period (its p99 cannot pass); frames still unanswered when the
    worker has stopped count with the time they had waited (a lower bound) and as
    ``late``."""
    from engines.neural.batching import BatchWorker, aligned_start

    period = 1.0 / fps
    cap = min(n, max_batch)
    if engine.cuda:  # capture / compile every batch size the worker may form, up front
        for b in range(1, cap + 1):
            engine.step(setup.batch(b))
    worker = BatchWorker(engine.step, max_batch=cap, capacity=n)
    n_warm = round(warm_s * fps)
    n_frames = n_warm + max(1, round(window_s * fps))
    allowed = math.floor(0.01 * n * (n_frames - n_warm))
    jobs: list[list] = [[] for _ in range(n)]  # per session: [submit_t, done_t | None]
    stop = threading.Event()
    for s in range(n):
        worker.open(s)
    start = aligned_start(time.perf_counter() + 0.05, period)

    def session(s: int) -> None:
        for k in range(n_frames):
            delay = start + k * period - time.perf_counter()
            if (stop.wait(delay) if delay > 0 else stop.is_set()):
                return
            rec = [time.perf_counter(), None]
            fut = worker.submit(s, setup.frames[(s * 7 + k) % len(setup.frames)])
            fut.add_done_callback(lambda f, rec=rec: rec.__setitem__(1, time.perf_counter())
                                  if not f.cancelled() else None)
            if k >= n_warm:
                jobs[s].append(rec)

    def over(now: float) -> int:
        return sum(1 for js in jobs for sub, done in list(js)
                   if (done if done is not None else now) - sub > period)

    threads = [threading.Thread(target=session, args=(s,), daemon=True) for s in range(n)]
    for t in threads:
        t.start()
    aborted = False
    while any(t.is_alive() for t in threads):
        time.sleep(0.1)
        if over(time.perf_counter()) > allowed:
            aborted = True
            stop.set()
    for t in threads:
        t.join()
    if not aborted:  # let the last frames finish (a little longer than a frame can take)
        deadline = time.perf_counter() + max(0.5, 5 * period)
        while (time.perf_counter() < deadline
               and any(done is None for js in jobs for _, done in js)):
            time.sleep(0.005)
    worker.stop()  # cancels the frames still queued; the batch in flight completes
    now = time.perf_counter()
    stats = worker.stats()
    recs = [r for js in jobs for r in js]
    lat = [(done if done is not None else now) - sub for sub, done in recs]
    late = sum(1 for _, done in recs if done is None)
    q = _q(lat) if lat else {"p50": None, "p99": None, "max": None, "n": 0}
    ok = bool(lat) and not aborted and q["p99"] < period * 1e3
    return {"sessions": n, "ok": ok, "aborted": aborted, "frames": len(lat), "late": late,
            "latency_ms": q, "mean_batch": stats["mean_batch"], "max_batch": cap}


def sessions_search(engine: Engine, setup: Setup, fps: float, max_sessions: int,
                    max_batch: int, window_s: float, warm_s: float) -> dict:
    """The largest N <= max_sessions that passes (doubling, then bisection)."""
    tried: dict[int, dict] = {}

    def passes(n: int) -> bool:
        r = sessions_trial(engine, setup, n, fps, max_batch, window_s, warm_s)
        tried[n] = r
        p99 = r["latency_ms"]["p99"]
        log(f"[sessions {fps:g} fps] N={n}: p99 {p99 if p99 is None else round(p99, 2)} ms "
            f"of {1e3 / fps:.1f}, mean batch {r['mean_batch']}, {r['late']} of {r['frames']} "
            "unanswered"
            f"{', aborted' if r['aborted'] else ''} -> {'ok' if r['ok'] else 'over'}")
        return r["ok"]

    lo, hi, n = 0, None, 1
    while n <= max_sessions:
        if not passes(n):
            hi = n
            break
        lo = n
        if n == max_sessions:
            break
        n = min(2 * n, max_sessions)
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return {"fps": fps, "period_ms": round(1e3 / fps, 3), "sessions": lo,
            "capped": lo == max_sessions, "tried": [tried[k] for k in sorted(tried)]}


# ----- 4: one-shot adaptation -------------------------------------------------------------


def measure_adaptation(gt, setup: Setup, device: str, iterations: int = 5) -> dict:
    """adapt() on a copy of G_T on ``device`` (falls back to the CPU, saying why, if it
    cannot run there)."""
    import torch

    from etf_models.texture_train import adapt

    def run(dev: str) -> dict:
        model = copy.deepcopy(gt).to(dev)
        with torch.device(dev):
            t = time.perf_counter()
            report = adapt(model, setup.identity.crop, setup.identity.neutral, iterations)
            if dev == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - t
        return {"device": dev, "iterations": iterations, "seconds": report["seconds"],
                "wall_s": round(wall, 3), "l1_before": round(report["l1_before"], 5),
                "l1_after": round(report["l1_after"], 5)}

    log(f"[adapt] {iterations} iterations on {device}")
    try:
        return run(device)
    except Exception as e:
        if device == "cpu":
            raise
        log(f"[adapt] failed on {device} ({e!r}); measuring on the CPU instead")
        return {**run("cpu"), "device_error": f"{device}: {e!r}"}


# ----- the plot ---------------------------------------------------------------------------

_COLOURS = [(200, 120, 40), (40, 40, 200), (40, 160, 40), (160, 40, 160), (0, 140, 220),
            (120, 120, 0), (90, 90, 90)]  # BGR


def _ticks(lo: float, hi: float, log_scale: bool) -> list[float]:
    if log_scale:
        out = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)),
                                            math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
        return [t for t in out if lo <= t <= hi]
    step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    return [float(t) for t in np.arange(math.ceil(lo / step) * step, hi + step / 2, step)
            if t <= hi]


def _panel(img: np.ndarray, box: tuple[int, int, int, int], title: str, xlabel: str,
           series: list[dict], hlines: tuple = ()) -> None:
    """A line plot with log2 x and (when the values span more than 20x) log10 y axes.
    ``series``: {label, colour, xs, ys, thick, ok (per-point: filled green / red)}."""
    import cv2

    x0, y0, w, h = box
    left, right, top, bottom = x0 + 62, x0 + w - 10, y0 + 24, y0 + h - 40
    pts = [(x, y) for s in series for x, y in zip(s["xs"], s["ys"], strict=True)
           if y is not None and y > 0]
    if not pts:
        cv2.putText(img, title, (x0 + 8, y0 + 16), 0, 0.46, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, "no data", (left + 20, (top + bottom) // 2), 0, 0.6, (0, 0, 0), 1)
        return
    xs = sorted({x for x, _ in pts})
    ys = [y for _, y in pts] + [v for v, _ in hlines]
    ylo, yhi = min(ys), max(ys)
    logy = yhi / ylo > 20
    cv2.putText(img, title + ("  [ms, log scale]" if logy else "  [ms]"), (x0 + 8, y0 + 16), 0,
                0.46, (0, 0, 0), 1, cv2.LINE_AA)
    if logy:
        ylo, yhi = ylo / 1.3, yhi * 1.3
    else:
        pad = (yhi - ylo) * 0.1 or yhi * 0.1
        ylo, yhi = max(0.0, ylo - pad), yhi + pad
    xlo, xhi = math.log2(xs[0]) - 0.3, math.log2(xs[-1]) + 0.3

    def px(x: float, y: float) -> tuple[int, int]:
        fx = (math.log2(x) - xlo) / (xhi - xlo)
        fy = ((math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) if logy
              else (y - ylo) / (yhi - ylo))
        return int(left + fx * (right - left)), int(bottom - fy * (bottom - top))

    cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
    for t in _ticks(ylo, yhi, logy):
        _, py = px(xs[0], t)
        cv2.line(img, (left, py), (right, py), (225, 225, 225), 1)
        label = f"{t:g}"
        (tw, _), _ = cv2.getTextSize(label, 0, 0.38, 1)
        cv2.putText(img, label, (left - 6 - tw, py + 4), 0, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for x in xs:
        ppx, _ = px(x, ylo)
        cv2.putText(img, f"{x:g}", (ppx - 6, bottom + 15), 0, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, ((left + right) // 2 - 20, bottom + 33), 0, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    for value, label in hlines:
        _, py = px(xs[0], value)
        for a in range(left, right, 12):
            cv2.line(img, (a, py), (min(a + 6, right), py), (0, 0, 200), 1)
        cv2.putText(img, label, (right - 110, py - 4), 0, 0.38, (0, 0, 200), 1, cv2.LINE_AA)
    ly = top + 14
    for s in series:
        keep = sorted((x, y, k) for k, (x, y) in enumerate(zip(s["xs"], s["ys"], strict=True))
                      if y is not None and y > 0)
        p = [px(x, y) for x, y, _ in keep]
        oks = None if s.get("ok") is None else [s["ok"][k] for _, _, k in keep]
        for a, b in zip(p, p[1:], strict=False):
            cv2.line(img, a, b, s["colour"], s.get("thick", 2), cv2.LINE_AA)
        for i, c in enumerate(p):
            colour = s["colour"] if oks is None else ((40, 160, 40) if oks[i] else (0, 0, 220))
            cv2.circle(img, c, 4, colour, -1 if s.get("thick", 2) > 1 else 1, cv2.LINE_AA)
        cv2.putText(img, s["label"], (left + 8, ly), 0, 0.4, s["colour"], 1, cv2.LINE_AA)
        ly += 15


def plot(result: dict, path: Path) -> None:
    """Latency vs batch per backend; p99 vs sessions per fps (with the period line)."""
    import cv2

    res = result["results"]
    w, h = 1320, 470
    img = np.full((h, w, 3), 255, np.uint8)
    cfg = result["config"]
    gpu = (result["machine"].get("gpu") or {}).get("name") or result["machine"]["cpu"]
    cv2.putText(img, f"bench_engines on {result['device']} ({gpu}); G_T channels "
                f"{cfg['channels']}, weights {cfg['weights']}", (8, 20), 0, 0.55,
                (0, 0, 0), 1, cv2.LINE_AA)
    series = []
    for i, (spec, r) in enumerate(res["backends"].items()):
        cells = [c for c in r.get("cells", []) if "step_ms" in c]
        if not cells:
            continue
        colour = _COLOURS[i % len(_COLOURS)]
        xs = [c["batch"] for c in cells]
        series.append({"label": f"{spec} p50 (thick) / p99", "colour": colour, "xs": xs,
                       "ys": [c["step_ms"]["p50"] for c in cells]})
        series.append({"label": "", "colour": colour, "xs": xs, "thick": 1,
                       "ys": [c["step_ms"]["p99"] for c in cells]})
    _panel(img, (0, 30, 560, h - 30), "device step latency per batch (not per frame)",
           "batch", series)
    for k, s in enumerate(res["sessions"].get("searches", [])):
        tried = s["tried"]
        xs = [t["sessions"] for t in tried]
        early = "; stopped early: lower bounds" if any(t["aborted"] for t in tried) else ""
        p99 = {"label": f"p99 (green ok, red over){early}", "colour": (200, 120, 40), "xs": xs,
               "ys": [t["latency_ms"]["p99"] for t in tried], "ok": [t["ok"] for t in tried]}
        p50 = {"label": "p50", "colour": (150, 150, 150), "xs": xs, "thick": 1,
               "ys": [t["latency_ms"]["p50"] for t in tried]}
        _panel(img, (560 + k * 380, 30, 380, h - 30),
               f"{s['fps']:g} fps ({res['sessions']['backend']}): {s['sessions']} sessions",
               "sessions", [p99, p50],
               hlines=((s["period_ms"], f"period {s['period_ms']:.1f} ms"),))
    cv2.imwrite(str(path), img)


# ----- main ---------------------------------------------------------------------------------


def summary_table(result: dict) -> str:
    from engines.neural.live import STEP_STAGES

    head = (f"{'backend':<20} {'batch':>5} " + " ".join(f"{s[:8]:>8}" for s in STEP_STAGES)
            + f" {'step p50':>9} {'step p99':>9} {'frames/s':>9}")
    lines = [head, "-" * len(head)]
    for spec, r in result["results"]["backends"].items():
        if "skipped" in r:
            lines.append(f"{spec:<20} skipped: {r['skipped'][:90]}")
            continue
        b = r["build"]
        lines.append(f"{spec:<20} build: G_L {b['gl_build_s']:.2f} s, G_T {b['gt_build_s']:.2f} s, "
                     f"first step {b.get('first_step_s', float('nan')):.2f} s")
        for c in r["cells"]:
            if "error" in c:
                lines.append(f"{spec:<20} {c['batch']:>5} error: {c['error'][:80]}")
                continue
            st = " ".join(f"{c['stages_ms'][s]['p50']:>8.2f}" for s in STEP_STAGES)
            lines.append(f"{spec:<20} {c['batch']:>5} {st} {c['step_ms']['p50']:>9.2f} "
                         f"{c['step_ms']['p99']:>9.2f} {c['frames_per_s']:>9.1f}")
    lines.append("(stage columns: p50 ms of the timed steps; step: untimed steps on a GPU)")
    head = result["results"]["headline"]
    if head:
        lines.append(f"headline: {head['backend']} batch 1: {head['per_frame_ms']:.2f} ms p50, "
                     f"{head['per_frame_p99_ms']:.2f} ms p99 (target <= {TARGET_MS:g} ms on "
                     "an H100)")
    for s in result["results"]["sessions"].get("searches", []):
        lines.append(f"sessions at {s['fps']:g} fps: {s['sessions']}"
                     f"{' (capped)' if s['capped'] else ''}")
    a = result["results"]["adaptation"]
    lines.append(f"one-shot adaptation ({a['iterations']} iterations, {a['device']}): "
                 f"{a['seconds']:.2f} s")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--backends", help="comma-separated backend specs (engines/neural/backends.py); "
                   "default: torch,ort on cpu, cuda,cuda-fp16,cuda-fp16+graphs,tensorrt on cuda")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,2,4 on cpu, "
                   "1,2,4,8,16,32 on cuda)")
    p.add_argument("--channels", choices=tuple(CHANNELS), default="paper",
                   help="G_T widths with random weights (ignored with --weights)")
    p.add_argument("--weights", help="folder with landmarks.pt and texture.pt (default: "
                   "random weights)")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--sessions-backend", help="backend for the sessions search (default: "
                   "the one with the most frames/s)")
    p.add_argument("--budget-s", type=float, help="timing budget per backend x batch cell "
                   "(default 3, --quick 0.3)")
    p.add_argument("--quick", action="store_true", help="short budgets (smoke runs)")
    p.add_argument("-o", "--out", help="JSON path (default "
                   "benchmarks/results/engines_<device>.json); the PNG goes next to it")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (torch "
                f"{torch.__version__}); use --device cpu")
    specs = [s.strip() for s in (args.backends or DEFAULT_BACKENDS[args.device]).split(",")
             if s.strip()]
    batches = _ints(args.batches or DEFAULT_BATCHES[args.device])
    if not batches or batches[0] < 1:
        p.error("--batches must be positive integers")
    budget = args.budget_s if args.budget_s is not None else (0.3 if args.quick else 3.0)
    min_iters, warmup = (3, 1) if args.quick else (5, 3)
    window_s, warm_s = (1.0, 0.2) if args.quick else (4.0, 0.5)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"engines_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    t_all = time.perf_counter()
    gl, gt = load_networks(args.weights, args.channels)
    setup = Setup(gl, gt)
    config = {"weights": args.weights or "random", "channels": args.channels,
              "gt_enc": list(gt.config.enc), "gt_motion": list(gt.config.motion),
              "photo": list(setup.identity.photo.shape[:2]), "backends": specs,
              "batches": batches, "budget_s_per_cell": budget, "min_iterations": min_iters,
              "warmup": warmup, "max_sessions": args.max_sessions,
              "sessions_window_s": window_s, "sessions_warmup_s": warm_s,
              "torch_threads": torch.get_num_threads(), "quick": args.quick}
    backends = {s: measure_backend(setup, s, batches, budget, min_iters, warmup)
                for s in specs}

    best = {s: max(c["frames_per_s"] for c in r["cells"] if "step_ms" in c)
            for s, r in backends.items() if any("step_ms" in c for c in r.get("cells", []))}
    headline = {}
    b1 = {s: c for s, r in backends.items() for c in r.get("cells", [])
          if c["batch"] == 1 and "step_ms" in c}
    if b1:
        s = min(b1, key=lambda k: b1[k]["step_ms"]["p50"])
        headline = {"backend": s, "per_frame_ms": b1[s]["step_ms"]["p50"],
                    "per_frame_p99_ms": b1[s]["step_ms"]["p99"], "target_ms": TARGET_MS,
                    "meets_target": b1[s]["step_ms"]["p50"] <= TARGET_MS}

    sessions: dict = {"backend": None, "searches": []}
    chosen = args.sessions_backend or (max(best, key=best.get) if best else None)
    if chosen:
        sessions["backend"] = chosen
        log(f"[sessions] on {chosen}")
        try:
            engine = Engine(setup, chosen, max(batches))
        except Exception as e:
            log(f"[sessions] {chosen} cannot run: {e!r}")
            sessions["skipped"] = f"{chosen}: {e!r}"
        else:
            try:
                sessions["searches"] = [sessions_search(engine, setup, fps, args.max_sessions,
                                                        max(batches), window_s, warm_s)
                                        for fps in FPS]
            finally:
                engine.close()
    else:
        sessions["skipped"] = "no backend ran"

    result = {"benchmark": "bench_engines", "date": time.strftime("%Y-%m-%d"),
              "device": args.device,
              "machine": machine_info(torch_threads=torch.get_num_threads()),
              "config": config,
              "results": {"headline": headline, "backends": backends, "sessions": sessions,
                          "adaptation": measure_adaptation(gt, setup, args.device)}}
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    out.write_text(json.dumps(result, indent=1))
    png = out.with_suffix(".png")
    plot(result, png)
    print(summary_table(result))
    log(f"wrote {out} and {png} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
