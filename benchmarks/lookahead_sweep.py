"""What audio lookahead costs in lip sync: the default engine at several latency settings.

The live path waits, after each frame's centre, for ``phone lookahead`` (the phone
recogniser's commit delay) + ``coarticulation future`` (how far the viseme blend reaches
ahead) + ``anticipation`` (the mouth leading its sound) of audio. Each setting here runs
the default landmark engine (``SpeechLandmarkEngine``, streamed in 20 ms chunks as the
server feeds it) on

- every real talking clip (``../shared/data/talking``, via ``etf preprocess --kind
  talking`` shards as in ``lipsync_talking.py``; each clip's own rest face), and
- the devset paired clips (``../shared/devset/*.mp4``; dlib on every real frame, the most
  closed-mouth frame of the first 2 s as the rest face),

and scores the mouth opening against the real mouth, frames of one person pooled:
correlation at the best lag within +-3 frames (what the other lip-sync benchmarks report),
correlation at lag 0 (timing counts: a late mouth loses here), and the amplitude ratios.

    python benchmarks/lookahead_sweep.py     # -> benchmarks/results/lookahead_sweep.json

No speaker is fitted here; the visemes were fitted on the talking clips' people (see
``visemes_real.py``), so their numbers are tuned-on; the devset clips never were.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402

FPS = 25.0
TALKING = ROOT.parent / "shared" / "data" / "talking"
DEVSET = ROOT.parent / "shared" / "devset"
#: (name, phone lookahead ms, coarticulation future ms, anticipation ms)
SETTINGS = [
    ("offline_290", 150, 100, 40),
    ("live_200", 100, 60, 40),
    ("p60_c0_a40", 60, 0, 40),
    ("p60_c20_a20", 60, 20, 20),
    ("p60_c40_a0", 60, 40, 0),
    ("p80_c20_a0", 80, 20, 0),
    ("p60_c0_a0", 60, 0, 0),
    ("p60_c0_a60", 60, 0, 60),
    ("p60_c0_a80", 60, 0, 80),
]


def engine_opening(neutral: np.ndarray, audio: np.ndarray, n: int, setting) -> np.ndarray:
    from benchmarks.lipsync_talking import streamed_opening
    from engines.render.landmark_default import SpeechLandmarkEngine

    _, phone, coart, antic, *rest = setting
    eng = SpeechLandmarkEngine(neutral, fps=FPS, idle_amplitude=0.0,
                               phone_lookahead_ms=phone, coart_future_ms=coart,
                               anticipation_ms=antic)
    if rest:  # the phone language model's weight, the recogniser's step
        from engines.audio.phone_stream import StreamingPhoneRecognizer

        eng.recognizer = StreamingPhoneRecognizer(lookahead_ms=phone, lw=rest[0],
                                                  step_ms=int(rest[1]) if rest[1:] else 20)
    return streamed_opening(eng, audio, n)


def devset_clips() -> list[dict]:
    from benchmarks.lipsync_devset import closed_mouth_frame, frames_of
    from engines.face.enrollment import enroll_image
    from engines.face.face_metrics import mouth_openings
    from engines.media.audio_io import load_audio

    clips = []
    for path in sorted(DEVSET.glob("*.mp4")):
        frames = frames_of(path)
        real = mouth_openings(frames)
        ident = enroll_image(frames[closed_mouth_frame(real)], source=path.name)
        clips.append({"clip": path.name, "person": "devset:" + path.stem, "n": len(frames),
                      "real": real, "audio": load_audio(path, 16000),
                      "neutral": ident.neutral.astype(np.float32)})
    return clips


def _run(args) -> tuple[str, str, np.ndarray]:
    clip, setting = args
    return clip["clip"], setting[0], engine_opening(clip["neutral"], clip["audio"], clip["n"],
                                                    setting)


def score(pred: np.ndarray, real: np.ndarray) -> dict:
    from engines.face.face_metrics import best_lag_corr

    r, lag = best_lag_corr(pred, real)
    r0, _ = best_lag_corr(pred, real, max_lag=0)
    ok = np.isfinite(pred) & np.isfinite(real)
    return {"corr": round(r, 4), "lag": lag, "corr_lag0": round(r0, 4),
            "median_ratio": round(float(np.median(pred[ok]) / np.median(real[ok])), 3),
            "p90_ratio": round(float(np.percentile(pred[ok], 90) /
                                     np.percentile(real[ok], 90)), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--talking", default=str(TALKING))
    ap.add_argument("--shards", default=str(Path.home() / ".cache" / "etf" / "talking-shards"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma-separated names of the built-in settings to run "
                    "(default: all; 'none' for only the --setting ones)")
    ap.add_argument("--setting", action="append", default=[],
                    help="an extra setting NAME:PHONE_MS:COART_MS:ANTICIPATION_MS[:LW[:STEP_MS]]")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                         "lookahead_sweep.json"))
    args = ap.parse_args(argv)
    from benchmarks.lipsync_talking import ensure_shards, load_clips

    extra = [(n, *map(float, rest)) for n, *rest in (x.split(":") for x in args.setting)]
    settings = [s for s in SETTINGS if not args.only or s[0] in args.only.split(",")] + extra
    t0 = time.time()
    talking, shards = Path(args.talking), Path(args.shards)
    clips = []
    if talking.is_dir():
        ensure_shards(talking, shards, args.workers)
        clips += load_clips(talking, shards, None)
    if DEVSET.is_dir():
        clips += devset_clips()
    if not clips:
        print("lookahead_sweep: no talking clips and no devset", file=sys.stderr)
        return 2
    print(f"{len(clips)} clips loaded in {time.time() - t0:.0f} s", flush=True)
    t1 = time.time()
    jobs = [(c, s) for s in settings for c in clips]
    with ProcessPoolExecutor(args.workers) as pool:
        got = {(name, s): op for name, s, op in pool.map(_run, jobs, chunksize=1)}
    people = sorted({c["person"] for c in clips})
    gap = np.full(8, np.nan)
    results = {}
    for s in settings:
        rows = []
        for person in people:
            mine = [c for c in clips if c["person"] == person]
            pred = np.concatenate([x for c in mine for x in (got[(c["clip"], s[0])], gap)])
            real = np.concatenate([x for c in mine for x in (c["real"], gap)])
            rows.append({"person": person, **score(pred, real)})
        talk = [r for r in rows if not r["person"].startswith("devset:")]
        dev = [r for r in rows if r["person"].startswith("devset:")]
        summ = {"phone_lookahead_ms": s[1], "coart_future_ms": s[2], "anticipation_ms": s[3],
                "lookahead_ms": s[1] + s[2] + s[3]}
        for tag, rs in (("talking", talk), ("devset", dev)):
            if rs:
                summ[tag] = {k: round(float(f([r[m] for r in rs])), 4)
                             for k, m, f in (("median_corr", "corr", np.median),
                                             ("mean_corr", "corr", np.mean),
                                             ("median_corr_lag0", "corr_lag0", np.median),
                                             ("mean_corr_lag0", "corr_lag0", np.mean),
                                             ("median_lag", "lag", np.median),
                                             ("median_ratio", "median_ratio", np.median),
                                             ("p90_ratio", "p90_ratio", np.median))}
        results[s[0]] = {"summary": summ, "per_person": rows}
        print(s[0], json.dumps(summ), flush=True)
    out = {"benchmark": "lookahead_sweep", "date": time.strftime("%Y-%m-%d"),
           "machine": machine_info(), "fps": FPS, "clips": len(clips),
           "people_talking": len([p for p in people if not p.startswith("devset:")]),
           "tuned_on": "the talking clips' people (visemes fitted on them); devset never",
           "seconds": round(time.time() - t1, 1), "settings": results}
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
