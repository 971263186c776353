"""Sanity check of G_L on real data: train on one devset clip, predict the other's mouth.

The devset's two paired clips (a real person talking, with their own audio) give real
landmark sequences: dlib's 68 points on every frame, aligned to the canonical frame. Their
audio goes through the speech front end (the shipped default DeepSpeech-architecture model,
or ``--speech-weights``) into the paper's [6,29] windows per frame. G_L is trained on clip A
(L_ver + LSGAN, Adam 2e-4, emotion neutral) and predicts clip B's landmarks from clip B's
audio and clip B's own neutral landmarks; the score is the correlation of the predicted and
the real mouth opening (best lag within +-3 frames), next to the default landmark engine's
on the same clip (``benchmarks/lipsync_devset.py``'s "engine landmarks" measure).

One clip is 8 s (200 frames): this shows whether the pipeline learns something real from
speech, not what G_L trained on MEAD would do.

    python benchmarks/gl_devset.py            # -> benchmarks/results/gl_devset.json
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

DEVSET = ROOT.parent / "shared" / "devset"
CLIPS = ("WDA_AlexandriaOcasioCortez_000.mp4", "WDA_KatieHill_000.mp4")
FPS = 25.0


def clip_frames(path: Path, frontend) -> dict:
    """Real canonical landmarks, the neutral (enrolled) landmarks and speech windows."""
    from benchmarks.lipsync_devset import closed_mouth_frame, frames_of
    from engines.audio.speech_frontend import audio_to_windows
    from engines.face.enrollment import enroll_image
    from engines.face.face_metrics import frame_landmarks
    from engines.media.audio_io import load_audio
    from etf_models.canonical_face import apply_affine, mouth_opening, similarity_to_canonical

    frames = frames_of(path)
    photo = frame_landmarks(frames)
    ok = np.isfinite(photo).all(axis=(1, 2))
    canon = np.full_like(photo, np.nan)
    for i in np.flatnonzero(ok):
        canon[i] = apply_affine(similarity_to_canonical(photo[i]), photo[i])
    ref = closed_mouth_frame(mouth_opening(canon))  # the "photo", as lipsync_devset picks it
    identity = enroll_image(frames[ref], source=f"{path.name}#{ref}")
    windows = audio_to_windows(frontend, load_audio(path, 16000), FPS)
    n = min(len(frames), len(windows))
    return {"name": path.stem, "target": canon[:n], "ok": ok[:n], "windows": windows[:n],
            "neutral": identity.neutral.astype(np.float32), "ref": ref}


def as_training(clip: dict):
    from etf_models.landmark_train import LandmarkFrames

    ok = clip["ok"]
    n = int(ok.sum())
    emotion = np.zeros((n, 7), np.float32)
    emotion[:, 0] = 1.0
    return LandmarkFrames(clip["windows"][ok], emotion, np.ones(n, np.float32),
                          np.repeat(clip["neutral"][None], n, 0), clip["target"][ok])


def run(train: dict, test: dict, steps: int, seed: int) -> dict:
    import torch

    from engines.face.face_metrics import best_lag_corr
    from etf_models.canonical_face import mouth_opening
    from etf_models.landmark_gcn import face_graph
    from etf_models.landmark_train import LandmarkTrainConfig, LandmarkTrainer

    torch.manual_seed(seed)
    train_data, test_data = as_training(train), as_training(test)
    real_test = mouth_opening(test_data.target)

    def evaluate(g) -> dict:
        pred = mouth_opening(trainer.predict(test_data))
        return {"test_corr": round(best_lag_corr(pred, real_test)[0], 4)}

    trainer = LandmarkTrainer(face_graph(train["neutral"]),
                              LandmarkTrainConfig(seed=seed, window_noise=0.5, adv_start=200))
    t0 = time.time()
    trainer.fit(train_data, steps, log_every=max(1, steps // 10), evaluate=evaluate)
    seconds = time.time() - t0
    pred_train = mouth_opening(trainer.predict(train_data))
    pred_test = mouth_opening(trainer.predict(test_data))
    r_train, _ = best_lag_corr(pred_train, mouth_opening(train_data.target))
    r_test, lag = best_lag_corr(pred_test, real_test)
    return {"train_clip": train["name"], "test_clip": test["name"], "steps": steps,
            "train_seconds": round(seconds, 1), "corr_train_clip": round(r_train, 4),
            "corr_test_clip": round(r_test, 4), "lag_frames": lag,
            "history": trainer.history}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speech-weights", help="speech model (default: the shipped one)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gl_devset.json"))
    args = p.parse_args(argv)
    if not all((DEVSET / c).exists() for c in CLIPS):
        print(f"gl_devset: the devset clips are not in {DEVSET}", file=sys.stderr)
        return 2
    import torch

    from engines.audio.speech_frontend import DeepSpeechFrontend

    torch.set_num_threads(2)
    frontend = (DeepSpeechFrontend.from_checkpoint(args.speech_weights) if args.speech_weights
                else DeepSpeechFrontend.default())
    clips = [clip_frames(DEVSET / c, frontend) for c in CLIPS]
    runs = [run(clips[0], clips[1], args.steps, args.seed),
            run(clips[1], clips[0], args.steps, args.seed)]
    baseline = ROOT / "benchmarks" / "results" / "lipsync_devset.json"
    base = json.loads(baseline.read_text()) if baseline.exists() else None
    result = {"benchmark": "gl_devset", "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "torch": torch.__version__, "threads": 2},
              "speech_model": args.speech_weights or "shipped default",
              "runs": runs, "default_engine": base}
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in runs:
        print(f"train {r['train_clip']} -> test {r['test_clip']}: mouth corr "
              f"{r['corr_test_clip']:.3f} (train clip {r['corr_train_clip']:.3f}), "
              f"{r['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
