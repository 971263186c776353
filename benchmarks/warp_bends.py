"""How smoothly the warp bends the skin: the displacement field's Laplacian over the face.

A piecewise-linear warp over the 68 landmarks bends only along its triangles' edges; long
triangles (nose to mouth corner, cheek to jaw) show those bends as creases in a smile.
For each face and emotion (intensity 1, silent audio, every 6th frame of 1 s), the 99th
percentile of |Laplacian| of the forward field over the skin (inside the jaw and brows'
hull, 4 px clear of the lips and eyes), with the fill vertices (the default) and without
(``FILL_SPACING = 0``: the landmarks' own mesh). Faces: the built-in one and, when
../shared/devset is present, three devset photos.

    python benchmarks/warp_bends.py      # -> benchmarks/results/warp_bends.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"
PHOTOS = ("art_9.png", "full4.jpeg", "happy.png")
EMOTIONS = ("neutral", "happy", "surprise", "disgust")


def skin_mask(warp) -> np.ndarray:
    src = warp.src_vertices[:68].astype(np.int32)
    face = np.zeros(warp.shape, np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(src[:27]), 1)
    holes = np.zeros_like(face)
    cv2.fillPoly(holes, [src[48:60], src[36:42], src[42:48]], 1)
    return (face > 0) & (cv2.dilate(holes, np.ones((9, 9), np.uint8)) == 0)


def bends(warp, landmarks: list[np.ndarray]) -> float:
    from engines.render import texture_warp

    skin = skin_mask(warp)
    out = []
    for lm in landmarks:
        _, field = texture_warp.displacement(warp, lm)
        lap = np.abs(cv2.Laplacian(field, cv2.CV_32F, ksize=3)).sum(-1)
        out.append(np.percentile(lap[skin], 99))
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "warp_bends.json"))
    args = ap.parse_args()
    from engines.face.default_face import default_identity
    from engines.face.enrollment import EnrollOptions, enroll
    from engines.motion.emotion_state import EmotionState
    from engines.render import texture_warp
    from engines.render.pipeline import FaceAnimator

    faces = {"built-in": default_identity()}
    for name in PHOTOS if DEVSET.is_dir() else ():
        faces[name] = enroll(DEVSET / name, EnrollOptions(log_warnings=False))
    spacing = texture_warp.FILL_SPACING
    rows = []
    for name, ident in faces.items():
        for emotion in EMOTIONS:
            lms = [f.landmarks for f in FaceAnimator(ident, emotion=EmotionState(emotion, 1.0))
                   .render_all(np.zeros(16000, np.float32))][::6]
            got = {}
            for label, fill in (("fill", spacing), ("landmarks_only", 0.0)):
                texture_warp.FILL_SPACING = fill
                try:
                    got[label] = round(bends(texture_warp.prepare(ident, expression=False),
                                             lms), 3)
                finally:
                    texture_warp.FILL_SPACING = spacing
            got["ratio"] = round(got["fill"] / got["landmarks_only"], 3)
            rows.append({"face": name, "emotion": emotion, **got})
            print(f"{name:12s} {emotion:9s} fill {got['fill']:.3f}  landmarks only "
                  f"{got['landmarks_only']:.3f}  ratio {got['ratio']:.2f}", flush=True)
    result = {"benchmark": "warp_bends", "metric": "p99 |Laplacian| of the forward field "
              "over the skin (px per px^2, both axes summed)", "fill_spacing_iod": spacing,
              "rows": rows, "machine": machine_info()}
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
