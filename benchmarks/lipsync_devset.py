"""Lip sync on real paired clips: does the rendered mouth open when the real one did?

For each talking-head clip in ../shared/devset: detect 68 landmarks on every real frame,
enroll the clip's most closed-mouth frame as the identity, render that face speaking the
clip's own audio, detect landmarks on every rendered frame, and correlate mouth opening
(inner-lip gap / outer-eye-corner distance) rendered vs real, at the best lag within +-3
frames. The baseline is the audio's loudness envelope (RMS per frame) against the real
mouth. The mouth's width (corner to corner / outer-eye-corner distance: rounding and
spreading) is correlated the same way. Writes benchmarks/results/lipsync_devset.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import av
import numpy as np

from engines.face.face_metrics import best_lag_corr, frame_landmarks, loudness_envelope

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"
CLIPS = ["WDA_AlexandriaOcasioCortez_000.mp4", "WDA_KatieHill_000.mp4"]


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def closed_mouth_frame(opening: np.ndarray, first: int = 50) -> int:
    """The identity's frame: the most closed mouth in the first 2 s (neutral, closed)."""
    head = np.where(np.isfinite(opening[:first]), opening[:first], np.inf)
    return int(np.argmin(head))


def evaluate(clip: Path, out_dir: Path | None = None) -> dict:
    from engines.face.enrollment import enroll_image
    from engines.media.audio_io import load_audio
    from engines.render.mouth_ridge import mouth_width
    from engines.render.pipeline import FaceAnimator
    from etf_models.canonical_face import mouth_opening

    real_frames = frames_of(clip)
    fps = 25.0
    real_lm = frame_landmarks(real_frames)
    real, real_width = mouth_opening(real_lm), mouth_width(real_lm)
    ref = closed_mouth_frame(real)
    identity = enroll_image(real_frames[ref], source=f"{clip.name}#{ref}")
    audio = load_audio(clip, 16000)
    animator = FaceAnimator(identity, fps=fps)
    rendered, engine_lm = [], []
    for fr in animator.render_all(audio):
        rendered.append(fr.image)
        engine_lm.append(np.array(fr.landmarks))
    n = min(len(real), len(rendered))
    rend_lm = frame_landmarks(rendered[:n])
    rend = mouth_opening(rend_lm)
    engine_lm = np.array(engine_lm[:n])
    engine_open = mouth_opening(engine_lm)
    env = loudness_envelope(audio, n, fps)
    r_render, lag_render = best_lag_corr(rend, real[:n])
    r_engine, lag_engine = best_lag_corr(engine_open, real[:n])
    r_width, lag_width = best_lag_corr(mouth_width(rend_lm), real_width[:n])
    r_width_engine, _ = best_lag_corr(mouth_width(engine_lm), real_width[:n])
    r_loud, lag_loud = best_lag_corr(env, real[:n])
    if out_dir is not None:
        _plot(out_dir / f"lipsync_{clip.stem}.png", real[:n], rend, env)
    return {
        "clip": clip.name,
        "frames": n,
        "identity_frame": ref,
        "corr_rendered_vs_real": r_render,
        "lag_rendered_frames": lag_render,
        "corr_engine_landmarks_vs_real": r_engine,
        "lag_engine_frames": lag_engine,
        "corr_width_rendered_vs_real": r_width,
        "lag_width_rendered_frames": lag_width,
        "corr_width_engine_landmarks_vs_real": r_width_engine,
        "corr_loudness_vs_real": r_loud,
        "lag_loudness_frames": lag_loud,
        "lookahead_ms": animator.lookahead_ms,
    }


def _plot(path: Path, real: np.ndarray, rend: np.ndarray, env: np.ndarray) -> None:
    import cv2

    h, w = 300, 2 * len(real)
    img = np.full((h, w, 3), 255, np.uint8)
    for series, colour in ((real, (0, 0, 0)), (rend, (200, 60, 30)), (env, (40, 160, 40))):
        s = np.nan_to_num(series, nan=np.nanmin(series))
        s = (s - s.min()) / (np.ptp(s) + 1e-9)
        pts = np.c_[np.arange(len(s)) * 2, (h - 20 - s * (h - 40))].astype(np.int32)
        cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA)
    cv2.putText(img, "real (black)  rendered (blue)  loudness (green)", (5, 15), 0, 0.45,
                (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def main() -> None:
    ap = argparse.ArgumentParser(description="lip-sync correlation on the devset clips")
    ap.add_argument("--devset", default=str(DEVSET))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    devset, out = Path(args.devset), Path(args.out)
    if not devset.is_dir():
        raise SystemExit(f"devset not found at {devset}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in CLIPS:
        r = evaluate(devset / name, out)
        results.append(r)
        print(json.dumps(r))
    (out / "lipsync_devset.json").write_text(
        json.dumps({"clips": results, "machine": platform.platform()}, indent=2)
    )


if __name__ == "__main__":
    main()
