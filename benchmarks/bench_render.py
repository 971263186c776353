"""Frames per second of the default per-frame path: landmarks + texture warp + paste-back.

Runs the built-in face (512x512 output) on synthetic speech-like audio, after warm-up,
and reports per-stage latency (p50/p99 ms) and end-to-end fps, as JSON plus a PNG plot.
Usage: python benchmarks/bench_render.py [--frames 500] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402


def speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Syllable-rate amplitude-modulated harmonic noise: loud/quiet like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = np.clip(np.sin(2 * np.pi * 4.0 * t) + 0.3 * rng.standard_normal(len(t)) * 0.1, 0, 1)
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 8))
    return (0.2 * env * voice + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from engines.face.default_face import default_identity
    from engines.motion.emotion_state import EmotionState
    from engines.render import texture_warp
    from engines.render.compositor import paste_roi
    from engines.render.landmark_default import SpeechLandmarkEngine

    t = time.perf_counter()
    identity = default_identity()
    t_enroll = time.perf_counter() - t
    t = time.perf_counter()
    warp = texture_warp.prepare(identity)
    t_prepare = time.perf_counter() - t
    emotion = EmotionState("happy", 0.7)
    engine = SpeechLandmarkEngine(identity.neutral, fps=args.fps)
    audio = speechlike(args.frames / args.fps + 1.0)
    out = np.empty_like(identity.photo)
    stages: dict[str, list[float]] = {"audio_in": [], "landmarks": [], "expression": [],
                                      "texture": [], "paste": [], "total": []}
    from engines.render.expression_texture import ExpressionTexture

    skin = ExpressionTexture(warp.expression)
    chunk = int(16000 / args.fps)
    pos, done, warm = 0, 0, 20
    while done < args.frames + warm and pos < len(audio):
        t0 = time.perf_counter()
        engine.push_audio(audio[pos : pos + chunk])
        pos += chunk
        t1 = time.perf_counter()
        while engine.frames_ready() > 0 and done < args.frames + warm:
            a = time.perf_counter()
            t_emo = engine.frame_index / args.fps
            if engine.frame_index % 50 == 0:  # an emotion switch every 2 s: transitions count
                emotion.set(("happy", "angry", "surprise", "sad")[engine.frame_index // 50 % 4],
                            at=t_emo)
            vec = emotion.vector_at(t_emo)
            lm, _ = engine.next_frame(vec)
            a2 = time.perf_counter()
            src = skin.source(vec)
            b = time.perf_counter()
            roi = texture_warp.render_roi(warp, lm, src)
            c = time.perf_counter()
            paste_roi(identity.photo, roi, warp.roi, warp.feather, out=out, solid=warp.solid)
            d = time.perf_counter()
            if done >= warm:
                stages["audio_in"].append((t1 - t0) * 1e3)
                stages["landmarks"].append((a2 - a) * 1e3)
                stages["expression"].append((b - a2) * 1e3)
                stages["texture"].append((c - b) * 1e3)
                stages["paste"].append((d - c) * 1e3)
                stages["total"].append((d - a + t1 - t0) * 1e3)
            done += 1
    summary = {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                   "mean_ms": float(np.mean(v))} for k, v in stages.items()}
    fps = 1000.0 / summary["total"]["mean_ms"]
    result = {
        "benchmark": "default per-frame path (landmarks + texture warp + paste-back)",
        "output_size": list(identity.photo.shape[:2]),
        "roi": list(warp.roi),
        "frames": len(stages["total"]),
        "fps": fps,
        "stages": summary,
        "enroll_s": t_enroll,
        "prepare_s": t_prepare,
        "machine": machine_info(numpy=np.__version__),
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out) / "render_cpu.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps({"fps": round(fps, 1), **{k: {kk: round(vv, 2) for kk, vv in v.items()}
                                               for k, v in summary.items()}}, indent=1))
    print(f"wrote {path}")
    try:
        import cv2

        h, w = 240, 480
        img = np.full((h, w, 3), 255, np.uint8)
        names = [k for k in stages if k != "total"]
        for i, k in enumerate(names):
            p50, p99 = summary[k]["p50_ms"], summary[k]["p99_ms"]
            y = 30 + i * 45
            cv2.putText(img, k, (5, y + 15), 0, 0.5, (0, 0, 0), 1)
            cv2.rectangle(img, (100, y), (100 + int(p50 * 30), y + 15), (200, 120, 40), -1)
            cv2.rectangle(img, (100, y + 17), (100 + int(p99 * 30), y + 25), (40, 40, 200), -1)
        cv2.putText(img, f"{fps:.0f} fps, p50 (blue) / p99 (red), 30 px per ms", (5, h - 10),
                    0, 0.45, (0, 0, 0), 1)
        cv2.imwrite(str(Path(args.out) / "render_cpu.png"), img)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
