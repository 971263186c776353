"""Lip sync on real talking clips, leave one speaker out: G_L vs the default engine vs loudness.

Every clip of a talking folder (``../shared/data/talking``: ~25 people speaking to camera
with their own audio) is read by ``etf preprocess --kind talking`` (dlib's 68 points on
every frame at 25 fps, aligned to the canonical frame; made here if ``--shards`` lacks
them). Per clip: the real mouth opening (inner-lip gap / outer-eye-corner distance), the
speech front end's [6,29] windows of the clip's own audio (``--speech-weights``, default
the shipped model), and the clip's rest face (its most closed-mouth frame, neutralised).

For each person (clips of the same person are one group, e.g. the four Obama clips; the
GRID sentences are one group), G_L is trained on all other people's frames (L_ver +
LSGAN, emotion neutral) and predicts the held-out person's landmarks from their audio and
rest face. Scores per clip and per person (frames pooled):

- correlation of mouth opening with the real mouth, best lag within +-3 frames, for G_L,
  the default engine (``SpeechLandmarkEngine``: phones -> visemes, landmarks before the
  renderer; the same rest face) and the loudness envelope;
- amplitude: median and 90th percentile of the mouth opening, each engine vs the real one
  (the ratio; 1.0 is right);
- the lag at the best correlation over +-8 frames (a diagnostic of timing offsets).

    python benchmarks/lipsync_talking.py        # -> benchmarks/results/lipsync_talking.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etf_models.datasets import person_of  # noqa: E402

TALKING = ROOT.parent / "shared" / "data" / "talking"
FPS = 25.0


def ensure_shards(talking: Path, shards: Path, workers: int) -> None:
    from engines.recordings.preprocess import preprocess
    from etf_models.datasets import scan

    found = scan(talking, "talking")
    todo = [c for c in found.clips if not (shards / "shards" / f"{c.clip_id}.npz").exists()]
    if todo:
        print(f"preprocessing {len(todo)} clips into {shards} ...", flush=True)
        preprocess(found.clips, shards, fps=FPS, workers=workers)


def load_clips(talking: Path, shards: Path, frontend) -> list[dict]:
    from benchmarks.lipsync_devset import closed_mouth_frame
    from engines.audio.speech_frontend import audio_to_windows
    from engines.face.enrollment import neutralise
    from engines.media.audio_io import load_audio
    from etf_models.canonical_face import mouth_opening
    from etf_models.datasets import scan

    clips = []
    for rec in scan(talking, "talking").clips:
        path = shards / "shards" / f"{rec.clip_id}.npz"
        if not path.exists():
            continue  # preprocess skipped it (its log says why)
        with np.load(path) as z:
            canon = z["landmarks"].astype(np.float32)
        audio = load_audio(rec.audio, 16000)
        windows = (audio_to_windows(frontend, audio, FPS) if frontend is not None else
                   np.zeros((len(canon), 6, 29), np.float32))  # no G_L: not needed
        n = min(len(canon), len(windows))
        canon, windows = canon[:n], windows[:n]
        ok = np.isfinite(canon).all(axis=(1, 2))
        opening = mouth_opening(np.where(ok[:, None, None], canon, 0))
        opening[~ok] = np.nan
        ref = closed_mouth_frame(opening, first=4 * int(FPS))  # NaN where untracked
        if not ok[ref]:  # no tracked frame in the first 4 s
            ref = int(np.flatnonzero(ok)[0])
        clips.append({"clip": rec.clip_id, "person": person_of(rec.speaker), "n": n,
                      "target": canon, "ok": ok, "windows": windows.astype(np.float32),
                      "neutral": neutralise(canon[ref])[0].astype(np.float32),
                      "real": opening, "audio": audio, "ref": ref})
    return clips


def landmark_frames(c: dict, usable_only: bool):
    """A clip as G_L data (neutral emotion): its usable frames (for training), or all of
    them with the untracked ones' targets zeroed (for prediction, frame for frame)."""
    from etf_models.landmark_train import LandmarkFrames

    keep = c["ok"] if usable_only else np.ones(c["n"], bool)
    n = int(keep.sum())
    emotion = np.zeros((n, 7), np.float32)
    emotion[:, 0] = 1.0
    target = np.where(c["ok"][:, None, None], c["target"], 0).astype(np.float32)[keep]
    return LandmarkFrames(c["windows"][keep], emotion, np.zeros(n, np.float32),
                          np.repeat(c["neutral"][None], n, 0), target)


def as_training(clips: list[dict]):
    from etf_models.landmark_train import LandmarkFrames

    return LandmarkFrames.concat([landmark_frames(c, usable_only=True) for c in clips])


def default_engine_opening(c: dict) -> np.ndarray:
    from engines.render.landmark_default import SpeechLandmarkEngine

    eng = SpeechLandmarkEngine(c["neutral"], fps=FPS, idle_amplitude=0.0)
    return streamed_opening(eng, c["audio"], c["n"])


def streamed_opening(eng, audio: np.ndarray, n: int) -> np.ndarray:
    """A landmark engine's mouth opening [n] on ``audio`` streamed in 20 ms chunks (NaN
    past what it made)."""
    from etf_models.canonical_face import mouth_opening

    out = []
    for s in range(0, len(audio), 320):
        eng.push_audio(audio[s : s + 320])
        while eng.frames_ready() > 0 and len(out) < n:
            out.append(eng.next_frame()[0])
    eng.flush()
    while eng.frames_ready() > 0 and len(out) < n:
        out.append(eng.next_frame()[0])
    op = mouth_opening(np.array(out, np.float32))
    return np.pad(op, (0, n - len(op)), constant_values=np.nan)


def rendered_opening(c: dict, crop: np.ndarray) -> np.ndarray:
    """The default engine rendered on the clip's own rest frame (its 256 canonical crop,
    enrolled like a photo), then measured like the real frames (dlib on every frame)."""
    from engines.face.enrollment import enroll_image
    from engines.face.face_metrics import mouth_openings
    from engines.render.pipeline import FaceAnimator

    identity = enroll_image(crop, source=f"{c['clip']}#rest")
    frames = [f.image for f in FaceAnimator(identity, fps=FPS).render_all(c["audio"])]
    op = mouth_openings(frames[: c["n"]])
    return np.pad(op, (0, c["n"] - len(op)), constant_values=np.nan)


def rest_crop(shards: Path, c: dict) -> np.ndarray:
    import cv2

    with np.load(shards / "shards" / f"{c['clip']}.npz") as z:
        jpeg, off = z["jpeg"], z["jpeg_offsets"]
    i = c["ref"]
    return cv2.cvtColor(cv2.imdecode(jpeg[off[i] : off[i + 1]], cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def score(pred: np.ndarray, real: np.ndarray) -> dict:
    from engines.face.face_metrics import best_lag_corr

    r, lag = best_lag_corr(pred, real)
    r8, lag8 = best_lag_corr(pred, real, max_lag=8)
    ok = np.isfinite(pred) & np.isfinite(real)
    med_p, med_r = np.median(pred[ok]), np.median(real[ok])
    p90_p, p90_r = np.percentile(pred[ok], 90), np.percentile(real[ok], 90)
    return {"corr": round(r, 4), "lag": lag, "corr_lag8": round(r8, 4), "lag8": lag8,
            "median": round(float(med_p), 4), "p90": round(float(p90_p), 4),
            "median_ratio": round(float(med_p / max(med_r, 1e-6)), 3),
            "p90_ratio": round(float(p90_p / max(p90_r, 1e-6)), 3)}


def train_gl(train: list[dict], steps: int, seed: int):
    import torch

    from etf_models.landmark_gcn import face_graph
    from etf_models.landmark_train import LandmarkTrainConfig, LandmarkTrainer

    torch.manual_seed(seed)
    data = as_training(train)
    template = np.median(np.stack([c["neutral"] for c in train]), axis=0)
    trainer = LandmarkTrainer(face_graph(template),
                              LandmarkTrainConfig(seed=seed, window_noise=0.5, adv_start=200))
    trainer.fit(data, steps, log_every=max(1, steps // 5))
    return trainer


def _opening_gain() -> float:
    from engines.render.landmark_default import SpeechLandmarkEngine

    return SpeechLandmarkEngine.opening_gain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--talking", default=str(TALKING))
    p.add_argument("--shards", default=str(Path.home() / ".cache" / "etf" / "talking-shards"),
                   help="etf preprocess --kind talking output (made if missing)")
    p.add_argument("--speech-weights", help="speech model (default: the shipped one)")
    p.add_argument("--steps", type=int, default=3000, help="G_L steps per held-out person")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", help="comma-separated people to hold out (default: all)")
    p.add_argument("--no-gl", action="store_true", help="score the default engine and "
                   "loudness only (no G_L training)")
    p.add_argument("--rendered", action="store_true", help="also render the default engine "
                   "on each clip's rest frame and measure the rendered mouth with dlib")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        "lipsync_talking.json"))
    args = p.parse_args(argv)
    talking, shards = Path(args.talking), Path(args.shards)
    if not talking.is_dir():
        print(f"lipsync_talking: no talking clips in {talking}", file=sys.stderr)
        return 2
    import torch

    from engines.audio.speech_frontend import DeepSpeechFrontend
    from engines.face.face_metrics import loudness_envelope
    from etf_models.canonical_face import mouth_opening

    torch.set_num_threads(2)
    t_load = time.time()
    ensure_shards(talking, shards, args.workers)
    frontend = (None if args.no_gl else
                DeepSpeechFrontend.from_checkpoint(args.speech_weights) if args.speech_weights
                else DeepSpeechFrontend.default())
    clips = load_clips(talking, shards, frontend)
    people = sorted({c["person"] for c in clips})
    held_out = args.only.split(",") if args.only else people
    unknown = set(held_out) - set(people)
    if unknown:
        print(f"lipsync_talking: no clips of {sorted(unknown)}; people: {people}",
              file=sys.stderr)
        return 2
    print(f"{len(clips)} clips, {sum(c['n'] for c in clips)} frames, {len(people)} people "
          f"({time.time() - t_load:.0f} s to load)", flush=True)
    engines = [*(() if args.no_gl else ("gl", "gl_smoothed")), "default",
               *(("default_rendered",) if args.rendered else ()), "loudness"]
    t0 = time.time()
    per_clip, per_person = [], []
    for person in held_out:
        test = [c for c in clips if c["person"] == person]
        train = [c for c in clips if c["person"] != person]
        t1 = time.time()
        trainer = None if args.no_gl else train_gl(train, args.steps, args.seed)
        pooled: dict[str, list] = {k: [] for k in (*engines, "real")}
        for c in test:
            got = {"default": default_engine_opening(c),
                   "loudness": loudness_envelope(c["audio"], c["n"], FPS)}
            if trainer is not None:
                pred = trainer.predict(landmark_frames(c, usable_only=False))
                got["gl"] = mouth_opening(pred)
                # per-frame G_L with its landmarks smoothed over 3 frames (1 frame = 40 ms
                # more lookahead)
                smooth = pred.copy()
                smooth[1:-1] = 0.25 * pred[:-2] + 0.5 * pred[1:-1] + 0.25 * pred[2:]
                got["gl_smoothed"] = mouth_opening(smooth)
                for k in ("gl", "gl_smoothed"):
                    got[k][~c["ok"]] = np.nan
            if args.rendered:
                got["default_rendered"] = rendered_opening(c, rest_crop(shards, c))
            row = {"clip": c["clip"], "person": person, "frames": c["n"],
                   **{k: score(v, c["real"]) for k, v in got.items()}}
            row["loudness"].pop("median_ratio"), row["loudness"].pop("p90_ratio")
            per_clip.append(row)
            for k, v in (*got.items(), ("real", c["real"])):
                pooled[k].append(v)
            print(f"{c['clip']:34s} " + "  ".join(
                f"{k} {row[k]['corr']:+.3f}" + (f" amp {row[k]['median_ratio']:.2f}/"
                                                 f"{row[k]['p90_ratio']:.2f}"
                                                 if "median_ratio" in row[k] else "")
                for k in engines), flush=True)
        # frames of one person pooled; clips are concatenated with a NaN gap so that
        # no lag pairs frames across clips
        gap = np.full(8, np.nan)
        cat = {k: np.concatenate([x for v in vs for x in (v, gap)]) for k, vs in pooled.items()}
        per_person.append({"person": person, "clips": len(test),
                           "frames": int(sum(c["n"] for c in test)),
                           "train_seconds": round(time.time() - t1, 1),
                           **{k: score(cat[k], cat["real"]) for k in engines}})
    summary = {k: {"median_corr": round(float(np.median([r[k]["corr"] for r in per_person])), 4),
                   "mean_corr": round(float(np.mean([r[k]["corr"] for r in per_person])), 4)}
               for k in engines}
    for k in (e for e in engines if e != "loudness"):
        summary[k]["median_ratio_median"] = round(float(np.median(
            [r[k]["median_ratio"] for r in per_person])), 3)
        summary[k]["p90_ratio_median"] = round(float(np.median(
            [r[k]["p90_ratio"] for r in per_person])), 3)
        summary[k]["people_within_20pct"] = int(sum(
            abs(r[k]["median_ratio"] - 1) <= 0.2 and abs(r[k]["p90_ratio"] - 1) <= 0.2
            for r in per_person))
    result = {
        "benchmark": "lipsync_talking", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "threads": 2},
        "speech_model": args.speech_weights or "shipped default",
        "gl_steps": None if args.no_gl else args.steps,
        "opening_gain": _opening_gain(),
        "fps": FPS, "people": len(held_out), "seconds": round(time.time() - t0, 1),
        "summary": summary, "per_person": per_person, "per_clip": per_clip,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in per_person:
        print(f"{r['person']:22s} {r['frames']:5d} fr  " + "  ".join(
            f"{k} {r[k]['corr']:+.3f}" for k in engines))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
