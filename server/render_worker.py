"""Sessions' frames rendered in worker processes, one session per process.

Why: in one process the sessions' engine threads take turns on the GIL (the phone
recogniser, the sparse warp field and many small NumPy steps hold it) and on it with the
event loop and aiortc's encoders, so two sessions on two cores wait on each other long
before the cores are full (``benchmarks/live_profile.py``). A render process has its own
interpreter: the server keeps the clock, the inputs (jitter buffer, speech queue), the
emotion state and the WebRTC side; each tick it sends the worker the tick's 16 kHz speech
and the emotion vector, and gets back the frames that became ready, already in I420.

The worker runs the very code a thread would (``AvatarStream.feed`` and
``FaceAnimator.step`` on the same identity, seed and settings), so its frames are the same
bytes (tested). When the session's WebRTC sender lets it (see ``server.session``), the
worker also encodes the frames to VP8 (:class:`Vp8Stream`, at the bitrate the sender's
congestion control asks for, a key frame when the viewer asks for one), so the server's
process only packetises them. A :class:`RenderPool` keeps one spare worker started and
prepared, so a new session does not wait for a process to start (~0.5-2 s); a worker goes
back to the pool when its session ends. If a worker cannot be started the session renders
on a thread as before.

Protocol (``multiprocessing.connection`` over a socket pair; the child is
``python -m server.render_worker FD``): the parent sends the pickled identity, the child
answers ``("ready", pid)``. Then ``("open", settings, seed)`` -> ``("opened",
lookahead_ms)``; ``("render", speech, emotion, video)`` (``video``: None for I420, or
``(bitrate, key frame)`` for VP8) -> ``("frames", [(index, skipped, frame_s, yuv_s,
encode_s)], speech_s, cpu_s)`` followed by one buffer per frame (raw I420, or the VP8
frame);
``("close",)`` -> ``("closed",)``; ``("exit",)`` or end of file ends the child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

log = logging.getLogger("etf.render_worker")

#: Seconds a new worker may take to import and prepare the face.
START_TIMEOUT_S = 60.0
#: glibc malloc arenas the server's processes may use: the server's own
#: (``server.app.limit_malloc_arenas``) and its workers'.
MALLOC_ARENAS = 2
#: Environment of a worker: one thread per native library (a session is one core's work;
#: more threads would only fight the other sessions' processes), and as few malloc arenas
#: as the server.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "MALLOC_ARENA_MAX": str(MALLOC_ARENAS)}


class WorkerError(RuntimeError):
    """A render process failed to start or died."""


@dataclass
class RenderedFrame:
    """One frame back from a render process: I420 pixels, or (asked for) a VP8 frame."""

    index: int
    skipped: int  # frames skipped (to catch up) before it
    yuv: np.ndarray | None  # [h*3/2, w] uint8
    packet: bytes | None  # the encoded frame
    frame_s: float  # seconds to render it
    yuv_s: float  # ... to convert it to I420
    encode_s: float  # ... to encode it (0 when not)


#: The VP8 encoder's settings: libvpx real-time, constant bitrate, as WebRTC senders run it
#: (aiortc's own encoder uses these too), except the denoiser, which is off: our frames are
#: rendered, not camera noise, and it cost a quarter of the encoding time while lowering
#: fidelity (benchmarks/live_profile.py; 2.07 -> 1.55 ms a frame, PSNR 34.1 -> 34.3 dB).
VP8_OPTIONS = {"cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0",
               "noise-sensitivity": "0", "overshoot-pct": "15", "partitions": "0",
               "static-thresh": "1", "undershoot-pct": "100"}


class Vp8Stream:
    """A session's VP8 encoder in its render process (PyAV's libvpx)."""

    #: Reopen at a new bitrate only when it moved this much (each reopen is a key frame).
    REOPEN = 0.1

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.codec = None
        self.bitrate = 0

    def _open(self, width: int, height: int, bitrate: int) -> None:
        import av

        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = bitrate
        codec.time_base = Fraction(1, 90000)
        codec.framerate = Fraction(self.fps).limit_denominator(1000)
        codec.gop_size = 3000  # key frames when asked for, not on a timer
        codec.qmin, codec.qmax = 2, 56
        codec.thread_count = 1  # one session, one core
        codec.options = {**VP8_OPTIONS, "bufsize": str(bitrate), "minrate": str(bitrate),
                         "maxrate": str(bitrate)}
        self.codec, self.bitrate = codec, bitrate

    def encode(self, yuv: np.ndarray, index: int, bitrate: int, key: bool) -> bytes:
        import av

        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        if self.codec is None or abs(bitrate - self.bitrate) > self.REOPEN * self.bitrate:
            self._open(w, h, bitrate)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = int(round(index * 90000 / self.fps))
        frame.time_base = Fraction(1, 90000)
        if key:
            frame.pict_type = av.video.frame.PictureType.I
        return b"".join(bytes(p) for p in self.codec.encode(frame))


class RenderWorker:
    """The server's handle on one render process. Calls block (run them on a thread);
    one lock keeps a render in flight and a close from interleaving on the pipe."""

    def __init__(self, proc: subprocess.Popen, conn: Connection) -> None:
        self.proc = proc
        self.conn = conn
        self.pid = proc.pid
        self.lookahead_ms = float("nan")
        self.frame_index = 0
        self._lock = threading.Lock()

    @classmethod
    def start(cls, identity_blob: bytes) -> RenderWorker:
        """Start a process, hand it the face and wait until it is prepared."""
        parent, child = socket.socketpair()
        env = dict(os.environ, **WORKER_ENV)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "server.render_worker", str(child.fileno())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL)
        except (OSError, ValueError) as e:  # no process, or no fd passing on this system
            parent.close()
            raise WorkerError(f"cannot start a render process: {e}") from e
        finally:
            child.close()
        worker = cls(proc, Connection(parent.detach()))
        try:
            worker.conn.send_bytes(identity_blob)
            if not worker.conn.poll(START_TIMEOUT_S):
                raise WorkerError(f"render process {proc.pid} did not start within "
                                  f"{START_TIMEOUT_S:.0f} s")
            reply = worker.conn.recv()
        except (OSError, EOFError) as e:
            worker.kill()
            raise WorkerError(f"render process {proc.pid} died while starting: {e}") from e
        except WorkerError:
            worker.kill()
            raise
        if reply[0] != "ready":
            worker.kill()
            raise WorkerError(f"render process {proc.pid} could not prepare the face: "
                              f"{reply[1]}")
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _call(self, *msg):
        try:
            self.conn.send(msg)
            reply = self.conn.recv()
        except (OSError, EOFError) as e:
            raise WorkerError(f"render process {self.pid} is gone "
                              f"(exit status {self.proc.poll()})") from e
        if reply[0] == "error":
            raise WorkerError(f"render process {self.pid}: {reply[1]}")
        return reply

    def open(self, config, seed: int) -> float:
        """Start a stream of ``config`` (a StreamConfig, or a subclass: its stream
        settings are sent) with ``seed``; its lookahead."""
        with self._lock:
            from engines.avatar import StreamConfig

            settings = {f.name: getattr(config, f.name) for f in fields(StreamConfig)}
            self.lookahead_ms = self._call("open", settings, seed)[1]
            self.frame_index = 0
        return self.lookahead_ms

    def render(self, speech: list[np.ndarray], emotion: np.ndarray, height: int, width: int,
               video: tuple[int, bool] | None = None,
               ) -> tuple[list[RenderedFrame], float, float]:
        """Feed a tick's speech, render what became ready with ``emotion``, as I420 or
        (``video`` = (bitrate, key frame)) VP8: (frames, speech s, CPU s)."""
        with self._lock:
            _, heads, speech_s, cpu_s = self._call("render", speech, emotion, video)
            out = []
            for index, skipped, frame_s, yuv_s, encode_s in heads:
                yuv = packet = None
                try:
                    if video is None:
                        yuv = np.empty((height * 3 // 2, width), np.uint8)
                        self.conn.recv_bytes_into(yuv.reshape(-1))
                    else:
                        packet = self.conn.recv_bytes()
                except (OSError, EOFError) as e:
                    raise WorkerError(f"render process {self.pid} is gone") from e
                out.append(RenderedFrame(index, skipped, yuv, packet, frame_s, yuv_s,
                                         encode_s))
                self.frame_index = index + 1
        return out, speech_s, cpu_s

    def close_stream(self) -> None:
        with self._lock:
            self._call("close")

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            try:
                self.conn.send(("exit",))
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            self.conn.close()

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class RenderPool:
    """Render processes for one face: at most ``size``, ``spares`` (one) kept started and
    no more idle."""

    def __init__(self, identity, size: int, spares: int = 1) -> None:
        self.size = size
        self.spares = min(spares, size)
        self._blob = pickle.dumps(identity, protocol=pickle.HIGHEST_PROTOCOL)
        self._idle: list[RenderWorker] = []
        self._starting: list[Future] = []
        self._busy: set[RenderWorker] = set()
        self._lock = threading.RLock()  # a launch that fails at once calls back in-thread
        self._closed = False
        self._starter = ThreadPoolExecutor(max(1, size), thread_name_prefix="etf-render-start")
        self.started = 0
        self.failed = 0
        self._top_up()

    def _launch(self) -> Future:
        """Start one worker (call with the lock held)."""
        try:
            fut = self._starter.submit(RenderWorker.start, self._blob)
        except RuntimeError as e:  # shut down meanwhile
            raise WorkerError(f"the render pool is closed ({e})") from None
        self._starting.append(fut)
        fut.add_done_callback(self._started)
        return fut

    def _started(self, fut: Future) -> None:
        with self._lock:
            self._starting.remove(fut)
            if fut.cancelled():  # the pool closed before it began
                return
            if fut.exception() is not None:
                self.failed += 1
                log.warning("%s", fut.exception())
                return
            self.started += 1
            if not self._closed:
                self._idle.append(fut.result())
                return
        fut.result().stop()

    def _top_up(self) -> None:
        with self._lock:
            self._idle = [w for w in self._idle if w.alive]
            total = len(self._idle) + len(self._starting) + len(self._busy)
            while (not self._closed and len(self._idle) + len(self._starting) < self.spares
                   and total < self.size):
                self._launch()
                total += 1

    async def acquire(self) -> RenderWorker:
        """A started worker for a new session (waits for one being started, or starts
        one); WorkerError when none can be had."""
        while True:
            with self._lock:
                if self._closed:
                    raise WorkerError("the render pool is closed")
                self._idle = [w for w in self._idle if w.alive]
                if self._idle:
                    worker = self._idle.pop()
                    self._busy.add(worker)
                    break
                total = len(self._starting) + len(self._busy)
                if total >= self.size and not self._starting:
                    raise WorkerError(f"all {self.size} render processes are busy")
                fut = self._starting[0] if self._starting else self._launch()
            await asyncio.wrap_future(fut)  # WorkerError if it could not start
            # it went to the idle list (or another session took it): take one from there
        self._top_up()
        return worker

    def release(self, worker: RenderWorker) -> None:
        """Back to the pool after its session, as a spare if the pool lacks one, else
        stopped: a server that had many sessions does not keep their processes (~170 MB
        each) once they end (blocking: call on a thread; it waits for a render still in
        flight)."""
        try:
            worker.close_stream()
        except WorkerError as e:
            log.warning("%s; it is replaced", e)
            worker.kill()
            ok = False
        else:
            ok = True
        with self._lock:
            self._busy.discard(worker)
            self._idle = [w for w in self._idle if w.alive]
            if ok and not self._closed and \
                    len(self._idle) + len(self._starting) < self.spares:
                self._idle.append(worker)
                return
        if ok:
            worker.stop()
        self._top_up()

    def release_later(self, worker: RenderWorker) -> None:
        """:meth:`release` on the pool's own thread (from the event loop)."""
        try:
            self._starter.submit(self.release, worker)
        except RuntimeError:  # the pool is shut down
            worker.kill()

    def pids(self) -> list[int]:
        """Process ids of the started workers (idle or serving)."""
        with self._lock:
            return [w.pid for w in (*self._idle, *self._busy)]

    def stats(self) -> dict:
        with self._lock:
            return {"idle": len(self._idle), "busy": len(self._busy),
                    "starting": len(self._starting), "started": self.started,
                    "failed": self.failed}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = self._idle + list(self._busy)
            self._idle, self._busy = [], set()
        for w in workers:
            w.stop(timeout=1.0)
        self._starter.shutdown(wait=False, cancel_futures=True)


# ----- the worker process ------------------------------------------------------------


def _serve(conn: Connection) -> None:
    import cv2

    from engines.avatar import Avatar, AvatarStream, StreamConfig

    cv2.setNumThreads(1)
    try:
        avatar = Avatar(pickle.loads(conn.recv_bytes()))
    except Exception as e:  # a face this process cannot prepare: say why, then end
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    stream = animator = encoder = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the server is gone
            return
        op = msg[0]
        try:
            if op == "render":
                _, speech, emotion, video = msg
                bitrate, key = video if video is not None else (0, False)
                c0 = time.process_time()
                t0 = time.perf_counter()
                n, skipped = stream.feed(speech)
                speech_s = time.perf_counter() - t0
                heads, out = [], []
                for _ in range(n):
                    t1 = time.perf_counter()
                    frame = animator.step(copy=False, emotion=emotion)
                    t2 = time.perf_counter()
                    yuv = cv2.cvtColor(frame.image, cv2.COLOR_RGB2YUV_I420)
                    t3 = time.perf_counter()
                    if video is not None:
                        out.append(encoder.encode(yuv, frame.index, bitrate, key))
                        key = False  # the first frame of the tick answers the request
                    else:
                        out.append(yuv.reshape(-1))  # flat: Connection counts rows
                    heads.append((frame.index, skipped, t2 - t1, t3 - t2,
                                  time.perf_counter() - t3))
                    skipped = 0
                conn.send(("frames", heads, speech_s, time.process_time() - c0))
                for data in out:
                    conn.send_bytes(data)
            elif op == "open":
                config = StreamConfig(**msg[1])
                animator = avatar.animator(config, seed=msg[2])
                stream = AvatarStream(avatar, config, animator=animator)
                encoder = Vp8Stream(config.fps)
                conn.send(("opened", animator.lookahead_ms))
            elif op == "close":
                stream = animator = encoder = None
                conn.send(("closed",))
            elif op == "exit":
                return
            else:
                conn.send(("error", f"unknown request {op!r}"))
        except Exception as e:  # report to the session that asked; the process lives on
            conn.send(("error", f"{type(e).__name__}: {e}"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    _serve(Connection(int(args[0])))


if __name__ == "__main__":
    main()
