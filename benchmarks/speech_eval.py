"""Speech model on real speech: character/word error rates, real-time factor, model facts.

Scores a DeepSpeech-architecture checkpoint (``DeepSpeechFrontend.from_checkpoint``) on
clips with known words from the pocketsphinx 5.1.1 *source distribution* on PyPI (fetched
once with ``pip download``, checked against its pinned SHA-256, and only the files used
are extracted, into ``~/.cache/etf/pocketsphinx-sdist`` by default):

- ``librivox`` (the headline set): ``test/data/librivox/*.wav`` with their ``.txt``
  transcripts, 5 read sentences of *Sense and Sensibility*, 16 kHz, ~25 s in all;
- ``commands``: ``test/data/cards/*.wav`` with ``cards.transcription`` (card names),
  ``goforward.raw`` ("go forward ten meters": the ``<move>`` rule of
  ``test/data/goforward.gram``, and what every pocketsphinx test expects from it), and
  ``forever/input_2_16k.wav`` ("feels like these days go on forever": the text that
  ``cython/test/alignment_test.py`` force-aligns it to, phone by phone). Both transcripts
  are checked against those files when loading. Left out, having no transcript anywhere in
  the sdist: ``numbers.raw``, ``something.raw``, ``forever/input_4_16k.wav``,
  ``tidigits/dhd.2934z.raw`` (its TIDIGITS name suggests "two nine three four zero", but no
  file says so), the ``vad/`` clips, and the deliberately broken ``awful``/``bad``/
  ``evil``/``null`` wavs.

Each clip is decoded the way a live session runs the model: ``reset()``, then ``push()`` in
20 ms chunks (320 samples), then ``flush()``; the logits are greedy CTC decoded (no
language model). References are normalised by ``etf_models.speech_metrics.normalise_text``
(the hypotheses are already in the model's alphabet). CER and WER are corpus rates per set:
total edits / total reference characters (spaces included) or words.

Speed: wall time of the streaming calls (push + flush) / audio duration, with
``torch.set_num_threads(--threads)`` (default 1: the server runs one model per session),
after a warm-up; also the p50/p99 time of one 20 ms ``push``.

    python benchmarks/speech_eval.py --weights speech.pt        # -> results/speech_default.json
    python benchmarks/speech_eval.py --weights speech.pt --out /tmp/x.json --threads 2
    python benchmarks/speech_eval.py --weights speech.pt --pocketsphinx-src ~/src/pocketsphinx

The metric functions live in ``etf_models/speech_metrics.py`` (training uses them too);
``load_eval_sets`` and ``decode_streaming`` here are importable from the repository root
(``from benchmarks.speech_eval import load_eval_sets``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from etf_models.speech_evalsets import (  # noqa: E402
    CHUNK,
    DEFAULT_CACHE,
    RATE,
    SDIST_SHA256,
    SDIST_VERSION,
    SETS,
    Clip,
    DatasetError,
    decode_streaming,
    load_eval_sets,
    pocketsphinx_source,
    score,
)

RESULTS = ROOT / "benchmarks" / "results"


def default_weights() -> Path:
    """The shipped speech model, if this checkout names one."""
    try:
        import engines.audio.speech_frontend as sf

        fn = sf.default_speech_model_path
    except (ImportError, AttributeError):
        raise SystemExit("no --weights given, and this checkout has no "
                         "engines.audio.speech_frontend.default_speech_model_path() naming a "
                         "shipped speech model: pass --weights PATH") from None
    try:
        path = fn()
    except Exception as e:  # any failure means: no usable default model here
        raise SystemExit(f"no --weights given, and the default speech model is not "
                         f"available ({type(e).__name__}: {e}): pass --weights PATH") from None
    if path is None or not Path(path).is_file():
        raise SystemExit(f"no --weights given, and the default speech model {path} is not a "
                         "file: pass --weights PATH")
    return Path(path)


def model_facts(path: Path, frontend) -> dict:
    from etf_models.checkpoint import load_checkpoint, sha256_of

    meta = load_checkpoint(path, model="deepspeech").get("meta", {})
    return {"path": str(path), "size_bytes": path.stat().st_size, "sha256": sha256_of(path),
            "n_params": int(sum(p.numel() for p in frontend.model.parameters())),
            "config": frontend.model.config.to_dict(),
            "lookahead_ms": round(frontend.lookahead_ms, 3),
            "meta": json.loads(json.dumps(meta, default=str))}


def machine(threads: int) -> dict:
    import torch

    return machine_info(torch=torch.__version__, numpy=np.__version__, torch_threads=threads)


def _ms(xs: list[float], q: float) -> float:
    return round(1e3 * float(np.percentile(xs, q)), 3)


def evaluate(frontend, sets: dict[str, list[Clip]], repeats: int = 1) -> dict:
    """Decode every clip ``repeats`` times (texts from the first pass); scores and speed."""
    first = next(c for clips in sets.values() for c in clips)
    for _ in range(2):  # warm-up: allocator, kernels, caches
        decode_streaming(frontend, first.audio[: 2 * RATE])
    out, push_all, flush_all = {}, [], []
    total_audio = total_proc = 0.0
    for name, clips in sets.items():
        hyps, proc = [], 0.0
        for c in clips:
            for k in range(repeats):
                text, push_s, flush_s = decode_streaming(frontend, c.audio)
                if k == 0:
                    hyps.append(text)
                push_all += push_s
                flush_all.append(flush_s)
                proc += sum(push_s) + flush_s
        res = score(clips, hyps)
        audio = res["audio_s"] * repeats
        res["processing_s"] = round(proc, 4)
        res["rtf"] = round(proc / audio, 5)
        out[name] = res
        total_audio += audio
        total_proc += proc
    speed = {"audio_s": round(total_audio, 3), "processing_s": round(total_proc, 4),
             "rtf": round(total_proc / total_audio, 5), "chunk_samples": CHUNK,
             "n_chunks": len(push_all), "chunk_ms_p50": _ms(push_all, 50),
             "chunk_ms_p99": _ms(push_all, 99), "chunk_ms_max": _ms(push_all, 100),
             "flush_ms_mean": round(1e3 * float(np.mean(flush_all)), 3), "repeats": repeats}
    return {"sets": out, "speed": speed}


def _short(text: str, width: int) -> str:
    return textwrap.shorten(text, width, placeholder=" ...") if text else "(empty)"


def print_report(res: dict) -> None:
    m = res["model"]
    print(f"model  {m['path']}  {m['n_params']:,} params  {m['size_bytes']:,} bytes  "
          f"sha256 {m['sha256'][:16]}...  lookahead {m['lookahead_ms']:.0f} ms")
    print(f"config {json.dumps(m['config'])}")
    for name, s in res["sets"].items():
        print(f"\n[{name}]  {s['n_clips']} clips, {s['audio_s']:.1f} s")
        print(f"  {'clip':<42} {'dur s':>6} {'CER':>6} {'WER':>6}")
        for r in s["clips"]:
            print(f"  {r['clip']:<42} {r['duration_s']:>6.2f} {r['cer']:>6.3f} "
                  f"{r['wer']:>6.3f}")
            print(f"      ref: {_short(r['reference'], 86)}")
            print(f"      hyp: {_short(r['hypothesis'], 86)}")
        print(f"  {'TOTAL':<42} {s['audio_s']:>6.2f} {s['cer']:>6.3f} {s['wer']:>6.3f}   "
              f"({s['char_edits']}/{s['ref_chars']} chars, "
              f"{s['word_edits']}/{s['ref_words']} words, RTF {s['rtf']:.3f})")
    sp = res["speed"]
    mc = res["machine"]
    print(f"\nspeed  RTF {sp['rtf']:.4f} ({sp['processing_s']:.2f} s for {sp['audio_s']:.1f} s"
          f" of audio), 20 ms push p50 {sp['chunk_ms_p50']:.3f} ms, "
          f"p99 {sp['chunk_ms_p99']:.3f} ms, flush {sp['flush_ms_mean']:.1f} ms; "
          f"{mc['torch_threads']} torch thread(s) on {mc['cpu']}")
    if "librivox" in res["sets"]:
        lv = res["sets"]["librivox"]
        print(f"headline  librivox CER {lv['cer']:.4f}  WER {lv['wer']:.4f}  "
              f"RTF {sp['rtf']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="speech checkpoint (default: the shipped model)")
    ap.add_argument("--out", default=str(RESULTS / "speech_default.json"),
                    help="JSON results file (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="streaming passes over every clip for the timing (default 1)")
    ap.add_argument("--sets", default=",".join(SETS),
                    help="comma-separated sets to run (default: %(default)s)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE),
                    help="where the sdist is downloaded and extracted (default: %(default)s)")
    ap.add_argument("--pocketsphinx-src", metavar="DIR",
                    help="an extracted pocketsphinx source tree to use instead of the cache")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass

    from engines.audio.speech_frontend import DeepSpeechFrontend, SpeechModelError

    weights = Path(args.weights) if args.weights else default_weights()
    try:
        frontend = DeepSpeechFrontend.from_checkpoint(weights)
        root = pocketsphinx_source(args.pocketsphinx_src, args.cache)
        sets = load_eval_sets(root, tuple(s for s in args.sets.split(",") if s))
    except (SpeechModelError, DatasetError, ValueError) as e:
        print(f"speech_eval: {e}", file=sys.stderr)
        return 2

    res = {"benchmark": "speech_eval", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine(args.threads), "model": model_facts(weights, frontend),
           "data": {"source": f"pocketsphinx {SDIST_VERSION} sdist (PyPI)",
                    "sdist_sha256": SDIST_SHA256, "tree": str(root)},
           "decoding": {"chunk_samples": CHUNK, "decoder": "greedy CTC, no language model",
                        "references": "etf_models.speech_metrics.normalise_text",
                        "rates": "corpus: total edits / total reference chars or words"}}
    res.update(evaluate(frontend, sets, args.repeats))
    if "librivox" in res["sets"]:
        res["headline"] = {"librivox_cer": res["sets"]["librivox"]["cer"],
                           "librivox_wer": res["sets"]["librivox"]["wer"],
                           "rtf": res["speed"]["rtf"]}
    print_report(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
