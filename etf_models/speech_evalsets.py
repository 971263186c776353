"""Real speech with known words, for scoring speech models: the pocketsphinx source clips.

The pocketsphinx 5.1.1 *source distribution* on PyPI carries test recordings with their
transcripts. ``pocketsphinx_source`` fetches it once with ``pip download`` (PyPI is the one
network source this project may use), checks its pinned SHA-256, and extracts only the
files used, with checked paths, into ``~/.cache/etf/pocketsphinx-sdist`` by default.

- ``librivox`` (the headline set): ``test/data/librivox/*.wav`` with their ``.txt``
  transcripts, 5 read sentences of *Sense and Sensibility*, 16 kHz, ~25 s in all;
- ``commands``: ``test/data/cards/*.wav`` with ``cards.transcription`` (card names),
  ``goforward.raw`` ("go forward ten meters": the ``<move>`` rule of
  ``test/data/goforward.gram``), and ``forever/input_2_16k.wav`` ("feels like these days go
  on forever": the text that ``cython/test/alignment_test.py`` force-aligns it to). Both
  transcripts are checked against those files when loading. Left out, having no
  transcript anywhere in the sdist: ``numbers.raw``, ``something.raw``,
  ``forever/input_4_16k.wav``, ``tidigits/dhd.2934z.raw``, the ``vad/`` clips, and the
  deliberately broken ``awful``/``bad``/``evil``/``null`` wavs.

``decode_streaming`` runs a ``DeepSpeechFrontend`` the way a live session does (20 ms
pushes, then flush) and greedy-decodes; ``score`` gives per-clip and corpus CER/WER.
Used by ``benchmarks/speech_eval.py`` (the report) and ``etf train speech`` (validation on
``commands`` while training; LibriVox is kept for the final report).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from etf_models.checkpoint import sha256_of
from etf_models.speech_metrics import cer, char_errors, normalise_text, wer, word_errors

RATE = 16000
CHUNK = 320  # 20 ms, one feature row
SDIST_VERSION = "5.1.1"
SDIST_FILE = f"pocketsphinx-{SDIST_VERSION}.tar.gz"
#: As published on https://pypi.org/simple/pocketsphinx/ for pocketsphinx-5.1.1.tar.gz.
SDIST_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
DEFAULT_CACHE = Path("~/.cache/etf/pocketsphinx-sdist")
SETS = ("librivox", "commands")

#: Files taken from the sdist (paths relative to its top folder).
_WANTED = [re.compile(p) for p in (
    r"test/data/librivox/[\w.-]+\.(wav|txt)",
    r"test/data/cards/[\w.-]+\.wav",
    r"test/data/cards/cards\.transcription",
    r"test/data/goforward\.(raw|gram)",
    r"test/data/forever/input_2_16k\.wav",
    r"cython/test/alignment_test\.py",  # the evidence for input_2_16k.wav's words
)]
_MAX_MEMBER = 16 << 20  # every wanted file is far smaller


@dataclass(frozen=True)
class _Extra:
    """A clip whose transcript is stated in another file of the sdist (checked on load)."""

    name: str
    audio: str
    text: str
    evidence: str  # a file of the sdist ...
    quote: str  # ... that must contain this


_EXTRAS = (
    _Extra("goforward", "test/data/goforward.raw", "go forward ten meters",
           "test/data/goforward.gram", "public <move> = go forward ten meters;"),
    _Extra("forever_input_2", "test/data/forever/input_2_16k.wav",
           "feels like these days go on forever", "cython/test/alignment_test.py",
           'set_align_text("feels like these days go on forever")'),
)


class DatasetError(RuntimeError):
    """The evaluation data cannot be fetched, extracted or read."""


@dataclass(frozen=True)
class Clip:
    """One utterance: 16 kHz mono float32 audio and its normalised reference text."""

    set: str
    name: str
    source: str  # path inside the pocketsphinx source tree
    reference: str
    audio: np.ndarray

    def __post_init__(self) -> None:
        if not self.reference or not len(self.audio):
            raise DatasetError(f"{self.source}: empty transcript or audio")

    @property
    def duration_s(self) -> float:
        return len(self.audio) / RATE


# --- data -------------------------------------------------------------------------------


def fetch_sdist(cache: Path) -> Path:
    """The verified sdist tarball in ``cache``, downloaded with pip if it is not there."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / SDIST_FILE
    if not tarball.is_file() or sha256_of(tarball) != SDIST_SHA256:
        tarball.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"pocketsphinx=={SDIST_VERSION}", "-d", str(cache)]
        print("fetching the pocketsphinx sdist:", " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not tarball.is_file():
            raise DatasetError(f"pip download failed (exit {r.returncode}):\n"
                               f"{(r.stderr or r.stdout)[-2000:]}")
    digest = sha256_of(tarball)
    if digest != SDIST_SHA256:
        raise DatasetError(f"{tarball}: SHA-256 {digest} is not the published {SDIST_SHA256}")
    return tarball


def _wanted(rel: str) -> bool:
    return any(p.fullmatch(rel) for p in _WANTED)


def extract_needed(tarball: Path, dest: Path) -> Path:
    """Extract only the wanted regular files under ``dest/pocketsphinx-X``; returns it.

    Paths are rebuilt from checked components (no absolute paths, no ``..``, no links or
    devices, size-capped), never taken from the archive as they are.
    """
    top = f"pocketsphinx-{SDIST_VERSION}"
    root = dest / top
    marker = root / ".etf-extracted"
    if marker.is_file() and marker.read_text().strip() == SDIST_SHA256:
        return root
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    n = 0
    with tarfile.open(tarball, "r:gz") as tf:
        for m in tf:
            parts = PurePosixPath(m.name).parts
            if len(parts) < 2 or parts[0] != top:
                continue
            rel = "/".join(parts[1:])
            if not _wanted(rel):
                continue
            if not m.isfile() or m.size > _MAX_MEMBER or any(p in ("", ".", "..")
                                                             for p in parts[1:]):
                raise DatasetError(f"{tarball}: refusing suspicious member {m.name!r}")
            out = root.joinpath(*parts[1:])
            if base not in out.resolve().parents:
                raise DatasetError(f"{tarball}: member {m.name!r} escapes {root}")
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                raise DatasetError(f"{tarball}: cannot read {m.name!r}")
            tmp = out.with_name(out.name + ".part")
            with src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, out)
            n += 1
    if n == 0:
        raise DatasetError(f"{tarball}: none of the evaluation files found")
    marker.write_text(SDIST_SHA256 + "\n")
    return root


def pocketsphinx_source(src: str | os.PathLike | None = None,
                        cache: str | os.PathLike | None = None) -> Path:
    """A pocketsphinx source tree holding ``test/data``: ``src`` (the tree or its parent)
    if given, else the cache's extracted copy, fetched and extracted when missing."""
    if src is not None:
        p = Path(src).expanduser()
        for cand in (p, p / f"pocketsphinx-{SDIST_VERSION}"):
            if (cand / "test" / "data" / "librivox").is_dir():
                return cand
        raise DatasetError(f"{p}: no pocketsphinx source tree (test/data/librivox) here")
    cache_dir = Path(cache or DEFAULT_CACHE).expanduser()
    return extract_needed(fetch_sdist(cache_dir), cache_dir)


def _read_audio(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing audio file {path}")
    if path.suffix == ".raw":  # 16 kHz int16 mono little-endian, as pocketsphinx reads it
        return (np.fromfile(path, "<i2").astype(np.float32) / 32768.0)
    if path.suffix == ".wav":  # every clip of the pinned sdist is 16 kHz mono 16-bit PCM
        import wave

        with wave.open(str(path), "rb") as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2):
                return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(
                    np.float32) / 32768.0
    raise DatasetError(f"{path}: expected 16 kHz mono 16-bit PCM (.wav or .raw)")


def _librivox(root: Path) -> list[Clip]:
    d = root / "test" / "data" / "librivox"
    clips = []
    for wav in sorted(d.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise DatasetError(f"{wav}: no transcript {txt.name}")
        clips.append(Clip("librivox", wav.stem, str(wav.relative_to(root)),
                          normalise_text(txt.read_text()), _read_audio(wav)))
    if not clips:
        raise DatasetError(f"{d}: no clips")
    return clips


_TRANSCRIPTION_LINE = re.compile(r"(?P<text>.*?)\s*\((?P<id>[^()\s]+)\)\s*")
_MARKUP = re.compile(r"</?s>|<sil>", re.IGNORECASE)


def parse_transcription(text: str) -> dict[str, str]:
    """Sphinx ``.transcription`` lines ``<s> words </s> (id)`` -> {id: normalised words}."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _TRANSCRIPTION_LINE.fullmatch(line.strip())
        if m is None:
            raise DatasetError(f"unreadable transcription line {line!r}")
        out[m["id"]] = normalise_text(_MARKUP.sub(" ", m["text"]))
    return out


def _commands(root: Path) -> list[Clip]:
    d = root / "test" / "data" / "cards"
    refs = parse_transcription((d / "cards.transcription").read_text())
    clips = []
    for wav in sorted(d.glob("*.wav")):
        if wav.stem not in refs:
            raise DatasetError(f"{wav}: not in cards.transcription")
        clips.append(Clip("commands", f"cards_{wav.stem}", str(wav.relative_to(root)),
                          refs[wav.stem], _read_audio(wav)))
    for e in _EXTRAS:
        ev = root / e.evidence
        if not ev.is_file() or e.quote not in ev.read_text(errors="replace"):
            raise DatasetError(f"cannot confirm the words of {e.audio}: {ev} does not say "
                               f"{e.quote!r}")
        clips.append(Clip("commands", e.name, e.audio, normalise_text(e.text),
                          _read_audio(root / e.audio)))
    return clips


def load_eval_sets(root: str | os.PathLike, sets: tuple[str, ...] = SETS
                   ) -> dict[str, list[Clip]]:
    """{set name: clips} from a pocketsphinx source tree (see ``pocketsphinx_source``)."""
    root = Path(root)
    loaders = {"librivox": _librivox, "commands": _commands}
    unknown = set(sets) - set(loaders)
    if unknown:
        raise ValueError(f"unknown set(s) {sorted(unknown)}; known: {list(loaders)}")
    return {s: loaders[s](root) for s in sets}


# --- model ------------------------------------------------------------------------------


def decode_streaming(frontend, audio: np.ndarray, chunk: int = CHUNK
                     ) -> tuple[str, list[float], float]:
    """(greedy text, seconds per ``push``, seconds of ``flush``) of one utterance."""
    import torch

    from etf_models.deepspeech import greedy_decode

    frontend.reset()
    rows, push_s = [], []
    for i in range(0, len(audio), chunk):
        piece = audio[i:i + chunk]
        t = time.perf_counter()
        rows.append(frontend.push(piece))
        push_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    rows.append(frontend.flush())
    flush_s = time.perf_counter() - t
    return greedy_decode(torch.from_numpy(np.concatenate(rows))), push_s, flush_s


def score(clips: list[Clip], hyps: list[str]) -> dict:
    """Per-clip and corpus CER/WER of one set."""
    rows = []
    for c, h in zip(clips, hyps, strict=True):
        ce, cn = char_errors(c.reference, h)
        we, wn = word_errors(c.reference, h)
        rows.append({"clip": c.name, "source": c.source, "duration_s": round(c.duration_s, 3),
                     "reference": c.reference, "hypothesis": h,
                     "cer": round(cer(c.reference, h), 4), "wer": round(wer(c.reference, h), 4),
                     "char_edits": ce, "ref_chars": cn, "word_edits": we, "ref_words": wn})
    refs = [c.reference for c in clips]
    return {"n_clips": len(clips), "audio_s": round(sum(c.duration_s for c in clips), 3),
            "cer": round(cer(refs, hyps), 4), "wer": round(wer(refs, hyps), 4),
            "char_edits": sum(r["char_edits"] for r in rows),
            "ref_chars": sum(r["ref_chars"] for r in rows),
            "word_edits": sum(r["word_edits"] for r in rows),
            "ref_words": sum(r["ref_words"] for r in rows), "clips": rows}
