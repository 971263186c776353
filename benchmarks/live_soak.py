"""Soak: live sessions for minutes, emotion switches, and a peer that comes and vanishes.

``etf serve`` as a subprocess (as ``live_latency.py capacity`` runs it: admission by
session count only, so the benchmark, not the server, decides the load) and:

- ``--sessions`` steady peers (real aiortc peers in one client process, each sending the
  built-in sentence in a loop) for ``--minutes``; each switches its session's emotion on
  the control channel every ``--switch-s`` seconds (the seven emotions in turn at
  intensities 0.5-1, every fourth switch a mix of two);
- every ``--churn-s`` seconds one more peer, in a process of its own, that connects,
  receives video for ``--churn-live-s`` seconds and is then killed (SIGKILL: no goodbye,
  as a closed laptop or a lost network leaves): the seconds until the server has freed
  its session (``/health``'s session count back to the steady number).

Sampled every second: the server's resident memory (its own process, and with its render
processes), its render processes, its CPU, the session count. Reported per steady
session: received fps in every 10 s window (the lowest, and how many windows fell under
24 fps), p99 and largest gap between received frames, the server's own below-rate
seconds (``/metrics``); the server's RSS growth from the end of warm-up (``--warmup-s``)
to the last minute, from samples taken while no churn peer was connected (its render
process would count otherwise); each vanished peer's time to be freed; the server's and
the peers' CPU. The peers decode VP8 on the same machine, so their CPU is stated too.

    python benchmarks/live_soak.py        # 3 sessions x 10 min -> results/live_soak.json
    python benchmarks/live_soak.py --sessions 2 --minutes 1 -o /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.live_latency import (  # noqa: E402
    RATE,
    RESULTS,
    _free_port,
    _waited_children_cpu,
    descendants,
    fetch_metrics,
    machine,
    process_cpu_seconds,
)
from engines.media.audio_io import load_audio  # noqa: E402
from server.cli import builtin_sentence  # noqa: E402

#: Emotion switches in turn (intensity 0.5-1); every fourth switch a mix of two.
SWITCHES = [
    {"emotion": "happy", "intensity": 1.0}, {"emotion": "angry", "intensity": 0.7},
    {"emotion": "sad", "intensity": 0.9},
    {"mix": {"happy": 0.6, "surprise": 0.3}, "intensity": 1.0},
    {"emotion": "surprise", "intensity": 0.8}, {"emotion": "fear", "intensity": 0.6},
    {"emotion": "disgust", "intensity": 0.5},
    {"mix": {"sad": 0.5, "angry": 0.4}, "intensity": 0.8},
    {"emotion": "neutral", "intensity": 1.0},
]
WINDOW_S = 10.0
MIN_FPS = 24.0


def _speech() -> np.ndarray:
    speech = load_audio(builtin_sentence(), RATE)
    return np.concatenate([speech, np.zeros(RATE // 2, np.float32)])


# ----- peers (each in a process of its own) -------------------------------------------

async def _steady(url: str, n: int, seconds: float, switch_s: float) -> dict:
    """``n`` peers for ``seconds``; prints ``started <monotonic>`` once all stream."""
    from server.client import AvatarClient

    pcm = _speech()
    clients = [AvatarClient(url, audio=pcm, loop_audio=True, keep_images=False)
               for _ in range(n)]
    for c in clients:
        await c.connect()
        await c.open_control()
    while any(not c.video for c in clients):
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    print(f"started {t0}", flush=True)
    sent = 0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(switch_s, seconds - (time.monotonic() - t0)))
        if time.monotonic() - t0 >= seconds:
            break
        msg = {"v": 1, "type": "set_emotion", **SWITCHES[sent % len(SWITCHES)]}
        for c in clients:
            await c.control(msg)
        sent += 1
    t1 = time.monotonic()
    metrics = await asyncio.get_running_loop().run_in_executor(None, fetch_metrics, url)
    out = []
    for c in clients:
        t = [round(f.arrival - t0, 4) for f in c.video if t0 <= f.arrival <= t1]
        kinds = [m.get("type") for m in c.messages]
        out.append({"session": c.session, "arrivals": t,
                    "acks": kinds.count("ack"), "errors": kinds.count("error")})
    await asyncio.gather(*(c.close() for c in clients))
    return {"t0": t0, "t1": t1, "switches": sent, "sessions": out, "metrics": metrics}


async def _churn(url: str) -> None:
    """One peer: prints ``up`` once its video arrives (or ``refused ...``), then streams
    until it is killed."""
    from server.client import AvatarClient

    c = AvatarClient(url, audio=_speech(), loop_audio=True, keep_images=False)
    try:
        await c.connect()
    except ConnectionError as e:
        print(f"refused {e}", flush=True)
        return
    while not c.video:
        await asyncio.sleep(0.02)
    print("up", flush=True)
    await asyncio.sleep(3600)


# ----- the server's side --------------------------------------------------------------

def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return json.loads(r.read())


def _lines(proc: subprocess.Popen) -> queue.Queue:
    """A queue of ``proc``'s stdout lines (None at its end), read on a thread."""
    q: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _below_rate_seconds(metrics: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("etf_below_rate_seconds_total{")]


def _window_fps(arrivals: np.ndarray, seconds: float) -> list[float]:
    edges = np.arange(0.0, seconds - WINDOW_S + 1e-9, WINDOW_S)
    return [round(float(((arrivals >= a) & (arrivals < a + WINDOW_S)).sum()) / WINDOW_S, 1)
            for a in edges]


def soak(args) -> dict:
    port, cport = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--control-port",
         str(cport), "--max-sessions", "64", "--admit-headroom", "0", "--fps", str(args.fps)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    seconds = args.minutes * 60.0
    nice = ["nice", "-n", str(args.peers_nice)] if args.peers_nice else []
    samples, churns = [], []
    steady = churn = None
    try:
        server.stdout.readline()
        steady = subprocess.Popen(
            [*nice, sys.executable, __file__, "_steady", url, str(args.sessions), str(seconds),
             str(args.switch_s)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        out = _lines(steady)
        first = out.get(timeout=120)
        if not first or not first.startswith("started "):
            raise RuntimeError(f"the steady peers did not start: {first!r}")
        t0 = float(first.split()[1])
        cpu0, peers0 = process_cpu_seconds(server.pid), _waited_children_cpu()
        next_sample, next_churn = t0, t0 + args.churn_s / 2
        state, t_mark, churn_out = "idle", 0.0, None
        while time.monotonic() < t0 + seconds:
            now = time.monotonic()
            if now >= next_sample:
                kids = descendants(server.pid)
                sessions = _health(url)["sessions"]
                rss = _rss_mb(server.pid)
                samples.append({
                    "t": round(now - t0, 2), "sessions": sessions,
                    "churn_peer": state in ("connecting", "live", "freeing"),
                    "rss_server_mb": round(rss, 1),
                    "rss_with_render_mb": round(rss + sum(_rss_mb(k) for k in kids), 1),
                    "render_processes": len(kids),
                    "cpu_s": round(process_cpu_seconds(server.pid) - cpu0, 2)})
                next_sample += 1.0
            if state == "idle" and now >= next_churn and now < t0 + seconds - 20:
                churn = subprocess.Popen(
                    [*nice, sys.executable, __file__, "_churn", url], stdout=subprocess.PIPE,
                    text=True, cwd=ROOT)
                churn_out, state, t_mark = _lines(churn), "connecting", now
            elif state == "connecting":
                try:
                    line = churn_out.get_nowait()
                except queue.Empty:
                    line = ""
                if line == "up":
                    state, t_mark = "live", now
                elif line is None or line.startswith("refused") or now - t_mark > 30:
                    churns.append({"t": round(t_mark - t0, 1), "connected": False,
                                   "why": line or "no video in 30 s"})
                    churn.kill()
                    churn.wait()
                    state, next_churn = "idle", next_churn + args.churn_s
            elif state == "live" and now - t_mark >= args.churn_live_s:
                churn.send_signal(signal.SIGKILL)
                churn.wait()
                state, t_mark = "freeing", time.monotonic()
            elif state == "freeing":
                if _health(url)["sessions"] <= args.sessions or now - t_mark > 30:
                    freed = now - t_mark
                    churns.append({"t": round(t_mark - t0, 1), "connected": True,
                                   "freed_s": round(freed, 2) if freed <= 30 else None})
                    state, next_churn = "idle", next_churn + args.churn_s
            time.sleep(0.1 if state == "freeing" else 0.05)
        wall = time.monotonic() - t0
        cpu = process_cpu_seconds(server.pid) - cpu0
        rest = []
        while True:
            line = out.get(timeout=120)
            if line is None:
                break
            rest.append(line)
        steady.wait(30)
        peers_cpu = _waited_children_cpu() - peers0  # the steady and the churn peers
        got = json.loads(rest[-1])
    finally:
        for p in (churn, steady):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        server.terminate()
        server.wait(10)
    return _summary(args, seconds, wall, cpu, peers_cpu, samples, churns, got)


def _summary(args, seconds, wall, cpu, peers_cpu, samples, churns, got) -> dict:
    per = []
    below = _below_rate_seconds(got["metrics"])
    for s in got["sessions"]:
        t = np.array(s["arrivals"])
        gaps = np.diff(t) * 1e3 if t.size > 1 else np.array([float("inf")])
        win = _window_fps(t, seconds)
        per.append({"frames": int(t.size), "fps": round(t.size / seconds, 2),
                    "window_fps_min": min(win), "windows_under_24": sum(w < MIN_FPS
                                                                       for w in win),
                    "windows": len(win), "window_fps": win,
                    "gap_p99_ms": round(float(np.percentile(gaps, 99)), 1),
                    "gap_max_ms": round(float(gaps.max()), 1),
                    "control_acks": s["acks"], "control_errors": s["errors"]})
    quiet = [x for x in samples if not x["churn_peer"] and x["sessions"] == args.sessions]

    def rss(key, lo, hi):
        v = [x[key] for x in quiet if lo <= x["t"] < hi]
        return round(float(np.median(v)), 1) if v else None

    growth = {}
    for key in ("rss_server_mb", "rss_with_render_mb"):
        a = rss(key, args.warmup_s, args.warmup_s + 60)
        b = rss(key, seconds - 60, seconds)
        growth[key] = {"after_warmup": a, "last_minute": b,
                       "growth_pct": round(100 * (b - a) / a, 2) if a and b else None}
    freed = [c["freed_s"] for c in churns if c.get("freed_s") is not None]
    connected = [c for c in churns if c["connected"]]
    return {
        "sessions": args.sessions, "minutes": args.minutes, "fps": args.fps,
        "switch_s": args.switch_s, "emotion_switches": got["switches"],
        "churn_s": args.churn_s, "churn_live_s": args.churn_live_s,
        "peers_nice": args.peers_nice, "warmup_s": args.warmup_s,
        "per_session": per,
        "below_rate_seconds": below,
        "all_sessions_every_window_ge_24fps": all(p["windows_under_24"] == 0 for p in per),
        "rss": growth,
        "render_processes": {"min": min(x["render_processes"] for x in samples),
                             "max": max(x["render_processes"] for x in samples),
                             "last": samples[-1]["render_processes"]},
        "churn": {"peers": len(churns), "connected": len(connected),
                  "refused_or_failed": [c for c in churns if not c["connected"]],
                  "freed_s_max": max(freed) if freed else None,
                  "freed_s_median": round(float(np.median(freed)), 2) if freed else None,
                  "not_freed": sum(1 for c in connected if c.get("freed_s") is None),
                  "each": churns},
        "server_cpu_cores": round(cpu / wall, 3),
        "peers_cpu_cores": round(peers_cpu / wall, 3),
        "samples": samples,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_steady":
        url, n, seconds, switch_s = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
            float(sys.argv[5])
        print(json.dumps(asyncio.run(_steady(url, n, seconds, switch_s))), flush=True)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_churn":
        asyncio.run(_churn(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--switch-s", type=float, default=10.0)
    ap.add_argument("--churn-s", type=float, default=30.0)
    ap.add_argument("--churn-live-s", type=float, default=5.0,
                    help="seconds a churn peer receives video before it is killed")
    ap.add_argument("--warmup-s", type=float, default=60.0)
    ap.add_argument("--peers-nice", type=int, default=0,
                    help="run the peers at this niceness (19: only the CPU the server leaves)")
    ap.add_argument("-o", "--output", default=str(RESULTS / "live_soak.json"))
    args = ap.parse_args()
    if args.minutes * 60 < args.warmup_s + 60:
        ap.error("--minutes must leave a minute after --warmup-s")
    res = {"benchmark": "live_soak", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine(), **soak(args)}
    Path(args.output).write_text(json.dumps(res, indent=1) + "\n")
    s = res
    print(f"{s['sessions']} sessions x {s['minutes']:g} min: every 10 s window >= 24 fps: "
          f"{s['all_sessions_every_window_ge_24fps']}  lowest windows "
          f"{[p['window_fps_min'] for p in s['per_session']]}  gap p99 "
          f"{[p['gap_p99_ms'] for p in s['per_session']]} ms")
    print(f"RSS growth {s['rss']}  churn {s['churn']['connected']}/{s['churn']['peers']} "
          f"connected, freed in <= {s['churn']['freed_s_max']} s (not freed "
          f"{s['churn']['not_freed']})  server {s['server_cpu_cores']} cores, peers "
          f"{s['peers_cpu_cores']}")


if __name__ == "__main__":
    main()
