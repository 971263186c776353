"""Render processes (server.render_worker) and the CPU meter behind admission."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.avatar import Avatar, AvatarStream, StreamConfig
from engines.media.audio_io import load_audio
from engines.motion.emotion_state import EmotionState
from server.cli import builtin_sentence
from server.cpu_meter import CpuMeter
from server.render_worker import RenderPool, WorkerError

TICK = 640  # 40 ms at 16 kHz


@pytest.fixture(scope="module")
def avatar(identity):
    return Avatar(identity)


@pytest.fixture(scope="module")
def speech16():
    return load_audio(builtin_sentence(), 16000).astype(np.float32)


def run(coro):
    return asyncio.run(coro)


def test_worker_frames_are_the_threads_frames(avatar, speech16):
    """A render process gives the very bytes the engine thread would: same speech, seed,
    settings and emotion (mid-transition), I420."""
    config = StreamConfig()
    pool = RenderPool(avatar.identity, size=2)
    try:
        worker = run(pool.acquire())
        assert worker.alive and worker.pid in pool.pids()
        assert worker.open(config, seed=11) == pytest.approx(100.0)  # the live lookahead
        local = avatar.animator(config, seed=11)
        stream = AvatarStream(avatar, config, animator=local)
        emotion = EmotionState("neutral", 1.0)
        emotion.set("happy", 0.8, at=0.5, transition_s=1.0)
        h, w = avatar.identity.photo.shape[:2]
        frames = same = 0
        for k, i in enumerate(range(0, 3 * 16000, TICK)):
            chunk = [speech16[i : i + TICK]]
            vec = emotion.vector_at(k * 0.04)
            got, speech_s, cpu_s = worker.render(chunk, vec, h, w)
            n, skipped = stream.feed(chunk)
            assert len(got) == n and speech_s >= 0 and cpu_s >= 0
            for f in got:
                ref = local.step(copy=False, emotion=vec)
                assert f.index == ref.index and f.frame_s > 0 and f.packet is None
                same += np.array_equal(f.yuv, cv2.cvtColor(ref.image, cv2.COLOR_RGB2YUV_I420))
                frames += 1
        assert frames >= 70 and same == frames
        assert worker.frame_index == frames
        pool.release(worker)
        assert pool.stats()["busy"] == 0 and pool.stats()["idle"] >= 1
    finally:
        pool.close()


def test_worker_encodes_vp8_a_viewer_decodes(avatar, speech16):
    """Asked to, the render process sends VP8 frames instead of I420: the first and every
    asked-for frame is a key frame, the rest are not, and a VP8 decoder gives back the
    frames an engine thread renders (PSNR over 30 dB at 500 kbit/s)."""
    import av

    config = StreamConfig()
    pool = RenderPool(avatar.identity, size=1)
    try:
        worker = run(pool.acquire())
        worker.open(config, seed=5)
        local = avatar.animator(config, seed=5)
        stream = AvatarStream(avatar, config, animator=local)
        decoder = av.CodecContext.create("libvpx", "r")
        h, w = avatar.identity.photo.shape[:2]
        vec = EmotionState("neutral", 1.0).vector_at(0.0)
        keys, psnr, k = [], [], 0
        for i in range(0, 2 * 16000, TICK):
            chunk = [speech16[i : i + TICK]]
            ask = k == 30  # a viewer lost a packet
            got, _, _ = worker.render(chunk, vec, h, w, video=(500_000, ask))
            stream.feed(chunk)
            for f in got:
                assert f.yuv is None and f.packet and f.encode_s > 0
                keys.append((f.index, f.packet[0] & 1 == 0))  # VP8: bit 0 clear = key frame
                ref = local.step(copy=False, emotion=vec).image.astype(float)
                for pic in decoder.decode(av.Packet(f.packet)):
                    mse = np.mean((pic.to_ndarray(format="rgb24") - ref) ** 2)
                    psnr.append(10 * np.log10(255**2 / mse))
                k += 1
        first_after_ask = min(i for i, _ in keys if i >= 30)
        assert [i for i, key in keys if key] == [keys[0][0], first_after_ask], keys
        assert len(psnr) == len(keys) > 40 and min(psnr) > 30, min(psnr)
    finally:
        pool.close()


def test_a_dead_worker_is_reported_and_replaced(avatar, speech16):
    pool = RenderPool(avatar.identity, size=2)
    try:
        worker = run(pool.acquire())
        worker.open(StreamConfig(), seed=0)
        worker.proc.kill()
        worker.proc.wait()
        h, w = avatar.identity.photo.shape[:2]
        with pytest.raises(WorkerError, match="gone"):
            worker.render([speech16[:TICK]], np.zeros(7, np.float32), h, w)
        pool.release(worker)  # not taken back
        assert worker.pid not in pool.pids()
        again = run(pool.acquire())
        assert again.alive and again.pid != worker.pid
        again.open(StreamConfig(), seed=0)
        again.render([speech16[:TICK]], np.zeros(7, np.float32), h, w)
    finally:
        pool.close()


def test_an_ended_session_leaves_one_spare_not_its_process(avatar):
    """A pool that served two sessions at once keeps one spare process once both end, not
    three: the ended sessions' processes are stopped when a spare is already there."""
    pool = RenderPool(avatar.identity, size=4)
    try:
        first, second = run(pool.acquire()), run(pool.acquire())
        for _ in range(300):  # the pool starts a spare behind each acquire
            if pool.stats()["idle"] == 1 and not pool.stats()["starting"]:
                break
            time.sleep(0.05)
        assert pool.stats()["idle"] == 1 and len(pool.pids()) == 3
        pool.release(first)
        pool.release(second)
        assert pool.stats() | {"started": 0} == {"idle": 1, "busy": 0, "starting": 0,
                                                "started": 0, "failed": 0}
        assert len(pool.pids()) == 1 and not first.alive and not second.alive
        assert run(pool.acquire()).alive  # the spare serves the next session
    finally:
        pool.close()


def test_pool_size_and_bad_requests(avatar):
    pool = RenderPool(avatar.identity, size=1)
    try:
        worker = run(pool.acquire())
        with pytest.raises(WorkerError, match="busy"):
            run(pool.acquire())
        with pytest.raises(WorkerError, match="unknown request"):
            worker._call("paint")
        with pytest.raises(WorkerError, match="render process"):  # no stream opened yet
            worker.render([np.zeros(TICK, np.float32)], np.zeros(7, np.float32), 8, 8)
        assert worker.alive  # a bad request costs the request, not the process
        pool.release(worker)
        assert run(pool.acquire()) is worker
    finally:
        pool.close()
    assert not worker.alive


def test_a_face_the_worker_cannot_prepare_is_refused():
    pool = RenderPool("not an identity", size=1)
    try:
        with pytest.raises(WorkerError, match="could not prepare the face"):
            run(pool.acquire())
        assert pool.stats()["failed"] == 1
    finally:
        pool.close()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_cpu_meter_counts_render_processes():
    """The server's rate includes its render processes' CPU; idle is the machine's."""
    burn = subprocess.Popen([sys.executable, "-c",
                             "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    meter = CpuMeter(lambda: [burn.pid], window_s=1.0, interval_s=0.1)
    try:
        assert meter.rates() is None  # no window yet
        time.sleep(1.6)
        free, used = meter.rates()
        assert used > 0.6, used  # the busy child: about one core
        assert 0.0 <= free <= 64
    finally:
        meter.close()
        burn.kill()
        burn.wait()


def test_a_system_that_cannot_start_processes_gets_a_worker_error(avatar, monkeypatch):
    """No process (or no file-descriptor passing, e.g. Windows): a WorkerError, which the
    session answers by rendering on a thread, never an offer that fails."""
    def refuse(*args, **kwargs):
        raise ValueError("pass_fds is not supported on this platform")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    pool = RenderPool(avatar.identity, size=1)
    try:
        with pytest.raises(WorkerError, match="cannot start a render process"):
            run(pool.acquire())
    finally:
        pool.close()


def test_a_container_quota_caps_the_free_cpu(tmp_path):
    """cgroup v2 cpu.max of 1.5 cores with 1.2 in use leaves 0.3 free, however idle the
    machine is; v1's cfs quota reads the same way; no quota, or 'max', is no cap."""
    from server.cpu_meter import CgroupQuota

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 900000\n")
    quota = CgroupQuota.find(tmp_path)
    assert quota.cores == pytest.approx(1.5) and quota.seconds() == pytest.approx(1.0)
    meter = CpuMeter(lambda: [], window_s=1.0, interval_s=10.0, quota=quota)
    try:
        meter.sample()
        time.sleep(1.0)
        (tmp_path / "cpu.stat").write_text("usage_usec 2200000\n")  # 1.2 s of CPU in 1 s
        meter.sample()
        free, _ = meter.rates()
        assert 0.2 <= free <= 0.31, free
    finally:
        meter.close()
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert CgroupQuota.find(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpuacct").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpuacct" / "cpuacct.usage").write_text("3000000000\n")
    quota = CgroupQuota.find(v1)
    assert quota.cores == pytest.approx(2.0) and quota.seconds() == pytest.approx(3.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert CgroupQuota.find(v1) is None
