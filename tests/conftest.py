"""Shared fixtures: the built-in identity (enrolled once per test run) and devset paths."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"


@pytest.fixture(scope="session")
def identity():
    from engines.face.default_face import default_identity

    return default_identity()


@pytest.fixture(scope="session")
def devset() -> Path:
    if not DEVSET.is_dir():
        pytest.skip("../shared/devset is not present")
    return DEVSET


def synth_speech(text: str, path: Path, voice: str = "slt", pad_s: float = 0.6) -> np.ndarray:
    """Synthetic speech (flite) with silence padding at both ends, 16 kHz mono float32."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True)
    from engines.media.audio_io import load_audio

    speech = load_audio(raw, 16000)
    pad = np.zeros(int(pad_s * 16000), np.float32)
    return np.concatenate([pad, speech, pad])


def streamed_landmarks(neutral: np.ndarray, speech: np.ndarray, chunk: int,
                       **engine_kw) -> np.ndarray:
    """The default landmark engine's frames [n,68,2] on ``speech`` pushed ``chunk`` samples
    at a time, each frame taken as soon as it is ready (as a live session does), then the
    rest after the end of the stream."""
    from engines.render.landmark_default import SpeechLandmarkEngine

    e = SpeechLandmarkEngine(neutral, 25.0, **engine_kw)
    out = []
    for i in range(0, len(speech), chunk):
        e.push_audio(speech[i:i + chunk])
        while e.frames_ready() > 0:
            out.append(e.next_frame(None)[0])
    e.flush()
    while e.frames_ready() > 0:
        out.append(e.next_frame(None)[0])
    return np.array(out)
