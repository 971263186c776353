"""Contact sheets: every emotion at intensity 0.5 and 1 (plus speech shapes and a blink) per
face, beside real MEAD faces making the same emotion.

Writes one PNG per face to benchmarks/results/sheet_<face>.png, cropped around the head,
for looking at: does each emotion read as itself, and does the face stay the same person?
Rows: the photo and speech shapes; each emotion at 0.5; at 1; and, when
../shared/data/emotion exists, real MEAD frames (one speaker per face, the clip's middle
frame, eye-aligned). Faces: the built-in one and, when ../shared/devset exists, four devset
photos. The PNGs are git-ignored: they hold frames of real people and are not shipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

DEVSET = Path(__file__).resolve().parents[2] / "shared" / "devset"
DEVSET_FACES = ["full4.jpeg", "people_0.png", "art_1.png", "happy.png"]
MEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion"
#: the default engine's own targets for these phones at full loudness (what a viewer sees;
#: the raw fields at 1.0 go past real mouths: lip_round 1.0 narrows the lips to half)
SPEECH_SHAPES = {"talk: aa": "AA", "talk: oo": "UW", "talk: ee": "IY", "talk: f": "F",
                 "blink": {"blink": 1.0}}


def sheet(identity, tile: int = 260, real: str | None = None) -> np.ndarray:
    from engines.motion import face_motion as M
    from engines.render import texture_warp
    from engines.render.compositor import paste_roi
    from engines.render.landmark_default import SpeechLandmarkEngine
    from etf_models.canonical_face import apply_affine
    from etf_models.emotions import EMOTIONS, emotion_one_hot

    warp = texture_warp.prepare(identity)
    fields = M.build_fields(identity.neutral)
    c = apply_affine(identity.from_canonical, np.array([[30.0, 20.0], [226.0, 246.0]]))
    h, w = identity.photo.shape[:2]
    x0, y0 = np.clip(c[0], 0, None).astype(int)
    x1, y1 = int(min(w, c[1][0])), int(min(h, c[1][1]))
    from engines.motion.emotion_model import emotion_offsets
    from engines.render.expression_texture import ExpressionTexture

    tex = ExpressionTexture(warp.expression)
    offsets = emotion_offsets(identity.neutral)
    cells = [("photo", identity.photo)]
    for name, ps in SPEECH_SHAPES.items():
        if isinstance(ps, str):
            p = SpeechLandmarkEngine.viseme(ps)
        else:
            p = np.zeros(M.N_PARAMS, np.float32)
            for k, v in ps.items():
                p[M.P[k]] = v
        lm = M.apply(identity.neutral, fields, p)
        cells.append((name, paste_roi(identity.photo, texture_warp.render_roi(warp, lm),
                                      warp.roi, warp.feather)))
    cells.append(("", np.zeros_like(identity.photo)))
    for intensity in (0.5, 1.0):
        for e in EMOTIONS:
            vec = emotion_one_hot(e) * intensity
            vec[0] += 1.0 - intensity
            lm = identity.neutral + (vec @ offsets.reshape(7, -1)).reshape(68, 2)
            roi = texture_warp.render_roi(warp, lm, tex.source(vec))
            cells.append((f"{e} {intensity:g}", paste_roi(identity.photo, roi, warp.roi,
                                                          warp.feather).copy()))
    tile_rows = [_tiles(cells, identity, x0, y0, x1, y1, tile)]
    if real is not None:
        tile_rows.append(_real_row(real, tile, tile_rows[0][0].shape))
    return np.vstack([np.hstack(t[i : i + 7]) for t in tile_rows for i in range(0, len(t), 7)])


def _tiles(cells, identity, x0, y0, x1, y1, tile) -> list[np.ndarray]:
    tiles = []
    for name, img in cells:
        t = cv2.resize(img[y0:y1, x0:x1], (tile, int(tile * (y1 - y0) / (x1 - x0))))
        t = np.ascontiguousarray(t)
        cv2.putText(t, name, (6, 22), 0, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(t, name, (6, 22), 0, 0.6, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    while len(tiles) % 7:
        tiles.append(np.zeros_like(tiles[0]))
    return tiles


def _real_row(speaker: str, tile: int, shape) -> list[np.ndarray]:
    """The speaker's MEAD frames (middle of each clip), eye-aligned like our crops."""
    from engines.face.enrollment import detect_faces, detect_landmarks
    from engines.recordings.emotion_fit import find_mead_clips
    from engines.recordings.preprocess import _frames_at
    from etf_models.canonical_face import similarity_to_canonical
    from etf_models.emotions import EMOTIONS

    clips = find_mead_clips(MEAD)[speaker]
    out = []
    for e in EMOTIONS:
        frames = _frames_at(str(clips[e]), 25.0)
        img = frames[len(frames) // 2]
        faces = detect_faces(img)
        if faces:
            m = similarity_to_canonical(detect_landmarks(img, faces[0][0]))
            m = np.vstack([m, [0, 0, 1]])
            # canonical (30,20)-(226,246) -> the tile, as the renders are cropped
            s = tile / 196.0
            crop = np.array([[s, 0, -30 * s], [0, s, -20 * s]]) @ m
            img = cv2.warpAffine(img, crop, (shape[1], shape[0]), borderMode=cv2.BORDER_REPLICATE)
        else:
            img = cv2.resize(img, (shape[1], shape[0]))
        t = np.ascontiguousarray(img)
        label = f"MEAD {speaker} {e}"
        cv2.putText(t, label, (6, 22), 0, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(t, label, (6, 22), 0, 0.6, (255, 255, 0), 1, cv2.LINE_AA)
        out.append(t)
    return out


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
    speakers = ["M030", "W009", "W011", "W009", "W011"] if MEAD.is_dir() else [None] * 5
    for (name, identity), spk in zip(faces, speakers, strict=False):
        path = out / f"sheet_{name}.png"
        cv2.imwrite(str(path), cv2.cvtColor(sheet(identity, real=spk), cv2.COLOR_RGB2BGR))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
