"""An agent speaks through the avatar: a real aiortc viewer that sends no microphone watches,
while a separate control connection pushes speech (PCM at 22.05 kHz), says text, interrupts.

What arrives at the viewer is measured: the returned audio, and the mouth re-detected on the
received frames, on the viewer's own clock.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("aiortc")
pytest.importorskip("websockets")

from served import OPENED  # noqa: E402

from engines.face.face_metrics import (  # noqa: E402
    best_lag_corr,
    face_box,
    loudness_envelope,
    mouth_openings,
)
from engines.media.audio_io import load_audio  # noqa: E402
from server.app import BackgroundServer, ServerConfig  # noqa: E402
from server.cli import builtin_sentence  # noqa: E402
from server.client import AvatarAgent, AvatarClient  # noqa: E402
from server.session import SessionConfig  # noqa: E402

FPS = 25.0
P = 1.0 / FPS
AGENT_RATE = 22050  # Piper's rate: not the 48 kHz of WebRTC
CLOSED = 0.12  # mouth opening below which the mouth is shut (as in test_server)


@pytest.fixture(scope="module")
def server(identity):
    cfg = SessionConfig(fps=FPS, idle_timeout_s=3.0, connect_timeout_s=5.0)
    with BackgroundServer(identity, ServerConfig(port=0, max_sessions=2, admit_headroom=0.0),
                          cfg) as srv:
        # One short session first, as a deployed server has served before its next viewer:
        # twice in CI the first session on a cold server (fresh clone, this module first)
        # reached its viewer with the mouth 0.3 s or more ahead of the heard speech, and
        # these tests measure sync in steady state. (Not reproduced here, cold or warm.)
        speech = load_audio(builtin_sentence(), AGENT_RATE)[:AGENT_RATE]
        asyncio.run(_push(srv.url, speech, AGENT_RATE, 1.5))
        yield srv


@pytest.fixture(scope="module")
def sentence():
    return load_audio(builtin_sentence(), AGENT_RATE)


def _timeline(c: AvatarClient, identity):
    """Received audio (arrival times of 20 ms frames, RMS) and video (times, mouth)."""
    a_t = np.array([a.arrival for a in c.audio_in]) + 0.01
    a_rms = np.array([np.sqrt(np.mean(a.image**2)) for a in c.audio_in])
    v_t = np.array([f.arrival for f in c.video]) + P / 2
    mouth = mouth_openings([f.image for f in c.video], face_box(identity.landmarks_photo))
    return a_t, a_rms, v_t, mouth


def _speech_span(a_t, a_rms, thr=0.01):
    loud = np.flatnonzero(a_rms > thr)
    return a_t[loud[0]], a_t[loud[-1]], len(loud) * 0.02


async def _push(url, pcm, rate, wait_s, interrupt_after=None):
    async with AvatarClient(url, audio=None) as viewer:
        await asyncio.sleep(1.0)
        async with AvatarAgent(viewer.answer["control_url"]) as agent:
            t_push = await agent.push(pcm, rate)
            t_int = None
            if interrupt_after is not None:
                await asyncio.sleep(interrupt_after)
                ack = await agent.interrupt()
                t_int = ack["_arrival"]
                assert ack["for"] == "interrupt" and ack["dropped_ms"] > 1000, ack
            await asyncio.sleep(wait_s)
            stats = await agent.request({"type": "get_stats"})
    return viewer, t_push, t_int, stats["stats"]


def test_pushed_speech_is_spoken_in_sync_to_a_watching_viewer(server, identity, sentence):
    dur = len(sentence) / AGENT_RATE
    c, t_push, _, stats = asyncio.run(_push(server.url, sentence, AGENT_RATE, dur + 2.5))
    assert stats["speech_queue"]["utterances"] == 1 and stats["speech_queue"]["queued_ms"] == 0
    a_t, a_rms, v_t, mouth = _timeline(c, identity)
    start, end, loud_s = _speech_span(a_t, a_rms)
    # The viewer hears the pushed speech: as long as the sentence's own loud part.
    ref16 = load_audio(builtin_sentence(), 16000)
    ref_rms = np.array([np.sqrt(np.mean(ref16[i:i + 320] ** 2))
                        for i in range(0, len(ref16) - 320, 320)])
    ref_loud = (ref_rms > 0.01).sum() * 0.02
    assert abs(loud_s - ref_loud) < 0.2 * ref_loud, (loud_s, ref_loud)
    assert start - t_push < 1.0, "speech took more than a second to reach the viewer"

    # The mouth moves while it is heard, and is shut before and after.
    during = (v_t > start + 0.3) & (v_t < end - 0.2)
    before = (v_t > t_push - 0.8) & (v_t < start - 0.3)
    after = v_t > end + 0.4
    assert before.sum() >= 5 and after.sum() >= 10
    assert np.nanmax(mouth[during]) > OPENED, np.round(mouth[during], 3)
    assert np.nanmean(mouth[during]) > 2.5 * np.nanmean(mouth[after]) + 0.02
    assert np.nanmax(mouth[after]) < CLOSED and np.nanmax(mouth[before]) < CLOSED

    # In sync: the received mouth and loudness peak together at the lag of the engine's own
    # offline rendering of the same speech, within one frame.
    from engines.render.pipeline import FaceAnimator

    grid = np.arange(max(v_t[0], a_t[0]), min(v_t[-1], a_t[-1]), P)
    r_live, lag_live = best_lag_corr(np.interp(grid, v_t, np.nan_to_num(mouth)),
                                     np.interp(grid, a_t, a_rms), max_lag=6)
    cfg = server.server.session_config
    anim = FaceAnimator(identity, FPS, phone_lookahead_ms=cfg.phone_lookahead_ms,
                        anticipation_ms=cfg.anticipation_ms,
                        coart_future_ms=cfg.coart_future_ms)
    pad = np.zeros(16000, np.float32)
    pcm16 = np.concatenate([pad, ref16, pad])
    offline = [f.image for f in anim.render_all(pcm16)]
    r_off, lag_off = best_lag_corr(
        mouth_openings(offline, face_box(identity.landmarks_photo)),
        loudness_envelope(pcm16, len(offline), FPS), max_lag=6)
    assert r_live > 0.4, r_live
    assert abs(lag_live - lag_off) <= 1, f"live lag {lag_live} vs offline {lag_off} frames"


def test_interrupt_stops_voice_and_mouth_together(server, identity, sentence):
    long = np.concatenate([sentence] * 3)  # ~18 s queued at once
    c, t_push, t_int, stats = asyncio.run(
        _push(server.url, long, AGENT_RATE, 2.5, interrupt_after=2.5))
    assert stats["speech_queue"]["interrupts"] == 1
    a_t, a_rms, v_t, mouth = _timeline(c, identity)
    _, end, _ = _speech_span(a_t, a_rms)
    delay = c.answer["pipeline_delay_ms"] / 1000.0
    # The voice stops once what was already in the pipeline has played out.
    assert end - t_int < delay + 0.3, (end - t_int, delay)
    assert np.nanmax(mouth[(v_t > t_int - 1.5) & (v_t < t_int)]) > OPENED, "no speech before"
    # The mouth shuts within 3 frames of the last sound the viewer hears, and stays shut.
    after = v_t > end + 3 * P
    assert after.sum() >= 25
    assert np.nanmax(mouth[after]) < CLOSED, np.round(mouth[v_t > end - 2 * P][:10], 3)


def test_say_speaks_text_with_a_moving_mouth(server, identity):
    text = "Hello! I am the avatar of your assistant, and I can read any text aloud."

    async def scenario():
        async with AvatarClient(server.url, audio=None) as viewer:
            await asyncio.sleep(0.5)
            async with AvatarAgent(viewer.answer["control_url"]) as agent:
                said = await agent.say(text, emotion="happy", intensity=0.8)
                await asyncio.sleep(said["duration_ms"] / 1000.0 + 2.0)
                bad = await agent.request({"type": "say", "text": "hi", "voice": "nope:x"})
                stats = await agent.request({"type": "get_stats"})
        return viewer, said, bad, stats["stats"]

    c, said, bad, stats = asyncio.run(scenario())
    assert said["type"] == "said" and said["queued"], said
    assert 2500 < said["duration_ms"] < 9000, said  # ~15 words
    assert bad["type"] == "error" and bad["code"] == "bad_field" and "installed" in bad["message"]
    assert stats["emotion"] == "happy", "the utterance's emotion was not applied"
    a_t, a_rms, v_t, mouth = _timeline(c, identity)
    start, end, loud_s = _speech_span(a_t, a_rms)
    # Heard for about as long as was synthesised (less the voice's own leading and trailing
    # silence of each sentence).
    assert 0.65 * said["duration_ms"] / 1000.0 < end - start < said["duration_ms"] / 1000.0 + 0.1
    assert loud_s > 0.5 * said["duration_ms"] / 1000.0
    during = (v_t > start + 0.2) & (v_t < end - 0.2)
    assert np.nanmax(mouth[during]) > OPENED, np.round(mouth[during], 3)
    # After it, the mouth stops talking and holds the smile (a broad smile, measured on
    # MEAD's happy faces, parts the lips over the teeth: not shut, but still).
    rest = mouth[v_t > end + 0.4]
    assert np.nanmax(rest) < 0.6 * np.nanmax(mouth[during]), np.round(rest, 3)
    assert np.nanstd(rest) < 0.02, np.round(rest, 3)
