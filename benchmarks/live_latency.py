"""Live server on loopback: glass-to-glass latency with its breakdown, and capacity.

``glass``: one real aiortc peer sends speech with clean onsets (utterances after silence)
through ``etf serve``'s code path. For each onset it measures, on the client's clock:
- video glass-to-glass: speech onset leaving the sender's audio track -> the first received
  frame whose re-detected mouth (dlib landmarks) has visibly started to open (inner-lip gap
  ``MOTION`` above its closed level, in outer-eye-corner distances); also reported: the
  first frame a quarter of the way to the largest opening in the next 2 s (this criterion
  moves with the word's loudest vowel, e.g. later when the first syllable opens less),
- audio round trip: the same onset -> the onset in the returned (delayed) audio,
and compares the received mouth/audio offset with the engine's own offline one (lip sync
preserved end to end). The breakdown lists the server's declared parts.

``capacity``: ``etf serve`` as a subprocess and N peers (one client process, sending speech
in a loop) for a few seconds each; a level passes when every session receives >= 24 fps
with no gap over 200 ms and the server's p99 compute per tick stays under one frame period;
its rate is held (``rate_held``, what a viewer sees) when every session receives >= 24 fps
with the p99 gap between received frames within 100 ms. ``--baseline DIR`` runs the server
of another checkout (e.g. a git worktree of an older main) beside ours, each level on both
in turn, with this machine's ``bench_render`` fps before and after.
The clients decode VP8 on the same machine, so this is a lower bound for the server; the
server's CPU (with its render processes) and the peers' own are both reported.
``--render-in threads`` measures the server rendering on its engine threads instead;
``--peers-nice 19`` runs the peers at the lowest priority, so they use only the CPU the
server leaves (closer to a server whose peers are elsewhere; their fps then says whether
that leftover was enough to decode).

    python benchmarks/live_latency.py            # both; writes results/live_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from engines.media.audio_io import load_audio  # noqa: E402
from server.cli import builtin_sentence  # noqa: E402

RATE = 48000
#: A mouth has visibly started to open: its inner-lip gap this far above its closed level
#: (outer-eye-corner distances; dlib's frame-to-frame noise on a still mouth is ~0.005).
MOTION = 0.02
RESULTS = ROOT / "benchmarks" / "results"


def onsets_signal(n: int = 5, gap_s: float = 1.6) -> tuple[np.ndarray, list[int]]:
    """``n`` utterances (the built-in sentence's first 1.4 s) after silences; onset samples."""
    speech = load_audio(builtin_sentence(), RATE)
    env = np.sqrt(np.convolve(speech**2, np.ones(480) / 480, "same"))
    start = int(np.argmax(env > 0.02))
    word = speech[start:start + int(1.4 * RATE)]
    parts, onsets, pos = [], [], 0
    for _ in range(n):
        sil = np.zeros(int(gap_s * RATE), np.float32)
        parts += [sil, word]
        onsets.append(pos + sil.size)
        pos += sil.size + word.size
    parts.append(np.zeros(int(gap_s * RATE), np.float32))
    return np.concatenate(parts), onsets


def _first_above(times: np.ndarray, values: np.ndarray, after: float, before: float,
                 level: float) -> float | None:
    sel = np.flatnonzero((times >= after) & (times < before) & (values > level))
    return float(times[sel[0]]) if sel.size else None


def engine_leads_ms(identity, pcm48: np.ndarray, onsets: list[int],
                    config) -> tuple[float, float]:
    """Offline, one rendering: the mouth's visible opening time and its quarter-open time,
    each minus the speech onset, median over onsets (ms)."""
    from engines.face.face_metrics import face_box, mouth_openings
    from engines.render.pipeline import FaceAnimator

    pcm16 = resample_to_16k(pcm48)
    fps = config.fps
    anim = FaceAnimator(identity, fps, phone_lookahead_ms=config.phone_lookahead_ms,
                        coart_future_ms=config.coart_future_ms,
                        anticipation_ms=config.anticipation_ms)
    frames = [f.image for f in anim.render_all(pcm16)]
    mouth = mouth_openings(frames, face_box(identity.landmarks_photo))
    times = (np.arange(len(frames)) + 0.5) / fps
    visible, quarter = [], []
    for o in onsets:
        t = o / RATE
        base = np.nanmedian(mouth[(times > t - 1.0) & (times < t - 0.3)])
        peak = np.nanmax(mouth[(times > t) & (times < t + 1.4)])
        for leads, level in ((visible, base + MOTION), (quarter, base + 0.25 * (peak - base))):
            hit = _first_above(times, mouth, t - 0.3, t + 1.4, level)
            if hit is not None:
                leads.append((hit - t) * 1e3)
    return float(np.median(visible)), float(np.median(quarter))


def resample_to_16k(pcm48: np.ndarray) -> np.ndarray:
    from engines.audio.phone_stream import StreamResampler

    r = StreamResampler(RATE, 16000)
    return np.concatenate([r.process(pcm48), r.drain()])


async def _glass(url: str, pcm: np.ndarray, onsets: list[int], identity) -> dict:
    from engines.face.face_metrics import face_box, mouth_openings
    from server.client import FRAME, AvatarClient

    async with AvatarClient(url, audio=pcm) as c:
        await c.open_control()
        await asyncio.sleep(len(pcm) / RATE + 1.0)
        await c.control({"v": 1, "type": "get_stats", "id": "end"})
        stats = (await c.wait_message(lambda m: m.get("id") == "end"))["stats"]
    sent = np.array(c.sender_track.sent)
    v_t = np.array([f.arrival for f in c.video])
    mouth = mouth_openings([f.image for f in c.video], face_box(identity.landmarks_photo))
    a_t = np.array([a.arrival for a in c.audio_in])
    a_rms = np.array([np.sqrt(np.mean(a.image**2)) for a in c.audio_in])
    rows = []
    for o in onsets:
        m = o // FRAME
        t_send = sent[m] + (o - m * FRAME) / RATE
        base = np.nanmedian(mouth[(v_t > t_send - 0.6) & (v_t < t_send + 0.1)])
        peak = np.nanmax(mouth[(v_t > t_send) & (v_t < t_send + 2.0)])
        t_mouth = _first_above(v_t, mouth, t_send, t_send + 2.0, base + MOTION)
        t_quarter = _first_above(v_t, mouth, t_send, t_send + 2.0,
                                 base + 0.25 * (peak - base))
        # The onset inside the first loud 20 ms frame (a frame leaves at its content's start).
        t_audio = None
        for i in np.flatnonzero((a_t > t_send) & (a_rms > 0.01)):
            x = np.abs(c.audio_in[i].image)
            k = int(np.argmax(x > 0.02)) if np.any(x > 0.02) else 0
            t_audio = float(a_t[i] + k / RATE)
            break
        rows.append({
            "onset_s": round(o / RATE, 3),
            "video_g2g_ms": None if t_mouth is None else round((t_mouth - t_send) * 1e3, 1),
            "video_g2g_quarter_open_ms": None if t_quarter is None else round(
                (t_quarter - t_send) * 1e3, 1),
            "audio_roundtrip_ms": None if t_audio is None else round((t_audio - t_send) * 1e3, 1),
        })
    return {"onsets": rows, "server_stats": stats, "answer": {
        k: c.answer[k] for k in ("fps", "lookahead_ms", "pipeline_delay_ms", "width", "height")}}


def glass(args) -> dict:
    from engines.face.default_face import default_identity
    from server.app import BackgroundServer, ServerConfig
    from server.session import SessionConfig

    identity = default_identity()
    pcm, onsets = onsets_signal(args.onsets)
    cfg = SessionConfig(fps=args.fps, phone_lookahead_ms=args.lookahead,
                        coart_future_ms=args.coart, anticipation_ms=args.anticipation,
                        jitter_ms=args.jitter, jitter_adaptive=not args.jitter_fixed,
                        compute_budget_ms=args.compute_budget)
    with BackgroundServer(identity, ServerConfig(port=0), cfg) as srv:
        res = asyncio.run(_glass(srv.url, pcm, onsets, identity))
    lead, lead_q = engine_leads_ms(identity, pcm, onsets, cfg)
    v = [r["video_g2g_ms"] for r in res["onsets"] if r["video_g2g_ms"] is not None]
    vq = [r["video_g2g_quarter_open_ms"] for r in res["onsets"]
          if r["video_g2g_quarter_open_ms"] is not None]
    a = [r["audio_roundtrip_ms"] for r in res["onsets"] if r["audio_roundtrip_ms"] is not None]
    st = res["server_stats"]
    p = res["answer"]
    summary = {
        "video_glass_to_glass_ms_median": round(float(np.median(v)), 1),
        "video_glass_to_glass_ms_all": v,
        "video_glass_to_glass_quarter_open_ms_median": round(float(np.median(vq)), 1),
        "engine_mouth_quarter_open_offline_ms": round(lead_q, 1),
        "settings": {"phone_lookahead_ms": cfg.phone_lookahead_ms,
                     "coart_future_ms": cfg.coart_future_ms,
                     "anticipation_ms": cfg.anticipation_ms, "jitter_ms": cfg.jitter_ms,
                     "jitter_adaptive": cfg.jitter_adaptive,
                     "jitter_min_ms": cfg.jitter_min_ms,
                     "compute_budget_ms": round(cfg.compute_budget_s * 1e3, 1)},
        "audio_roundtrip_ms_median": round(float(np.median(a)), 1),
        "engine_mouth_lead_offline_ms": round(lead, 1),
        "received_mouth_minus_audio_ms": round(float(np.median(v) - np.median(a)), 1),
        # Audio path: sender -> aiortc receive hold -> jitter buffer -> pipeline delay (the
        # returned audio is delayed exactly like the frames) -> Opus/RTP back to the client.
        # The video arrives earlier than its sound by the engine's designed mouth lead plus
        # the audio codec's own delay on the way back.
        "breakdown_ms": {
            "aiortc_inbound_audio_hold": 20.0,
            "jitter_buffer_mean_depth": st["queues"]["audio_mean_ms"],
            "jitter_buffer_target": args.jitter,
            "jitter_buffer_target_at_end": st["queues"]["audio_target_ms"],
            "jitter_buffer_underflows": st["audio"]["underflows"],
            "pipeline_delay": p["pipeline_delay_ms"],
            "  of_which_lookahead": p["lookahead_ms"],
            "  of_which_tick_rounding_and_compute_budget": round(
                p["pipeline_delay_ms"] - p["lookahead_ms"], 1),
            "return_transport_and_codecs": round(
                float(np.median(a)) - 20.0 - st["queues"]["audio_mean_ms"]
                - p["pipeline_delay_ms"], 1),
            "= audio_roundtrip": round(float(np.median(a)), 1),
            "video_minus_audio": round(float(np.median(v) - np.median(a)), 1),
            "  of_which_engine_mouth_lead_offline": round(lead, 1),
            "= video_glass_to_glass": round(float(np.median(v)), 1),
            "compute_p50": st["latency_ms"]["tick"]["p50"],
            "compute_p99": st["latency_ms"]["tick"]["p99"],
            "frames_past_release_p50": st["latency_ms"]["late"]["p50"],
            "frames_past_release_p99": st["latency_ms"]["late"]["p99"],
        },
        "per_onset": res["onsets"],
        "frames_dropped": st["frames_dropped"],
        "fps": st["fps"],
    }
    return summary


# ----- capacity ------------------------------------------------------------------------

async def _clients(url: str, n: int, seconds: float) -> dict:
    from server.client import AvatarClient

    speech = load_audio(builtin_sentence(), RATE)
    loop_pcm = np.concatenate([speech, np.zeros(RATE // 2, np.float32)])
    clients = [AvatarClient(url, audio=loop_pcm, loop_audio=True, keep_images=False)
               for _ in range(n)]
    for c in clients:
        await c.connect()
    await asyncio.sleep(2.0)  # settle
    marks = [len(c.video) for c in clients]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    t1 = time.monotonic()
    metrics = await asyncio.get_running_loop().run_in_executor(None, fetch_metrics, url)
    out = []
    for c, k in zip(clients, marks, strict=True):
        t = np.array([f.arrival for f in c.video[k:] if f.arrival <= t1])
        gaps = np.diff(t) * 1e3
        out.append({"frames": int(len(t)), "fps": round(len(t) / (t1 - t0), 2),
                    "max_gap_ms": round(float(gaps.max()), 1) if len(t) > 1 else None,
                    "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1) if len(t) > 1
                    else None})
    await asyncio.gather(*(c.close() for c in clients))
    return {"per_session": out, "metrics": metrics}


async def _admission(url: str, max_peers: int, join_s: float, seconds: float) -> dict:
    """Peers join one at a time, ``join_s`` apart, until one is refused; then the admitted
    ones are measured for ``seconds`` and one more peer tries to join at the end."""
    from server.client import AvatarClient

    speech = load_audio(builtin_sentence(), RATE)
    loop_pcm = np.concatenate([speech, np.zeros(RATE // 2, np.float32)])
    clients, attempts = [], []

    async def attempt(label: str) -> bool:
        c = AvatarClient(url, audio=loop_pcm, loop_audio=True, keep_images=False)
        try:
            await c.connect()
        except ConnectionError:
            attempts.append({"peer": label, "admitted": False, "answer": c.answer})
            await c.close()
            return False
        attempts.append({"peer": label, "admitted": True})
        clients.append(c)
        return True

    for i in range(max_peers):
        if not await attempt(str(i + 1)):
            break
        await asyncio.sleep(join_s)
    marks = [len(c.video) for c in clients]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    t1 = time.monotonic()
    await attempt("late")
    out = []
    for c, k in zip(clients, marks, strict=True):
        t = np.array([f.arrival for f in c.video[k:] if f.arrival <= t1])
        gaps = np.diff(t) * 1e3
        out.append({"fps": round(len(t) / (t1 - t0), 2),
                    "max_gap_ms": round(float(gaps.max()), 1) if len(t) > 1 else None,
                    "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1) if len(t) > 1
                    else None})
    await asyncio.gather(*(c.close() for c in clients))
    return {"attempts": attempts, "admitted": len(clients), "per_session": out,
            "measured_s": round(t1 - t0, 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Process ids of ``pid``'s children, their children, and so on (Linux /proc)."""
    found, stack = [], [pid]
    while stack:
        for tasks in Path(f"/proc/{stack.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in tasks.read_text().split()]
            except OSError:  # the task ended
                continue
            found += kids
            stack += kids
    return found


def process_cpu_seconds(pid: int, tree: bool = True) -> float:
    """CPU seconds used by ``pid`` and (``tree``) its descendants: the running ones, and
    those that ended and were waited for (the render processes the server stops when
    their sessions end: their CPU is in its children's time)."""
    from server.cpu_meter import process_seconds, waited_children_seconds

    if not tree:
        return process_seconds(pid) or 0.0
    # a process that ended between the listing and the reading counts nothing
    return (sum(process_seconds(p) or 0.0 for p in [pid, *descendants(pid)])
            + (waited_children_seconds(pid) or 0.0))


def fetch_metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        return r.read().decode()


def stage_latencies_ms(metrics: str) -> dict[tuple[str, str], list[float]]:
    """``/metrics``' per-session stage latencies (ms) by (stage, quantile), one value per
    session (labels in any order: the exposition sorts them)."""
    out: dict[tuple[str, str], list[float]] = {}
    for line in metrics.splitlines():
        m = re.match(r"etf_stage_latency_seconds\{([^}]*)\} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels.get("stage", ""), labels.get("quantile", ""))
            out.setdefault(key, []).append(float(m.group(2)) * 1e3)
    return out


def per_session_values(metrics: str, name: str) -> list[float]:
    """One value per session of the ``/metrics`` series ``name`` (counters: its total)."""
    pat = re.compile(rf"{name}(?:_total)?\{{[^}}]*\}} (\S+)$")
    return [float(m.group(1)) for line in metrics.splitlines() if (m := pat.match(line))]


def tick_p99_ms(metrics: str) -> list[float]:
    """Each session's p99 compute per tick (ms) from ``/metrics``."""
    return stage_latencies_ms(metrics).get(("tick", "0.99"), [])


def _waited_children_cpu() -> float:
    """CPU seconds of this process's finished children (the peers' client process)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _serve_flags(root: Path) -> set[str]:
    """The options ``etf serve`` takes in the checkout at ``root``."""
    out = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"],
                         capture_output=True, text=True, cwd=root, timeout=120)
    return set(re.findall(r"(--[a-z][a-z-]+)", out.stdout))


def _start_server(root: Path, args, admit_headroom: float = 0.0
                  ) -> tuple[subprocess.Popen, str]:
    port, cport = _free_port(), _free_port()
    flags = _serve_flags(root)
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--control-port",
           str(cport), "--max-sessions", "64", "--fps", str(args.fps)]
    if "--admit-headroom" in flags:  # 0: the benchmark, not admission, sets the load
        cmd += ["--admit-headroom", str(admit_headroom)]
    if "--render-in" in flags:
        cmd += ["--render-in", args.render_in]
    if args.compute_budget is not None and "--compute-budget-ms" in flags:
        cmd += ["--compute-budget-ms", str(args.compute_budget)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, cwd=root)
    server.stdout.readline()
    return server, f"http://127.0.0.1:{port}"


def _level(server: subprocess.Popen, url: str, n: int, args) -> dict:
    """N peers against a running server for ``args.seconds``."""
    cpu0 = process_cpu_seconds(server.pid)
    peers0 = _waited_children_cpu()
    w0 = time.monotonic()
    nice = ["nice", "-n", str(args.peers_nice)] if args.peers_nice else []
    proc = subprocess.run(
        [*nice, sys.executable, __file__, "_clients", url, str(n), str(args.seconds)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    per, text = got["per_session"], got["metrics"]
    wall = time.monotonic() - w0
    cpu = (process_cpu_seconds(server.pid) - cpu0) / wall
    peers_cpu = (_waited_children_cpu() - peers0) / wall
    p99 = tick_p99_ms(text)
    ok = all(p["fps"] >= args.fps - 1 and (p["max_gap_ms"] or 1e9) <= 200
             for p in per) and (max(p99) if p99 else 0) < 1000 / args.fps
    # what a viewer sees: the rate, and frames arriving on time (p99 gap within 2.5 periods)
    rate_held = all(p["fps"] >= args.fps - 1 and (p["p99_gap_ms"] or 1e9) <= 2500 / args.fps
                    for p in per)
    return {"sessions": n, "ok": ok, "rate_held": rate_held, "per_session": per,
            "server_cpu_cores": round(cpu, 2),
            "server_cpu_cores_per_session": round(cpu / n, 3),
            "peers_cpu_cores": round(peers_cpu, 2),
            "tick_p99_ms_max": round(max(p99), 1) if p99 else None,
            # how long past its release time a frame left (its compute overran the budget)
            "late_p99_ms_max": round(max(late), 1) if (
                late := stage_latencies_ms(text).get(("late", "0.99"))) else None,
            # the sessions' audio: jitter buffer underflows (each an audible gap) and the
            # jitter buffer's target at the end (it adapts to how late packets arrive)
            "audio_underflows": per_session_values(text, "etf_audio_underflows"),
            "jitter_target_ms": per_session_values(text, "etf_audio_buffer_target_ms")}


def _bench_render_fps() -> float:
    """This machine's bench_render fps now (the default face at 512x512, 200 frames)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_render.py"),
                        "--frames", "200", "--out", tmp], check=True, cwd=ROOT,
                       capture_output=True, timeout=600)
        return json.loads((Path(tmp) / "render_cpu.json").read_text())["fps"]


def capacity(args) -> dict:
    """Levels of 1.. sessions against ``etf serve``; with ``--baseline DIR`` also against the
    server of the checkout in DIR (started beside ours, each level run on both in turn so a
    drifting machine weighs on both alike), with this machine's bench_render fps before
    and after."""
    servers = {"ours": ROOT}
    if args.baseline:
        servers["baseline"] = Path(args.baseline).resolve()
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    levels: dict[str, list[dict]] = {name: [] for name in servers}
    render_fps = [_bench_render_fps()] if args.baseline else []
    try:
        for name, root in servers.items():
            running[name] = _start_server(root, args)
        for n in range(args.min_sessions, args.max_sessions + 1):
            for name, (server, url) in running.items():
                lv = _level(server, url, n, args)
                levels[name].append(lv)
                print(f"{name}: {n} sessions: {'ok' if lv['ok'] else 'FAIL'} (rate held: "
                      f"{lv['rate_held']})  fps {[p['fps'] for p in lv['per_session']]}  "
                      f"gap p99 {[p['p99_gap_ms'] for p in lv['per_session']]} ms  server cores "
                      f"{lv['server_cpu_cores']:.2f}  peers' cores {lv['peers_cpu_cores']:.2f}"
                      f"  p99 tick {lv['tick_p99_ms_max']} ms", flush=True)
                time.sleep(2.0)  # sessions from the last level close
            if not args.keep_going and not all(lv[-1]["ok"] for lv in levels.values()):
                break
    finally:
        for server, _ in running.values():
            server.terminate()
            server.wait(10)
    if args.baseline:
        render_fps.append(_bench_render_fps())
    passing = [lv["sessions"] for lv in levels["ours"] if lv["ok"]]
    held = [lv["sessions"] for lv in levels["ours"] if lv["rate_held"]]
    out = {"fps": args.fps, "seconds_per_level": args.seconds, "render_in": args.render_in,
           "peers_nice": args.peers_nice,
           "max_sessions_ok": max(passing) if passing else 0,
           "max_sessions_rate_held": max(held) if held else 0, "levels": levels["ours"]}
    if args.baseline:
        root = servers["baseline"]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=root).stdout.strip()
        base_ok = [lv["sessions"] for lv in levels["baseline"] if lv["ok"]]
        base_held = [lv["sessions"] for lv in levels["baseline"] if lv["rate_held"]]
        out["baseline"] = {"commit": commit, "max_sessions_ok": max(base_ok) if base_ok else 0,
                           "max_sessions_rate_held": max(base_held) if base_held else 0,
                           "levels": levels["baseline"]}
        out["bench_render_fps_before_after"] = render_fps
        out["cpu_per_session_baseline_over_ours"] = [
            round(b["server_cpu_cores"] / o["server_cpu_cores"], 2)
            for o, b in zip(levels["ours"], levels["baseline"], strict=False)]
    return out


def admission(args) -> dict:
    """``etf serve`` with admission on (``--admit-headroom``, the server's default unless
    given): peers join one at a time until one is refused; the admitted ones' rate while a
    last peer is refused too."""
    server, url = _start_server(ROOT, args, admit_headroom=args.admit_headroom)
    try:
        cpu0, w0 = process_cpu_seconds(server.pid), time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "_admission", url, str(args.max_sessions),
             str(args.join_s), str(args.seconds)],
            capture_output=True, text=True, cwd=ROOT, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        cpu = (process_cpu_seconds(server.pid) - cpu0) / (time.monotonic() - w0)
    finally:
        server.terminate()
        server.wait(10)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    per = got["per_session"]
    got.update({
        "admit_headroom": args.admit_headroom, "join_every_s": args.join_s,
        "server_cpu_cores_whole_run": round(cpu, 2),
        "rate_held": all(p["fps"] >= args.fps - 1 and (p["p99_gap_ms"] or 1e9)
                         <= 2500 / args.fps for p in per),
    })
    print(f"admitted {got['admitted']}; refused: "
          f"{[a['answer'] for a in got['attempts'] if not a['admitted']]}; fps "
          f"{[p['fps'] for p in per]}, p99 gap {[p['p99_gap_ms'] for p in per]} ms",
          flush=True)
    return got


def machine() -> dict:
    import aiortc

    return machine_info(aiortc=aiortc.__version__)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_clients":
        url, n, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(asyncio.run(_clients(url, n, seconds))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_admission":
        url, n, join_s, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
            float(sys.argv[5])
        print(json.dumps(asyncio.run(_admission(url, n, join_s, seconds))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="all",
                    choices=["all", "glass", "capacity", "admission"])
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--lookahead", type=float, default=60.0,
                    help="the phone recogniser's commit delay (ms)")
    ap.add_argument("--coart", type=float, default=0.0,
                    help="how far coarticulation looks ahead (ms)")
    ap.add_argument("--anticipation", type=float, default=40.0,
                    help="how far the mouth leads its sound (ms)")
    ap.add_argument("--jitter", type=float, default=60.0,
                    help="the jitter buffer's target (ms; where it starts when adaptive)")
    ap.add_argument("--jitter-fixed", action="store_true",
                    help="keep the jitter buffer at --jitter (the server's --jitter-fixed)")
    ap.add_argument("--onsets", type=int, default=9,
                    help="glass: utterances (each after 1.6 s of silence) to time")
    ap.add_argument("--compute-budget", type=float, default=None,
                    help="the server's --compute-budget-ms (default: its own)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--min-sessions", type=int, default=1, help="capacity: the first level")
    ap.add_argument("--max-sessions", type=int, default=8)
    ap.add_argument("--keep-going", action="store_true",
                    help="capacity: measure every level up to --max-sessions, not only up to "
                    "the first that fails")
    ap.add_argument("--peers-nice", type=int, default=0,
                    help="capacity: run the peers at this niceness (19: they take only the CPU "
                    "the server leaves, closer to a server whose peers are elsewhere)")
    ap.add_argument("--render-in", choices=("processes", "threads"), default="processes",
                    help="the server's --render-in (capacity)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="capacity: also measure the server of the checkout in DIR (e.g. a "
                    "git worktree of an older commit), level by level beside ours")
    ap.add_argument("--admit-headroom", type=float, default=0.75,
                    help="admission: the server's --admit-headroom (its default: 0.75)")
    ap.add_argument("--join-s", type=float, default=6.0,
                    help="admission: seconds between peers joining")
    ap.add_argument("-o", "--output", default=None,
                    help="default: benchmarks/results/live_latency.json "
                    "(admission: live_admission.json)")
    args = ap.parse_args()
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    if args.what == "admission":
        out["admission"] = admission(args)
        path = Path(args.output or RESULTS / "live_admission.json")
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")
        return
    args.output = args.output or str(RESULTS / "live_latency.json")
    if args.what != "all" and Path(args.output).is_file():  # keep the other part's result
        kept = json.loads(Path(args.output).read_text())
        other = "capacity" if args.what == "glass" else "glass_to_glass"
        if other in kept:
            out[other] = kept[other]
            out[f"{other}_date"] = kept.get(f"{other}_date", kept.get("date"))
            out[f"{other}_machine"] = kept.get(f"{other}_machine", kept.get("machine"))
    if args.what in ("all", "glass"):
        out["glass_to_glass"] = glass(args)
        print(json.dumps(out["glass_to_glass"]["breakdown_ms"], indent=1))
        print("video g2g median", out["glass_to_glass"]["video_glass_to_glass_ms_median"],
              "audio", out["glass_to_glass"]["audio_roundtrip_ms_median"])
    if args.what in ("all", "capacity"):
        out["capacity"] = capacity(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
