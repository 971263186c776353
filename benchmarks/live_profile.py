"""Where a live session's CPU goes: per frame, and per thread at 1 to 4 sessions.

``frame``: one session's work for one 40 ms frame of the built-in face (512x512), each
step timed on its own on this process's thread (median over the frames of 8 s of the
built-in sentence): the phone recogniser and loudness (40 ms of audio), landmarks, the warp's
displacement field, its fixed-point inversion (a field remap), the exact lip inversion,
the image remap, the painted mouth, the eyes (rigid eyeballs) and eyelids, the paste-back,
RGB -> I420, and what
the render process then does with it: VP8 encoding (``server.render_worker.Vp8Stream``, at
aiortc's starting bitrate; ``vp8_encode_aiortc``: aiortc's own encoder, which encodes when
the session renders on a thread), and what aiortc does: Opus encoding
of the frame's 40 ms of returned audio.

``threads``: the live server in this process (the code path ``etf serve`` runs) and N real
aiortc peers in a client process sending speech in a loop, for a few seconds per level.
Per thread group of the server: CPU cores used (from /proc, Python threads mapped by their
native id): the render processes (one per session: speech, landmarks, warp, paste, YUV, VP8),
the engine pool (those steps when the server renders on threads; with processes its
threads only wait), the server's event loop (RTP, SRTP, pacing, control), aiortc's
encoder/decoder threads, and native pools (OpenCV, libvpx, BLAS threads Python did not
start); plus the sessions' stage latencies (p50/p99 from ``/metrics``) and the client
process's own CPU. Both ways of rendering (``--render-in processes,threads``) in one run.

    python benchmarks/live_profile.py        # -> benchmarks/results/live_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.live_latency import (  # noqa: E402
    descendants,
    fetch_metrics,
    process_cpu_seconds,
    stage_latencies_ms,
)
from benchmarks.machine import machine_info  # noqa: E402

FPS = 25.0


def _ms(samples: list[float]) -> dict:
    a = np.array(samples) * 1e3
    return {"p50_ms": round(float(np.median(a)), 3), "p90_ms": round(float(np.percentile(a, 90)),
                                                                    3)}


def frame_steps(seconds: float = 8.0) -> dict:
    """Per-step time of one session's frame (see module docstring)."""
    import cv2
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    from engines.avatar import StreamConfig
    from engines.face.default_face import default_identity
    from engines.media.audio_io import load_audio
    from engines.render import texture_warp as tw
    from engines.render.compositor import paste_roi
    from engines.render.pipeline import FaceAnimator
    from etf_models.canonical_face import apply_affine
    from server.cli import builtin_sentence
    from server.render_worker import Vp8Stream

    identity = default_identity().for_video(512)
    warp = tw.prepare(identity)
    live = StreamConfig()
    anim = FaceAnimator(identity, FPS, warp=warp, phone_lookahead_ms=live.phone_lookahead_ms,
                        coart_future_ms=live.coart_future_ms,
                        anticipation_ms=live.anticipation_ms)
    speech = load_audio(builtin_sentence(), 16000)
    speech = np.concatenate([speech, np.zeros(16000, np.float32)])[: int(seconds * 16000)]
    voice48 = load_audio(builtin_sentence(), 48000)
    vp8, opus, ours = Vp8Encoder(), OpusEncoder(), Vp8Stream(FPS)
    steps: dict[str, list[float]] = defaultdict(list)
    h, w = warp.shape
    out = np.empty_like(identity.photo)
    hop = int(16000 / FPS)
    n48 = int(48000 / FPS)
    for k, start in enumerate(range(0, len(speech), hop)):
        t = time.perf_counter()
        anim.push_audio(speech[start : start + hop])
        steps["phones_and_loudness"].append(time.perf_counter() - t)
        while anim.engine.frames_ready() > 0:
            eng = anim.engine
            t = time.perf_counter()
            lm, _ = eng.next_frame(anim.emotion.vector_at(eng.frame_index / FPS))
            t1 = time.perf_counter()
            dst = apply_affine(warp.canon_to_roi, lm).astype(np.float32)
            moved, field = tw.displacement(warp, lm)
            t2 = time.perf_counter()
            back = tw.invert_field(warp, field)
            t3 = time.perf_counter()
            tw._invert_lips(warp, moved, back)
            t4 = time.perf_counter()
            src = anim.texture.source(anim.emotion.vector_at(0.0))
            roi = cv2.remap(src, back, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            t5 = time.perf_counter()
            tw._paint_mouth(warp, roi, lm, dst)
            t6 = time.perf_counter()
            tw.eyeball.paint_eyes(warp.eyes, roi, dst, warp.src_vertices[:68])
            tw._shade_lids(warp, roi, lm, dst)
            t7 = time.perf_counter()
            img = paste_roi(identity.photo, roi, warp.roi, warp.feather, out=out,
                            solid=warp.solid)
            t8 = time.perf_counter()
            yuv = cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420)
            t9 = time.perf_counter()
            ours.encode(yuv, k, vp8.target_bitrate, k == 0)
            t10 = time.perf_counter()
            vp8.encode(_video_frame(yuv, k))
            t11 = time.perf_counter()
            a = voice48[(k * n48) % (len(voice48) - n48):][:n48]
            for half in (a[: n48 // 2], a[n48 // 2 :]):
                opus.encode(_audio_frame(half, k))
            t12 = time.perf_counter()
            for name, dt in (("landmarks", t1 - t), ("warp_field", t2 - t1),
                             ("warp_field_inversion", t3 - t2), ("warp_lip_inversion", t4 - t3),
                             ("warp_image_remap", t5 - t4), ("mouth_paint", t6 - t5),
                             ("eyes_and_lids", t7 - t6), ("paste", t8 - t7),
                             ("rgb_to_i420", t9 - t8),
                             ("vp8_encode", t10 - t9), ("opus_encode", t12 - t11)):
                steps[name].append(dt)
            steps["vp8_encode_aiortc"].append(t11 - t10)  # not in the sum: one or the other
    per = {k: _ms(v) for k, v in steps.items()}
    total = sum(v["p50_ms"] for k, v in per.items() if k != "vp8_encode_aiortc")
    return {"frames": len(steps["landmarks"]), "steps": per,
            "sum_of_p50_ms": round(total, 2),
            "share_of_sum": {k: round(v["p50_ms"] / total, 3) for k, v in per.items()}}


def _video_frame(yuv: np.ndarray, k: int):
    from fractions import Fraction

    import av

    f = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    f.pts, f.time_base = k * 3600, Fraction(1, 90000)
    return f


def _audio_frame(pcm: np.ndarray, k: int):
    from fractions import Fraction

    import av

    i16 = np.clip(pcm * 32767, -32768, 32767).astype(np.int16)
    f = av.AudioFrame.from_ndarray(i16[None, :], format="s16", layout="mono")
    f.sample_rate, f.pts, f.time_base = 48000, k * i16.size, Fraction(1, 48000)
    return f


# ----- threads --------------------------------------------------------------------------

def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group of this process."""
    from server.cpu_meter import stat_seconds

    names = {t.native_id: t.name for t in threading.enumerate()}
    groups: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        cpu = stat_seconds(f"/proc/self/task/{tid}/stat")
        if cpu is not None:  # else the thread ended
            groups[_group(names.get(int(tid)))] += cpu
    return groups


def _group(name: str | None) -> str:
    if name is None:
        return "native pools (OpenCV, libvpx, BLAS; not started by Python)"
    if name.startswith("etf-engine"):
        return "engine pool (speech, landmarks, warp, paste, YUV)"
    if name == "etf-server":
        return "server event loop (RTP, SRTP, pacing, control)"
    if name.startswith("asyncio"):
        return "aiortc executor (Opus; VP8 too when rendering on threads)"
    if "decoder" in name:
        return "aiortc inbound decoding (Opus)"
    if name == "MainThread":
        return "benchmark main thread (idle)"
    return "other: " + re.sub(r"[_-]?\d+$", "", name)


def _stages(url: str) -> dict:
    """Each stage's p50 and p99 (ms) of the worst session."""
    names = {"0.5": "p50", "0.99": "p99"}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (stage, q), values in stage_latencies_ms(fetch_metrics(url)).items():
        out[stage][names.get(q, q)] = round(max(values), 2)
    return dict(out)


RENDER_GROUP = "render processes (speech, landmarks, warp, paste, YUV, VP8)"


def _render_cpu(client_pid: int) -> float:
    """CPU seconds of the server's render processes (this process's children other than
    the peers' client process)."""
    return sum(process_cpu_seconds(p, tree=False) for p in descendants(os.getpid())
               if p != client_pid)


def threads(levels: list[int], seconds: float, render_in: str = "processes") -> list[dict]:
    from engines.face.default_face import default_identity
    from server.app import BackgroundServer, ServerConfig
    from server.session import SessionConfig

    identity = default_identity()
    out = []
    config = ServerConfig(port=0, max_sessions=16, admit_headroom=0.0,
                          render_processes=render_in == "processes")
    with BackgroundServer(identity, config, SessionConfig()) as srv:
        for n in levels:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "live_latency.py"), "_clients",
                 srv.url, str(n), str(seconds)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
            time.sleep(2.5)  # connect and settle, as the client does
            c0, g0, w0 = process_cpu_seconds(proc.pid), _thread_cpu(), time.monotonic()
            g0[RENDER_GROUP] = _render_cpu(proc.pid)
            time.sleep(seconds - 1.0)
            c1, g1, w1 = process_cpu_seconds(proc.pid), _thread_cpu(), time.monotonic()
            g1[RENDER_GROUP] = _render_cpu(proc.pid)
            stages = _stages(srv.url)
            got = json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1])
            wall = w1 - w0
            cores = {k: round((g1.get(k, 0.0) - g0.get(k, 0.0)) / wall, 3)
                     for k in sorted(set(g0) | set(g1))}
            level = {"sessions": n, "render_in": render_in,
                     "server_cores": round(sum(cores.values()), 3),
                     "server_cores_by_thread": cores,
                     "client_process_cores": round((c1 - c0) / wall, 3),
                     "stage_ms_worst_session": stages,
                     "fps": [p["fps"] for p in got["per_session"]]}
            out.append(level)
            print(json.dumps(level), flush=True)
            time.sleep(2.0)  # the sessions of this level close
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all", choices=["all", "frame", "threads"])
    ap.add_argument("--sessions", default="1,2,3,4")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--render-in", default="processes,threads",
                    help="threads: the server renders in processes, on threads, or both")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "live_profile.json"))
    args = ap.parse_args(argv)
    import aiortc
    import cv2

    result = {"benchmark": "live_profile", "date": time.strftime("%Y-%m-%d"),
              "machine": machine_info(aiortc=aiortc.__version__,
                                      opencv_threads=cv2.getNumThreads())}
    if args.what in ("all", "frame"):
        result["frame"] = frame_steps()
        print(json.dumps(result["frame"], indent=1), flush=True)
    if args.what in ("all", "threads"):
        result["threads"] = [
            level for mode in args.render_in.split(",")
            for level in threads([int(x) for x in args.sessions.split(",")], args.seconds, mode)]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
