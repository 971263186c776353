"""``etf serve`` as a real subprocess on free ports, for the browser and kiosk tests."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # the page, ending in "/"
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "health", timeout=5) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: closes peers and sockets
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def etf_server(tmp: Path, *extra: str, timeout: float = 60.0) -> Iterator[Server]:
    """``etf serve`` on free ports; stopped on exit, also when the test fails."""
    port, control = free_ports(2)
    log = tmp / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
             "--control-port", str(control), *extra],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}/", log)
    try:
        end = time.monotonic() + timeout
        while "etf serve: open" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                pytest.fail(f"etf serve exited with {proc.returncode}:\n{server.output()}")
            if time.monotonic() > end:
                pytest.fail(f"etf serve did not start in {timeout:.0f} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


# ----- comparing screenshots of the avatar ------------------------------------------------

#: Upper face of the built-in identity (fractions of the video frame): brows and eyes, where
#: emotions show strongly and speech does not move anything.
FACE_BOX = (0.30, 0.20, 0.80, 0.50)
# Brows, eyes and forehead inside the hairline: the head's own turns move the hair's edge
# against the background, which in FACE_BOX weighs as much as an expression does.
INNER_FACE_BOX = (0.40, 0.28, 0.70, 0.46)


def gray(png: bytes) -> np.ndarray:
    """A PNG as a float32 grey image."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)


def upper_face(images: list[np.ndarray], size: int = 128,
               box: tuple[float, float, float, float] = FACE_BOX) -> np.ndarray:
    """Median over a few grey frames (drops a blink or a mouth shape), blurred, downsized,
    cropped to ``box`` (default ``FACE_BOX``)."""
    import cv2

    small = [cv2.resize(cv2.GaussianBlur(im, (0, 0), 2.0), (size, size),
                        interpolation=cv2.INTER_AREA) for im in images]
    med = np.median(np.stack(small), axis=0)
    x0, y0, x1, y1 = (int(round(v * size)) for v in box)
    return med[y0:y1, x0:x1]


def grey_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference (0..255)."""
    return float(np.abs(a - b).mean())


@contextmanager
def kept_shots(tmp: Path, copy_to: Path) -> Iterator[Path]:
    """A folder for a test's screenshots, copied to ``copy_to`` afterwards for people to see."""
    import shutil

    out = tmp / "shots"
    out.mkdir()
    yield out
    copy_to.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        shutil.copy2(f, copy_to / f.name)

#: A speaking mouth opens past this at least once in a sentence (inner-lip gap /
#: outer-eye-corner distance, dlib on decoded frames). The default engine opens as far as
#: real talking mouths (90th percentile 0.06-0.22 over 13 people,
#: benchmarks/lipsync_talking.py); the built-in sentence peaks near 0.2 in its second half
#: and 0.15-0.17 in its first 2.4 s, which dlib reads a little lower or higher with the
#: interior's shading (a live recording read 0.1500); a shut or barely moving mouth reads
#: 0.01-0.06.
OPENED = 0.13
