"""``etf live``: the kiosk mode. A local microphone drives the face, shown in a window
and/or recorded to an MP4, with the same engines, session clock and control channel as
``etf serve``.

The session is the server's :class:`~server.session.Session`; only the ends differ: audio
comes from ``sounddevice`` (or a file played in real time, ``--audio``, for TTS output
and for tests) and frames go to a Tk window and/or an H.264/AAC file whose audio is the
microphone delayed like the server's outgoing audio, so the recording is in sync.
The control channel listens on ``ws://HOST:PORT/control/live``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from engines.audio.audio_ingest import NET_RATE
from engines.face.identity import Identity
from server.control import ControlServer
from server.session import AUDIO_FRAME, SessionConfig, SessionRegistry

log = logging.getLogger("etf.live")

SESSION_ID = "live"


class LiveError(RuntimeError):
    """A problem the user can fix (no microphone, no display, bad device)."""


@dataclass(frozen=True)
class LiveConfig:
    output: str | None = None
    window: bool = False
    audio_file: str | None = None  # play this file as if it were the microphone
    device: str | int | None = None  # sounddevice input device
    duration_s: float | None = None
    host: str = "127.0.0.1"
    control_port: int = 8081
    token: str | None = None


class MicSource:
    """Microphone capture with sounddevice, 20 ms blocks of mono 48 kHz float32."""

    def __init__(self, device: str | int | None, push) -> None:
        try:
            import sounddevice as sd
        except OSError as e:  # the PortAudio library itself is missing
            raise LiveError(f"sounddevice cannot load PortAudio ({e}); install the system's "
                            "PortAudio (Debian: apt install libportaudio2)") from None
        try:
            info = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as e:
            raise LiveError(f"no usable microphone ({e}); list devices with "
                            "python -m sounddevice, or use --audio FILE") from None
        self.name = info["name"]

        def callback(indata, frames, time_info, status) -> None:
            if status:
                log.warning("microphone: %s", status)
            push(indata[:, 0].copy())

        self.stream = sd.InputStream(device=device, channels=1, samplerate=NET_RATE,
                                     blocksize=AUDIO_FRAME, dtype="float32",
                                     callback=callback)

    def start(self) -> None:
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop()
        self.stream.close()


class FileSource:
    """An audio file played in real time (20 ms blocks), then silence."""

    def __init__(self, path: str, push) -> None:
        from engines.media.audio_io import load_audio

        self.pcm = load_audio(path, NET_RATE)
        self.name = os.path.basename(path)
        self.push = push
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etf-file-audio", daemon=True)

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / NET_RATE

    def _run(self) -> None:
        start = time.monotonic()
        for m in range(0, len(self.pcm), AUDIO_FRAME):
            wait = start + m / NET_RATE - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            self.push(self.pcm[m:m + AUDIO_FRAME])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class Recorder:
    """Writes released frames and the delayed audio to an MP4 on its own thread."""

    def __init__(self, path: str, width: int, height: int, fps: float) -> None:
        from engines.media.video_writer import Mp4Writer

        self.writer = Mp4Writer(path, width, height, fps=fps, audio_rate=NET_RATE,
                                stream_audio=True)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="etf-record")
        self._last_index = -1
        self._last: np.ndarray | None = None

    def frame(self, index: int, rgb: np.ndarray) -> None:
        self.pool.submit(self._frame, index, rgb)

    def _frame(self, index: int, rgb: np.ndarray) -> None:
        # A skipped frame repeats the previous one, so the file's timeline stays exact.
        while self._last is not None and self._last_index + 1 < index:
            self.writer.write(self._last)
            self._last_index += 1
        self.writer.write(rgb)
        self._last, self._last_index = rgb, index

    def audio(self, pcm: np.ndarray) -> None:
        self.pool.submit(self.writer.append_audio, pcm)

    def close(self) -> None:
        self.pool.submit(self.writer.close).result()
        self.pool.shutdown()


class Window:
    """A Tk window showing the newest frame (Tk must own the main thread)."""

    def __init__(self, title: str) -> None:
        if os.name != "nt" and not os.environ.get("DISPLAY") and \
                not os.environ.get("WAYLAND_DISPLAY"):
            raise LiveError("--window needs a display (DISPLAY is not set); use --output FILE")
        import tkinter

        self.tk = tkinter
        self.root = tkinter.Tk()
        self.root.title(title)
        self.label = tkinter.Label(self.root)
        self.label.pack()
        self.frames: queue.Queue[np.ndarray] = queue.Queue(maxsize=2)
        self.closed = threading.Event()
        self.root.protocol("WM_DELETE_WINDOW", self.close)
        self._image = None

    def show(self, rgb: np.ndarray) -> None:
        try:
            self.frames.put_nowait(rgb)
        except queue.Full:
            pass

    def _poll(self) -> None:
        if self.closed.is_set():
            self.root.destroy()
            return
        rgb = None
        while not self.frames.empty():
            rgb = self.frames.get_nowait()
        if rgb is not None:
            h, w = rgb.shape[:2]
            ppm = f"P6 {w} {h} 255 ".encode() + rgb.tobytes()
            self._image = self.tk.PhotoImage(data=ppm, format="PPM")
            self.label.configure(image=self._image)
        self.root.after(10, self._poll)

    def run(self) -> None:
        self.root.after(10, self._poll)
        self.root.mainloop()

    def close(self) -> None:
        self.closed.set()


async def run_session(identity: Identity, config: LiveConfig, session_config: SessionConfig,
                      window: Window | None = None, stop: threading.Event | None = None) -> dict:
    """The live loop; returns the session's final statistics."""
    stop = stop or threading.Event()
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="etf-engine")
    registry = SessionRegistry(identity, session_config, executor, max_sessions=1)
    session = await registry.create(session_id=SESSION_ID)
    def push(pcm: np.ndarray) -> None:  # called on the audio thread
        loop.call_soon_threadsafe(session.push_audio, pcm)

    source = (FileSource(config.audio_file, push) if config.audio_file
              else MicSource(config.device, push))
    control = ControlServer(registry, config.token, http_port=None)
    port = await control.start(config.host, config.control_port)
    print(f"etf live: control channel ws://{config.host}:{port}/control/{SESSION_ID}"
          f"{'?token=...' if config.token else ''}", flush=True)

    h, w = identity.photo.shape[:2]
    recorder = Recorder(config.output, w, h, session_config.fps) if config.output else None
    print(f"etf live: listening to {source.name}; "
          f"{'recording to ' + config.output if recorder else 'not recording'}"
          f"{'; window open' if window else ''}", flush=True)

    async def video() -> None:
        while True:
            out = await session.next_video()
            rgb = cv2.cvtColor(out.yuv, cv2.COLOR_YUV2RGB_I420)
            if recorder:
                recorder.frame(out.index, rgb)
            if window:
                window.show(rgb)

    async def audio() -> None:
        while True:
            _, pcm = await session.next_audio()
            if recorder:
                recorder.audio(pcm)

    source.start()
    session.ensure_started()
    tasks = [loop.create_task(video()), loop.create_task(audio())]
    t_end = None if config.duration_s is None else time.monotonic() + config.duration_s
    try:
        while not stop.is_set() and not session.closed and (
            t_end is None or time.monotonic() < t_end
        ) and not (window and window.closed.is_set()):
            await asyncio.sleep(0.05)
    finally:
        source.stop()
        stats = session.stats()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await registry.close_all("live mode stopped")
        await control.stop()
        if recorder:
            await loop.run_in_executor(None, recorder.close)
        executor.shutdown(wait=False, cancel_futures=True)
        if window:
            window.close()
    return stats


def run_live(identity: Identity, config: LiveConfig, session_config: SessionConfig) -> dict:
    """Run ``etf live`` until the duration ends, the window closes, or Ctrl-C."""
    if not config.output and not config.window:
        raise LiveError("nothing to show: give --window and/or --output FILE")
    if config.output:
        folder = os.path.dirname(os.path.abspath(config.output))
        if not os.path.isdir(folder):
            raise LiveError(f"output folder {folder} does not exist")
    if not config.window:
        return asyncio.run(run_session(identity, config, session_config))
    window = Window(f"etf live: {identity.source}")
    result: dict = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            result.update(asyncio.run(run_session(identity, config, session_config,
                                                  window, stop)))
        except BaseException as e:  # reported on the main thread
            errors.append(e)
            window.close()

    thread = threading.Thread(target=worker, name="etf-live", daemon=True)
    thread.start()
    try:
        window.run()
    finally:
        stop.set()
        thread.join(10)
    if errors:
        raise errors[0]
    return result
