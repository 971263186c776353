"""Live neural serving (engines/neural/live.py + the server): per-session streams, the
batched device step against the single-frame reference path, and a real server whose
sessions are batched together on one worker. Tiny random-weight networks."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("aiortc")

from engines.motion.emotion_state import EmotionState  # noqa: E402
from engines.neural.live import NeuralConfig, NeuralEngines  # noqa: E402
from etf_models.checkpoint import save_checkpoint  # noqa: E402
from etf_models.emotions import EMOTIONS  # noqa: E402
from etf_models.landmark_gcn import LandmarkGCN, face_graph  # noqa: E402
from etf_models.texture_flow import TextureFlow, TextureFlowConfig  # noqa: E402


@pytest.fixture(scope="module")
def served(identity):
    return identity.for_video(384)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, served):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("neural-weights")
    gl = LandmarkGCN(face_graph(served.neutral, audio_hidden=32, code_dim=24,
                                vertex_dims=(8, 16), region_dim=24))
    with torch.no_grad():
        gl.dec_out.weight.normal_(0, 0.02)  # speech actually moves the landmarks
    save_checkpoint(d / "landmarks.pt", "landmark_gcn", gl.config.to_dict(), gl.state_dict())
    gt = TextureFlow(TextureFlowConfig(enc=(8, 12, 16), motion=(16, 24, 32), disc=(8, 16, 32)))
    save_checkpoint(d / "texture.pt", "texture_flow", gt.config.to_dict(), gt.state_dict())
    return d


def _inputs(engines, seconds: float, seed: int, emotion: str = "neutral"):
    stream = engines.stream(25.0, EmotionState(emotion, 1.0), seed)
    rng = np.random.default_rng(seed)
    for _ in range(int(seconds * 50)):
        stream.push_audio((rng.standard_normal(320) * 0.1).astype(np.float32))
    out = []
    while stream.frames_ready():
        out.append(stream.next_inputs())
    return stream, out


def test_stream_windows_and_lookahead(served, weights):
    engines = NeuralEngines(served, NeuralConfig(str(weights), capacity=2))
    try:
        stream, frames = _inputs(engines, 2.0, 1, "happy")
        assert 40 <= len(frames) <= 50  # 25 fps minus the lookahead still pending
        assert frames[0].window.shape == (6, 29) and frames[0].emotion.shape == (7,)
        assert frames[0].emotion.argmax() == EMOTIONS.index("happy")
        assert frames[0].emotion.max() == pytest.approx(1.0)  # full intensity
        assert stream.lookahead_ms == pytest.approx(engines.speech_lookahead_ms
                                                    + stream.windows.lookahead_ms)
        assert len({f.window.tobytes() for f in frames}) == len(frames)  # windows move on
    finally:
        engines.close()


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_batched_step_matches_the_single_frame_reference(served, weights, backend):
    """The device step (G_L -> blinks -> G_T -> paste-back -> I420, batched) equals the
    offline engines frame by frame: GCNLandmarkEngine, FlowTextureEngine, paste_crop and
    cv2's I420 (within 3 grey levels; the offline path rounds the crop to uint8)."""
    from engines.motion.face_motion import P, build_fields
    from engines.neural.networks import FlowTextureEngine, GCNLandmarkEngine
    from engines.render.compositor import paste_crop

    engines = NeuralEngines(served, NeuralConfig(str(weights), backend=backend, capacity=2))
    try:
        _, frames = _inputs(engines, 1.5, 2, "surprise")
        frames = frames[::7][:4]
        got = engines.step(frames)
        gl = GCNLandmarkEngine(weights / "landmarks.pt")
        flow = FlowTextureEngine(weights / "texture.pt")
        state = flow.prepare(served)
        blink = build_fields(served.neutral)[P["blink"]]
        neutral = served.neutral.astype(np.float32)[None]
        for f, yuv in zip(frames, got, strict=True):
            lm = gl(f.window[None], f.emotion[None], np.ones(1, np.float32), neutral)[0]
            lm = lm + f.blink * blink
            crop = flow.render(state, lm[None], f.emotion[None])[0]
            ref = cv2.cvtColor(paste_crop(served, crop), cv2.COLOR_RGB2YUV_I420)
            diff = np.abs(yuv.astype(int) - ref)
            assert yuv.shape == ref.shape and diff.max() <= 3 and diff.mean() < 0.3
        assert not np.array_equal(got[0], got[1])  # the frames differ
    finally:
        engines.close()


def test_sessions_batched_together_do_not_leak_into_each_other(served, weights):
    engines = NeuralEngines(served, NeuralConfig(str(weights), backend="ort", capacity=2))
    try:
        a = _inputs(engines, 1.0, 3, "happy")[1][10]
        b = _inputs(engines, 1.0, 4, "sad")[1][10]
        together = engines.step([a, b])
        assert np.array_equal(together[0], engines.step([a])[0])
        assert np.array_equal(together[1], engines.step([b])[0])
        assert not np.array_equal(together[0], together[1])
    finally:
        engines.close()


def test_server_batches_live_sessions_and_refuses_beyond_capacity(served, weights):
    from server.app import BackgroundServer, ServerConfig
    from server.client import AvatarClient
    from server.session import SessionConfig

    engines = NeuralEngines(served, NeuralConfig(str(weights), backend="ort", max_batch=2,
                                                 capacity=2))
    rng = np.random.default_rng(5)
    speech = (rng.standard_normal(48000 * 6) * 0.1).astype(np.float32)

    async def scenario(srv):
        clients = [AvatarClient(srv.url, audio=speech), AvatarClient(srv.url, audio=None)]
        for c in clients:
            await c.connect()
        with pytest.raises(ConnectionError, match="503"):
            await AvatarClient(srv.url, audio=None).connect()
        await asyncio.sleep(4.0)
        counts = [len(c.video) for c in clients]
        sizes = {c.video[-1].image.shape for c in clients if c.video}
        monotonic = all(np.all(np.diff([f.pts for f in c.video]) > 0) for c in clients)
        dropped = [s.counters["frames_dropped"] for s in srv.server.registry.sessions.values()]
        for c in clients:
            await c.close()
        for _ in range(50):
            if not srv.server.registry.sessions:
                break
            await asyncio.sleep(0.1)
        return counts, sizes, monotonic, dropped, len(srv.server.registry.sessions)

    try:
        with BackgroundServer(served, ServerConfig(port=0, max_sessions=2),
                              SessionConfig(), neural=engines) as srv:
            counts, sizes, monotonic, dropped, left = asyncio.run(scenario(srv))
            stats = engines.worker.stats()
    finally:
        engines.close()
    h, w = served.photo.shape[:2]
    assert sizes == {(h, w, 3)} and monotonic
    # Even the tiny G_T takes ~25 ms a frame on 2 CPU cores, so a 25 fps session cannot be
    # rendered in full here: frames flow, late ones are skipped and counted (never queued).
    assert min(counts) >= 15, counts
    assert sum(dropped) > 0 or min(counts) >= 80, (counts, dropped)
    assert left == 0 and engines.worker.sessions == 0  # closing freed the worker slots
    # sessions tick on one grid, so their frames share engine calls
    assert stats["mean_batch"] > 1.3, stats
    assert stats["refused"] == 0  # the third peer was refused before reaching the worker


def test_live_serving_refuses_a_speech_model_that_cannot_stream(served, weights, tmp_path):
    """An imported DeepSpeech 0.1.x model (bidirectional) renders files but cannot serve."""
    import shutil

    from engines.audio.speech_frontend import SpeechModelError
    from etf_models.deepspeech import DeepSpeech, DeepSpeechConfig, save_deepspeech

    d = tmp_path / "weights"
    shutil.copytree(weights, d)
    cfg = DeepSpeechConfig(n_hidden=16, n_cell=8, n_hidden_3=16, forget_bias=1.0,
                           bidirectional=True, features="v01")
    save_deepspeech(d / "speech.pt", DeepSpeech(cfg), {})
    with pytest.raises(SpeechModelError, match="cannot stream"):
        NeuralEngines(served, NeuralConfig(str(d), capacity=2))
