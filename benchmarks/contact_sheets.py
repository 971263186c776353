"""Contact sheets: every emotion at intensity 1 (plus speech shapes and a blink) per face.

Writes one PNG per face to benchmarks/results/sheet_<face>.png, cropped around the head,
for looking at: does each emotion read as itself, and does the face stay the same person?
Faces: the built-in one and, when ../shared/devset exists, three devset photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"
DEVSET_FACES = ["full4.jpeg", "people_0.png", "art_1.png"]
SPEECH_SHAPES = {
    "talk: aa": {"jaw_open": 0.8, "lips_part": 0.4},
    "talk: oo": {"lip_round": 1.0, "jaw_open": 0.25, "lips_part": 0.3},
    "talk: ee": {"lip_stretch": 0.75, "jaw_open": 0.22, "lips_part": 0.4},
    "talk: f": {"labiodental": 1.0},
    "blink": {"blink": 1.0},
}


def sheet(identity, tile: int = 260) -> np.ndarray:
    from engines.motion import face_motion as M
    from engines.render import texture_warp
    from engines.render.compositor import paste_roi
    from etf_models.canonical_face import apply_affine
    from etf_models.emotions import EMOTIONS, emotion_one_hot

    warp = texture_warp.prepare(identity)
    fields = M.build_fields(identity.neutral)
    c = apply_affine(identity.from_canonical, np.array([[30.0, 20.0], [226.0, 246.0]]))
    h, w = identity.photo.shape[:2]
    x0, y0 = np.clip(c[0], 0, None).astype(int)
    x1, y1 = int(min(w, c[1][0])), int(min(h, c[1][1]))
    cells = [("photo", identity.photo)]
    shapes = {e: M.emotion_params(emotion_one_hot(e), 1.0) for e in EMOTIONS}
    for name, ps in SPEECH_SHAPES.items():
        p = np.zeros(M.N_PARAMS, np.float32)
        for k, v in ps.items():
            p[M.P[k]] = v
        shapes[name] = p
    for name, p in shapes.items():
        lm = M.apply(identity.neutral, fields, p)
        img = paste_roi(identity.photo, texture_warp.render_roi(warp, lm), warp.roi, warp.feather)
        cells.append((name, img))
    tiles = []
    for name, img in cells:
        t = cv2.resize(img[y0:y1, x0:x1], (tile, int(tile * (y1 - y0) / (x1 - x0))))
        t = np.ascontiguousarray(t)
        cv2.putText(t, name, (6, 22), 0, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(t, name, (6, 22), 0, 0.6, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    per_row = 7
    while len(tiles) % per_row:
        tiles.append(np.zeros_like(tiles[0]))
    return np.vstack([np.hstack(tiles[i : i + per_row]) for i in range(0, len(tiles), per_row)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    from engines.face.default_face import default_identity
    from engines.face.enrollment import enroll

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faces = [("default", default_identity())]
    if DEVSET.is_dir():
        faces += [(Path(n).stem, enroll(DEVSET / n)) for n in DEVSET_FACES]
    for name, identity in faces:
        path = out / f"sheet_{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(sheet(identity), cv2.COLOR_RGB2BGR))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
