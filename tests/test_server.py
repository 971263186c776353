"""The live server with real aiortc peers on loopback (WebRTC, RTP, Opus, VP8, WebSocket).

One server serves the module; each test drives it with real clients from ``server/client.py``
and measures what arrives: frame cadence and pts, the mouth re-detected on received frames,
audio/video alignment, emotion switches, and every kind of bad input while another session
keeps streaming.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("aiortc")
pytest.importorskip("websockets")

from served import OPENED  # noqa: E402

from engines.face.face_metrics import (  # noqa: E402
    best_lag_corr,
    brow_raise,
    face_box,
    frame_landmarks,
    loudness_envelope,
    mouth_openings,
)
from engines.media.audio_io import load_audio  # noqa: E402
from server.app import BackgroundServer, ServerConfig  # noqa: E402
from server.cli import builtin_sentence  # noqa: E402
from server.client import AvatarClient  # noqa: E402
from server.session import SessionConfig  # noqa: E402

FPS = 25.0
P = 1.0 / FPS
LEAD_S, TAIL_S = 1.3, 2.0


@pytest.fixture(scope="module")
def warp(identity):
    from engines.render import texture_warp

    return texture_warp.prepare(identity)


@pytest.fixture(scope="module")
def server(identity, warp):
    cfg = SessionConfig(fps=FPS, idle_timeout_s=2.0, connect_timeout_s=5.0)
    # admit_headroom 0: these tests run sessions side by side on whatever CI machine; the
    # headroom rule has its own test (test_offers_are_refused_without_headroom)
    with BackgroundServer(identity, ServerConfig(port=0, max_sessions=3, admit_headroom=0.0),
                          cfg, warp=warp) as srv:
        yield srv


@pytest.fixture(scope="module")
def speech48():
    """1 s silence, the built-in sentence (~6 s), 2 s silence; 48 kHz mono."""
    pcm = load_audio(builtin_sentence(), 48000)
    return np.concatenate([np.zeros(int(LEAD_S * 48000), np.float32), pcm,
                           np.zeros(int(TAIL_S * 48000), np.float32)])


def run(coro):
    return asyncio.run(coro)


async def stream(url: str, audio, seconds: float, **kw) -> AvatarClient:
    async with AvatarClient(url, audio=audio, **kw) as c:
        await asyncio.sleep(seconds)
    return c


def cadence(client: AvatarClient) -> tuple[float, float]:
    """(frames per second, largest gap in s) of the received video after the first frame."""
    t = np.array([f.arrival for f in client.video])
    return (len(t) - 1) / (t[-1] - t[0]), float(np.diff(t).max())


def test_stream_lipsync_alignment_and_pts(server, identity, speech48):
    c = run(stream(server.url, speech48, len(speech48) / 48000 + 1.0))
    assert c.answer["fps"] == FPS
    fps, gap = cadence(c)
    assert 23.5 <= fps <= 26.5, fps
    assert gap < 0.3, gap
    pts = np.array([f.pts for f in c.video])
    assert np.all(np.diff(pts) > 0), "video pts must strictly increase"
    assert len(c.video) >= 0.9 * (len(speech48) / 48000) * FPS

    # The mouth, re-detected on the received frames, follows the speech.
    mouth = mouth_openings([f.image for f in c.video], face_box(identity.landmarks_photo))
    t_sent0 = c.sender_track.sent[0]
    delay = c.answer["pipeline_delay_ms"] / 1000.0
    # Content time of each received frame = arrival - first send - delay (approximately).
    content = np.array([f.arrival for f in c.video]) - t_sent0 - delay
    speech_end = len(speech48) / 48000 - TAIL_S
    during = (content > LEAD_S + 0.3) & (content < speech_end - 0.2)
    silence_after = content > speech_end + 0.6
    silence_before = (content > 0.1) & (content < LEAD_S - 0.3)
    assert silence_after.sum() >= 10 and silence_before.sum() >= 5, (
        content[:3], silence_before.sum())
    assert np.nanmax(mouth[during]) > OPENED, np.round(mouth[during], 3)
    assert np.nanmean(mouth[during]) > 2.5 * np.nanmean(mouth[silence_after]) + 0.02
    assert np.nanmax(mouth[silence_after]) < 0.12, "the mouth stays open in silence"
    assert np.nanmax(mouth[silence_before]) < 0.12

    # Audio/video alignment: the returned audio's loudness and the received mouth, both on
    # the receiver's clock, peak together at the same lag as the engine's own offline
    # rendering of the same speech (its mouth leads its sound by design); within one frame.
    from engines.render.pipeline import FaceAnimator

    # A frame leaves at the start of the content it carries: centres are half a frame later.
    a_times = np.array([a.arrival for a in c.audio_in]) + 0.01
    v_times = np.array([f.arrival for f in c.video]) + P / 2
    a_rms = np.array([np.sqrt(np.mean(a.image**2)) for a in c.audio_in])
    grid = np.arange(max(v_times[0], a_times[0]), min(v_times[-1], a_times[-1]), P)
    mouth_grid = np.interp(grid, v_times, np.nan_to_num(mouth))
    env_grid = np.interp(grid, a_times, a_rms)
    r_live, lag_live = best_lag_corr(mouth_grid, env_grid, max_lag=6)

    pcm16 = load_audio(builtin_sentence(), 16000)
    pcm16 = np.concatenate([np.zeros(int(LEAD_S * 16000), np.float32), pcm16,
                            np.zeros(int(TAIL_S * 16000), np.float32)])
    live = server.server.session_config
    animator = FaceAnimator(identity, FPS, phone_lookahead_ms=live.phone_lookahead_ms,
                            coart_future_ms=live.coart_future_ms,
                            anticipation_ms=live.anticipation_ms)
    offline = [f.image for f in animator.render_all(pcm16)]
    mouth_off = mouth_openings(offline, face_box(identity.landmarks_photo))
    env_off = loudness_envelope(pcm16, len(offline), FPS)
    r_off, lag_off = best_lag_corr(mouth_off, env_off, max_lag=6)
    assert r_live > 0.4 and r_off > 0.4, (r_live, r_off)
    assert abs(lag_live - lag_off) <= 1, f"live lag {lag_live} vs offline {lag_off} frames"


def test_idle_face_without_audio(server, identity):
    """A peer that sends no audio still gets a live face: it blinks, idles, mouth shut."""
    c = run(stream(server.url, None, 7.0))
    fps, gap = cadence(c)
    assert 23.5 <= fps <= 26.5 and gap < 0.3
    frames = [f.image for f in c.video[10:]]
    lm = frame_landmarks(frames, face_box(identity.landmarks_photo))
    assert np.nanmax(mouth_openings(frames, face_box(identity.landmarks_photo))) < 0.12
    eye_h = np.nanmean(lm[:, [37, 38, 43, 44], 1] - lm[:, [41, 40, 47, 46], 1], axis=1)
    assert np.nanmax(eye_h) - np.nanmin(eye_h) > 2.0, "no blink in 7 s"
    diffs = [np.abs(frames[i].astype(int) - frames[0]).mean() for i in range(0, len(frames), 10)]
    assert max(diffs) > 0.3, "the face is frozen"


async def _emotion_switch(url: str, identity) -> tuple[AvatarClient, float, dict]:
    async with AvatarClient(url, audio=None) as c:
        await c.open_control()
        hello = await c.wait_message(lambda m: m["type"] == "hello")
        assert hello["session"] == c.session and hello["emotion"] == "neutral"
        await asyncio.sleep(2.0)
        sent = await c.control({"v": 1, "type": "set_emotion", "emotion": "surprise",
                                "intensity": 1.0, "id": "e1"})
        ack = await c.wait_message(lambda m: m.get("id") == "e1")
        await asyncio.sleep(1.5)
    return c, sent, ack


def test_emotion_switch_shows_within_two_frames_plus_transition(server, identity):
    c, sent, ack = run(_emotion_switch(server.url, identity))
    assert ack["type"] == "ack" and ack["emotion"] == "surprise"
    arrivals = np.array([f.arrival for f in c.video])
    lm = frame_landmarks([f.image for f in c.video], face_box(identity.landmarks_photo))
    brows = brow_raise(lm)
    before = brows[(arrivals > sent - 1.0) & (arrivals < sent)]
    final = np.nanmedian(brows[arrivals > sent + 1.0])
    change = final - np.nanmedian(before)
    # MEAD-measured surprise lifts the brows 0.03-0.06 eye distances (dlib, per speaker)
    assert change > 0.025, f"surprise did not raise the brows ({change:.3f})"
    # Not a jump: some frame shows the blend part way.
    # Within 2 frames + the 250 ms transition (+ loopback/decoding slack) it is all there.
    deadline = sent + 2 * P + 0.25 + 0.08
    settled = brows[arrivals >= deadline][:5] - np.nanmedian(before)
    # The median says it is all there; every frame being past half says none lags behind.
    # (One frame in a CI run read 0.70 of the change amid 0.9-1.0: dlib on a codec frame.)
    assert np.nanmedian(settled) > 0.8 * change, (settled, change)
    assert np.nanmin(settled) > 0.5 * change, (settled, change)
    partway = brows[(arrivals > sent) & (arrivals < deadline)]
    assert np.any(np.abs(partway - np.nanmedian(before)) > 0.1 * change), "no visible change"
    assert np.any(np.abs(partway - final) > 0.1 * change), "the switch was a jump"


async def _hostile(url: str, control_port: int, port: int) -> dict:
    import aiohttp
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    out: dict = {}
    async with AvatarClient(url, audio=None) as victim, aiohttp.ClientSession() as http:
        await asyncio.sleep(0.5)
        start = time.monotonic()

        async def post(data, ctype="application/json"):
            async with http.post(f"{url}/offer", data=data,
                                 headers={"Content-Type": ctype}) as r:
                return r.status, await r.json()

        good_sdp = victim.pc.localDescription.sdp
        out["garbage_sdp"] = await post(json.dumps({"type": "offer", "sdp": "v=0\r\nnonsense"}))
        out["not_json"] = await post(b"{not json")
        out["wrong_ctype"] = await post(b"hello", "text/plain")
        out["huge"] = await post(b"{" + b" " * 200_000 + b"}")
        out["answer_type"] = await post(json.dumps({"type": "answer", "sdp": good_sdp}))
        cut = good_sdp.find("m=video")  # the offer without its video section
        out["no_video"] = await post(json.dumps({"type": "offer", "sdp": good_sdp[:cut]}))
        out["array"] = await post(json.dumps([1, 2]))
        async with http.get(f"{url}/static/../server/app.py") as r:
            out["traversal"] = r.status

        # Control channel abuse on the victim's own session.
        ws = await connect(victim.answer["control_url"], max_size=2**20)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        replies = {}
        bad = {
            "bad_json": "{nope",
            "not_object": "[1]",
            "bad_version_missing": json.dumps({"type": "ping"}),
            "bad_version": json.dumps({"v": 2, "type": "ping"}),
            "unknown_type": json.dumps({"v": 1, "type": "explode"}),
            "bad_emotion": json.dumps({"v": 1, "type": "set_emotion", "emotion": "smug"}),
            "bad_intensity": json.dumps({"v": 1, "type": "set_emotion", "emotion": "sad",
                                         "intensity": 7}),
            "nan_intensity": '{"v": 1, "type": "set_intensity", "intensity": NaN}',
            "extra_field": json.dumps({"v": 1, "type": "ping", "x": 1}),
            "too_large": json.dumps({"v": 1, "type": "ping", "pad": "x" * 6000}),
        }
        for name, msg in bad.items():
            await ws.send(msg)
            replies[name] = json.loads(await ws.recv())
        await ws.send(b"\x00\x01binary")
        replies["binary"] = json.loads(await ws.recv())
        await ws.send(json.dumps({"v": 1, "type": "ping", "id": 7}))
        replies["alive"] = json.loads(await ws.recv())
        out["control"] = replies
        # Flood: far beyond the rate limit; dropped with rate_limited, connection stays open.
        for i in range(300):
            await ws.send(json.dumps({"v": 1, "type": "ping", "id": i}))
        got = []
        try:
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
        except TimeoutError:
            pass
        out["flood"] = got
        await asyncio.sleep(1.5)
        await ws.send(json.dumps({"v": 1, "type": "ping", "id": "after"}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 2.0))
            if m.get("id") == "after":
                out["after_flood"] = m
                break
        # Oversized beyond the hard limit: the connection is closed with 1009.
        try:
            await ws.send("x" * 100_000)
            await asyncio.wait_for(ws.recv(), 2.0)
            out["hard_limit"] = None
        except ConnectionClosed as e:
            out["hard_limit"] = e.rcvd.code if e.rcvd else None
        # Unknown session and wrong paths are refused at the handshake.
        for key, path in (("unknown_session", "/control/nope"), ("bad_path", "/x")):
            try:
                await connect(f"ws://127.0.0.1:{control_port}{path}")
                out[key] = None
            except InvalidStatus as e:
                out[key] = e.response.status_code
        try:
            await connect(victim.answer["control_url"],
                          additional_headers={"Origin": "http://evil.example:9"})
            out["foreign_origin"] = None
        except InvalidStatus as e:
            out["foreign_origin"] = e.response.status_code
        out["window"] = (start, time.monotonic())
        await asyncio.sleep(0.5)
    out["victim"] = victim
    return out


def test_hostile_inputs_answered_while_another_session_streams(server):
    out = run(_hostile(server.url, server.server.control_port, server.server.http_port))
    assert out["garbage_sdp"][0] == 400
    assert out["garbage_sdp"][1]["error"] in ("bad_sdp", "no_video")
    assert out["not_json"][0] == 400 and out["not_json"][1]["error"] == "bad_json"
    assert out["wrong_ctype"][0] == 415
    assert out["huge"][0] == 413
    assert out["answer_type"][0] == 400 and "offer" in out["answer_type"][1]["message"]
    assert out["no_video"][0] == 400 and out["no_video"][1]["error"] in ("no_video", "bad_sdp")
    assert out["array"][0] == 400
    assert out["traversal"] in (403, 404)
    codes = {k: v.get("code") for k, v in out["control"].items()}
    assert codes == {
        "bad_json": "bad_json", "not_object": "not_object",
        "bad_version_missing": "bad_version", "bad_version": "bad_version",
        "unknown_type": "unknown_type", "bad_emotion": "bad_field",
        "bad_intensity": "bad_field", "nan_intensity": "bad_field", "extra_field": "bad_field",
        "too_large": "too_large", "binary": "no_audio_stream", "alive": None,
    }
    assert "smug" in out["control"]["bad_emotion"]["message"]
    assert out["control"]["alive"] == {**out["control"]["alive"], "type": "pong", "id": 7}
    kinds = [m.get("code") or m["type"] for m in out["flood"]]
    assert "rate_limited" in kinds and kinds.count("pong") < 100, kinds[:50]
    assert out["after_flood"]["type"] == "pong"
    assert out["hard_limit"] == 1009
    assert out["unknown_session"] == 404 and out["bad_path"] == 404
    assert out["foreign_origin"] == 403
    # The victim session kept streaming at full rate through all of it.
    victim = out["victim"]
    t0, t1 = out["window"]
    t = np.array([f.arrival for f in victim.video if t0 <= f.arrival <= t1])
    assert len(t) >= 0.85 * (t1 - t0) * FPS, (len(t), t1 - t0)
    # Client and server share this process's GIL on a 2-core CI box: one hiccup of a few
    # frames is tolerated (a CI run saw a single 0.31 s gap), a stall or repeated ones not.
    gaps = np.diff(t)
    assert (gaps >= 0.25).sum() <= 1 and gaps.max() < 0.5, np.sort(gaps)[-5:]


def test_capacity_and_session_release(server):
    async def scenario():
        clients = []
        for _ in range(3):
            c = AvatarClient(server.url, audio=None)
            await c.connect()
            clients.append(c)
        with pytest.raises(ConnectionError, match="503"):
            await AvatarClient(server.url, audio=None).connect()
        for _ in range(50):  # all three stream at once
            if all(len(c.video) > 10 for c in clients):
                break
            await asyncio.sleep(0.1)
        assert all(len(c.video) > 10 for c in clients), [len(c.video) for c in clients]
        for c in clients:
            await c.close()
        for _ in range(50):
            if not server.server.registry.sessions:
                break
            await asyncio.sleep(0.1)
        return len(server.server.registry.sessions)

    assert run(scenario()) == 0


def test_vanished_peer_is_freed_while_another_streams(server, tmp_path):
    """A client process killed mid-stream (no goodbye) frees its session within seconds,
    and a second session streams on undisturbed."""
    script = tmp_path / "peer.py"
    script.write_text(
        "import asyncio, sys\n"
        "from server.client import AvatarClient\n"
        "async def main():\n"
        "    c = AvatarClient(sys.argv[1], audio=None)\n"
        "    await c.connect()\n"
        "    print('connected', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    registry = server.server.registry

    async def scenario():
        async with AvatarClient(server.url, audio=None) as other:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), server.url, stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": root}, cwd=root)
            try:
                assert (await proc.stdout.readline()).strip() == b"connected"
                for _ in range(100):
                    if len(registry.sessions) == 2:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.5)  # both streaming
                assert len(registry.sessions) == 2
                proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                while len(registry.sessions) > 1 and time.monotonic() - killed < 10:
                    await asyncio.sleep(0.1)
                freed = time.monotonic() - killed
                await asyncio.sleep(0.5)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
        for _ in range(50):  # the second one was closed politely: gone at once
            if not registry.sessions:
                break
            await asyncio.sleep(0.1)
        t = np.array([f.arrival for f in other.video if killed - 1 <= f.arrival])
        return freed, len(registry.sessions), t

    freed, left, t = run(scenario())
    assert freed < 2.0 + 3.0, freed  # idle timeout 2 s + watchdog period + slack
    assert left == 0
    assert len(t) >= 0.85 * (t[-1] - t[0]) * FPS and np.diff(t).max() < 0.3


def test_token_required(identity, warp):
    cfg = SessionConfig(fps=FPS)
    with BackgroundServer(identity, ServerConfig(port=0, token="s3cret"), cfg,
                          warp=warp) as srv:
        async def scenario():
            import aiohttp
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            with pytest.raises(ConnectionError, match="401"):
                await AvatarClient(srv.url, audio=None).connect()
            with pytest.raises(ConnectionError, match="401"):
                await AvatarClient(srv.url, audio=None, token="wrong").connect()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{srv.url}/metrics") as r:
                    assert r.status == 401
                async with http.get(f"{srv.url}/metrics",
                                    headers={"Authorization": "Bearer s3cret"}) as r:
                    assert r.status == 200
                    text = await r.text()
                async with http.get(f"{srv.url}/health") as r:
                    assert (await r.json())["token_required"] is True
            assert 'etf_sessions_refused_total{reason="token"} 2' in text
            async with AvatarClient(srv.url, audio=None, token="s3cret") as c:
                with pytest.raises(InvalidStatus) as e:
                    await connect(c.answer["control_url"])
                assert e.value.response.status_code == 401
                await c.open_control()  # appends the token
                await c.wait_message(lambda m: m["type"] == "hello")
                await asyncio.sleep(1.0)
            assert len(c.video) > 10

        run(scenario())


def test_metrics_and_health(server):
    async def scenario():
        import aiohttp

        async with AvatarClient(server.url, audio=None) as c:
            await asyncio.sleep(1.5)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.url}/health") as r:
                    health = await r.json()
                async with http.get(f"{server.url}/metrics") as r:
                    metrics = await r.text()
        return c, health, metrics

    c, health, metrics = run(scenario())
    assert health["status"] == "ok" and health["sessions"] >= 1
    assert "etf_frames_total{session=" in metrics
    assert c.session not in metrics, "metrics must not reveal session ids (they grant control)"
    for line in metrics.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2, line
    # prometheus_client's own parser reads it, with the names the README lists.
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, s.labels.get("stage"), s.labels.get("quantile")): s.value
               for fam in text_string_to_metric_families(metrics) for s in fam.samples}
    names = {k[0] for k in samples}
    assert {"etf_sessions_active", "etf_sessions_max", "etf_sessions_started_total",
            "etf_frames_total", "etf_frames_dropped_total", "etf_fps", "etf_uptime_seconds",
            "etf_audio_underflows_total", "etf_audio_buffer_ms", "etf_audio_buffer_target_ms",
            "etf_speech_queued_ms",
            "etf_interrupts_total", "etf_stage_latency_seconds"} <= names, names
    assert samples[("etf_sessions_active", None, None)] >= 1
    assert 0 < samples[("etf_stage_latency_seconds", "frame", "0.5")] < 1.0


def test_behind_a_proxy_origins_and_public_control_url(identity, warp):
    cfg = ServerConfig(port=0, public_control_url="wss://avatar.example/ctl/",
                       allowed_origins=("https://avatar.example",))
    with BackgroundServer(identity, cfg, SessionConfig(fps=FPS), warp=warp) as srv:
        async def scenario():
            from websockets.asyncio.client import connect
            from websockets.exceptions import InvalidStatus

            async with AvatarClient(srv.url, audio=None) as c:
                assert c.answer["control_url"] == f"wss://avatar.example/ctl/control/{c.session}"
                local = f"ws://127.0.0.1:{srv.server.control_port}/control/{c.session}"
                ws = await connect(local, additional_headers={"Origin": "https://avatar.example"})
                assert json.loads(await ws.recv())["type"] == "hello"
                await ws.close()
                with pytest.raises(InvalidStatus) as e:
                    await connect(local, additional_headers={
                        "Origin": f"http://127.0.0.1:{srv.server.http_port}"})
                assert e.value.response.status_code == 403

        run(scenario())


def test_offers_are_refused_while_sessions_run_slow(server):
    """Admission control: when a running session falls below 90% of its frame rate, a new
    offer gets 503 "overloaded" instead of slowing everyone further."""
    class Slow:
        closed = False

        def stats(self, public=False):
            return {"session": "s99", "media_s": 10.0, "fps": 15.0}

    registry = server.server.registry
    registry.sessions["slow"] = Slow()
    try:
        with pytest.raises(ConnectionError, match="overloaded"):
            run(AvatarClient(server.url, audio=None).connect())
        import urllib.error
        import urllib.request

        offer = urllib.request.Request(f"{server.url}/offer", method="POST",
                                       data=json.dumps({"sdp": "v=0", "type": "offer"}).encode(),
                                       headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(offer, timeout=5)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "5"
        assert json.loads(refused.value.read())["retry_after_s"] == 5
    finally:
        registry.sessions.pop("slow")
    assert registry.refused["overloaded"] >= 1
    c = run(stream(server.url, None, 1.0))  # fine again once nothing runs slow
    assert len(c.video) > 5


def test_offers_are_refused_without_headroom(server):
    """Rendering on threads, a running session that keeps its rate but needs over 75% of
    its frame period per frame (p99) leaves no room; rendering in processes, free CPU under
    one session's measured cost / 0.75 does. A new offer then gets 503 "overloaded" saying
    why; a session well inside its budget, or a fresh one (under 3 s of media), does not
    block."""
    class Busy:
        closed = False

        def __init__(self, p99: float, media_s: float = 10.0) -> None:
            self.p99, self.media_s = p99, media_s

        def stats(self, public=False):
            return {"session": "s98", "media_s": self.media_s, "fps": 25.0,
                    "latency_ms": {"tick": {"p50": 10.0, "p99": self.p99, "max": self.p99}}}

    class Meter:  # the CPU meter's reading: (free cores, cores the server uses)
        def __init__(self, free: float, used: float) -> None:
            self.reading = (free, used)

        def rates(self):
            return self.reading

    registry = server.server.registry
    pool, cpu = registry.pool, registry.cpu
    registry.admit_headroom = 0.75
    try:
        # render threads: the p99 rule
        registry.pool, registry.cpu = None, None
        registry.sessions["busy"] = Busy(p99=36.0)
        assert "36 ms of its 40 ms" in registry.overloaded()
        with pytest.raises(ConnectionError, match="overloaded"):
            run(AvatarClient(server.url, audio=None).connect())
        registry.sessions["busy"] = Busy(p99=25.0)
        assert registry.overloaded() is None
        registry.sessions["busy"] = Busy(p99=60.0, media_s=1.0)
        assert registry.overloaded() is None
        # render processes: the CPU rule (p99 alone no longer refuses)
        registry.pool = pool
        registry.sessions["busy"] = Busy(p99=36.0)
        registry.cpu = Meter(free=0.34, used=0.42)  # needs 0.56 free
        assert "costs 0.42 CPU cores and 0.34 are free" in registry.overloaded()
        with pytest.raises(ConnectionError, match="overloaded"):
            run(AvatarClient(server.url, audio=None).connect())
        registry.cpu = Meter(free=0.71, used=0.42)
        assert registry.overloaded() is None
        registry.sessions["busy"] = Busy(p99=36.0, media_s=1.0)  # nothing settled yet
        registry.cpu = Meter(free=0.1, used=0.42)
        assert registry.overloaded() is None
        registry.sessions["busy"] = Busy(p99=36.0)
        registry.admit_headroom = 0.0  # off
        assert registry.overloaded() is None
    finally:
        registry.sessions.pop("busy", None)
        registry.admit_headroom = 0.0
        registry.pool, registry.cpu = pool, cpu


def test_jitter_buffer_adapts_to_a_smooth_link(server, speech48):
    """On loopback the peer's packets arrive on time (measured on their RTP clock), so the
    jitter buffer's target falls from its 60 ms start toward its 20 ms floor, and the depth
    follows at a pause, without an underflow. The peer sends from this same machine: once
    in CI its sender fell behind for the whole clip (the buffer held 175 ms on average);
    the link was then not smooth, and the target must have followed it up instead."""
    async def scenario():
        async with AvatarClient(server.url, audio=speech48) as c:
            await asyncio.sleep(len(speech48) / 48000)
            return server.server.registry.get(c.answer["session"]).stats()

    st = run(scenario())
    assert st["audio"]["received_s"] > 5
    late = st["queues"]["audio_lateness_ms"]
    assert late is not None, st["queues"]
    if late > 30:  # a sender that fell behind: the target rose with its lateness (less
        # what it may have grown since the target's last update, ~0.5 s ago)
        assert st["queues"]["audio_target_ms"] >= min(late - 20, 130), st["queues"]
        assert st["audio"]["underflows"] == 0, st["audio"]
        return
    assert st["queues"]["audio_target_ms"] <= 40, st["queues"]
    # read between takes: the depth after a take plus what arrived since (< a tick + a
    # packet); its mean over the session includes the first seconds at 60 ms
    assert st["queues"]["audio_ms"] <= st["queues"]["audio_target_ms"] + 60, st["queues"]
    assert st["queues"]["audio_mean_ms"] < 55, st["queues"]
    assert st["audio"]["trims"] >= 1 and st["audio"]["underflows"] == 0, st["audio"]


def test_sessions_render_in_their_own_processes(server):
    """Each session renders in its own render process (stats name it, its CPU is counted);
    one that cannot get a process renders on a thread and streams all the same."""
    from server.render_worker import WorkerError

    async def two():
        async with AvatarClient(server.url, audio=None) as a, \
                AvatarClient(server.url, audio=None) as b:
            await asyncio.sleep(1.5)
            stats = [server.server.registry.get(c.answer["session"]).stats()
                     for c in (a, b)]
        return a, b, stats

    a, b, stats = run(two())
    pids = [st["render_process"] for st in stats]
    assert all(pids) and pids[0] != pids[1], pids
    assert all(st["render_cpu_s"] > 0 for st in stats), stats
    assert min(len(a.video), len(b.video)) > 20
    # the render processes encode the VP8 the peers decoded (after the first frames)
    assert all(st["video_encoder"] == "render process" for st in stats), stats
    assert all(st["latency_ms"]["encode"]["p50"] > 0 for st in stats), stats

    async def key_frame():  # a viewer's key-frame request (PLI) reaches the render process
        async with AvatarClient(server.url, audio=None) as c:
            await asyncio.sleep(1.0)
            session = server.server.registry.get(c.answer["session"])
            n = len(c.video)
            session.video_sender._RTCRtpSender__force_keyframe = True
            await asyncio.sleep(1.0)
            return session.stats()["key_frames_asked"], len(c.video) - n

    asked, more = run(key_frame())
    assert asked == 1 and more > 15, (asked, more)

    registry = server.server.registry
    acquire = registry.pool.acquire

    async def no_process():
        raise WorkerError("test: no render process")

    registry.pool.acquire = no_process
    try:
        async def one():
            async with AvatarClient(server.url, audio=None) as c:
                await asyncio.sleep(1.5)
                st = registry.get(c.answer["session"]).stats()
            return c, st

        c, st = run(one())
    finally:
        registry.pool.acquire = acquire
    assert st["render_process"] is None and len(c.video) > 20


def test_thirty_fps_sessions(identity, warp):
    with BackgroundServer(identity, ServerConfig(port=0), SessionConfig(fps=30.0),
                          warp=warp) as srv:
        c = run(stream(srv.url, None, 3.0))
    assert c.answer["fps"] == 30.0
    fps, gap = cadence(c)
    assert 28.0 <= fps <= 32.0 and gap < 0.3, (fps, gap)
    steps = np.diff([f.pts for f in c.video])
    assert np.all(steps > 0) and np.median(steps) == 3000  # 90 kHz / 30


def test_capacity_check_reads_p99_whatever_the_label_order():
    """/metrics writes labels sorted (quantile first); the capacity benchmark once matched
    only session,stage,quantile and so checked no p99 at all."""
    from benchmarks.live_latency import tick_p99_ms

    text = "\n".join([
        'etf_stage_latency_seconds{quantile="0.99",session="s1",stage="tick"} 0.0331',
        'etf_stage_latency_seconds{quantile="0.5",session="s1",stage="tick"} 0.0120',
        'etf_stage_latency_seconds{quantile="0.99",session="s1",stage="frame"} 0.0300',
        'etf_stage_latency_seconds{session="s2",stage="tick",quantile="0.99"} 0.0450',
    ])
    assert tick_p99_ms(text) == pytest.approx([33.1, 45.0])


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_capacity_check_counts_the_render_processes():
    """The server's CPU in the capacity benchmark includes its children (the render
    processes): a busy child is counted with tree=True, not without, and still once it has
    ended and been waited for (the server stops an ended session's process)."""
    from benchmarks.live_latency import descendants, process_cpu_seconds

    script = ("import subprocess, sys, time\n"
              "c = subprocess.Popen([sys.executable, '-c', "
              "'import time\\nt=time.time()\\nwhile time.time()-t<2: pass'])\n"
              "c.wait()\n"
              "print('reaped', flush=True)\n"
              "time.sleep(3)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True)
    try:
        for _ in range(60):  # until the child runs
            if descendants(parent.pid):
                break
            time.sleep(0.05)
        assert descendants(parent.pid), "the busy child is found"
        time.sleep(1.2)
        tree, alone = process_cpu_seconds(parent.pid), process_cpu_seconds(parent.pid, False)
        assert tree - alone > 0.5, (tree, alone)
        assert parent.stdout.readline().strip() == "reaped"
        assert not descendants(parent.pid)
        tree, alone = process_cpu_seconds(parent.pid), process_cpu_seconds(parent.pid, False)
        assert tree - alone > 1.2, (tree, alone)
    finally:
        parent.wait(10)


def test_soak_counts_windows_under_rate_and_reads_below_rate():
    """The soak benchmark's 10 s windows catch a 2.5 s stall that the run's mean fps
    (~24.75) would hide, and it reads the server's below-rate seconds per session."""
    from benchmarks.live_soak import _below_rate_seconds, _window_fps

    k = np.arange(750)
    t = (k[(k < 300) | (k >= 362)] + 0.5) * 0.04  # nothing received for 2.5 s at 12 s
    assert _window_fps(t, 30.0) == [25.0, 18.8, 25.0]
    text = "\n".join(['etf_below_rate_seconds_total{session="1"} 0.0',
                      'etf_below_rate_seconds_created{session="1"} 1.7e9',
                      'etf_below_rate_seconds_total{session="2"} 4.5'])
    assert _below_rate_seconds(text) == [0.0, 4.5]


def test_looping_audio_track_repeats_its_samples():
    from server.client import FRAME, FileAudioTrack

    pcm = (np.arange(FRAME * 3 // 2, dtype=np.float32) / (FRAME * 2))  # 1.5 frames
    track = FileAudioTrack(pcm, loop=True)

    async def take(n):
        return [(await track.recv()).to_ndarray()[0] for _ in range(n)]

    got = np.concatenate(run(take(4)))
    want = (np.clip(np.resize(pcm, 4 * FRAME), -1, 1) * 32767).astype(np.int16)
    assert np.array_equal(got, want)



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_arenas_are_capped_on_glibc():
    """Eight threads that allocate get eight malloc arenas from glibc, two once capped."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    script = ("import ctypes, sys, threading\n"
              "from server.app import limit_malloc_arenas\n"
              "if sys.argv[1] == 'cap': assert limit_malloc_arenas()\n"
              "alive = threading.Barrier(8)\n"
              "def work():\n"
              "    keep = [bytes(4096 + k) for k in range(200)]\n"
              "    alive.wait()  # all eight threads live at once\n"
              "ts = [threading.Thread(target=work) for _ in range(8)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              "ctypes.CDLL(None).malloc_stats()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    arenas = {}
    for how in ("cap", "default"):
        out = subprocess.run([sys.executable, "-c", script, how], capture_output=True,
                             text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
        assert out.returncode == 0, out.stderr[-500:]
        arenas[how] = out.stderr.count("Arena ")
    assert arenas["cap"] <= 2 < arenas["default"], arenas


def test_stop_closes_each_peer_once_and_to_the_end(identity, warp, monkeypatch):
    """Stopping the server with viewers connected closes every peer connection exactly
    once, and no close is cancelled half-way (aiortc's transports would then fail at exit:
    "Task exception was never retrieved ... InvalidStateError")."""
    from aiortc import RTCPeerConnection

    closes: dict[int, list[str]] = {}
    real_close = RTCPeerConnection.close

    async def counted(pc):
        log = closes.setdefault(id(pc), [])
        log.append("started")
        try:
            await real_close(pc)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        log.append("done")

    monkeypatch.setattr(RTCPeerConnection, "close", counted)  # the clients' too
    cfg = SessionConfig(fps=FPS, idle_timeout_s=5.0, connect_timeout_s=5.0)
    srv = BackgroundServer(identity, ServerConfig(port=0, max_sessions=2, admit_headroom=0.0),
                           cfg, warp=warp).__enter__()
    clients = []
    try:
        async def connect():
            for _ in range(2):
                c = AvatarClient(srv.url, audio=None)
                await c.connect()
                clients.append(c)
            for _ in range(50):
                if all(len(c.video) > 5 for c in clients):
                    return
                await asyncio.sleep(0.1)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(connect())
        assert len(closes) == 0 and len(srv.server.peers) == 2
        ours = {id(pc) for pc in srv.server.peers.values()}
    finally:
        srv.__exit__(None, None, None)
    try:
        assert not srv.server.peers
        assert {k: closes.get(k) for k in ours} == {k: ["started", "done"] for k in ours}
    finally:
        for c in clients:
            loop.run_until_complete(c.close())
        loop.close()
