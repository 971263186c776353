"""Mouth contact sheets: our mouth beside real mouths making the same shape.

Shapes: aa, ee, oo, f/v, m/b/p (the default engine's own targets for AA, IY, UW, F, M at
full loudness, as it scales them, the lips shaped as real lips are at that opening and
width where the engine does it: engines/render/lip_shapes.py) and a wide smile (happy at
intensity 1). Real mouths come from the talking clips (``../shared/data/talking``), found
by their face mesh: per frame the inner-lip gap, mouth width, corner lift and lower-lip
thickness, in inter-ocular distances, compared with the same person's median; per shape
the best frame of each person, the four best people shown. Our mouths: the built-in face
and four devset photos.

``--mouth learned`` shows the learned interior (engines/render/mouth_model.py) instead of
the painted one.

Writes benchmarks/results/mouth_sheet.png (2x mouth crops; git-ignored: it holds frames of
real people) and benchmarks/results/mouth_sheets.json (which frames were chosen, with their
measures; no image). Machine-independent (no timing).

    python benchmarks/mouth_sheets.py [--every 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.contact_sheets import DEVSET, DEVSET_FACES  # noqa: E402
from etf_models.datasets import person_of  # noqa: E402

TALKING = ROOT.parent / "shared" / "data" / "talking"
OUT = ROOT / "benchmarks" / "results"
TILE = 168
SHAPES = ("aa", "ee", "oo", "f/v", "m/b/p", "smile")
#: the engine's phone for each speech shape
PHONE = {"aa": "AA", "ee": "IY", "oo": "UW", "f/v": "F", "m/b/p": "M"}


# --- real mouths ------------------------------------------------------------------------

def measures(mesh: np.ndarray) -> dict[str, float]:
    """Mouth measures of one mesh, in inter-ocular distances (eye centres from corners)."""
    from engines.recordings.mesh68_fit import align_on_eyes, apply

    a = apply(align_on_eyes(mesh)[0], mesh)  # x along the eyes, y down the face
    y = a[:, 1]
    return {
        "gap": float(y[14] - y[13]),
        "width": float(np.linalg.norm(a[291] - a[61])),
        "lift": float((y[13] + y[14]) / 2 - (y[61] + y[291]) / 2),
        "lower": float(y[17] - y[14]),
        "upper": float(y[13] - y[0]),
        "chin": float(y[152] - y[1]),  # below the nose tip: the skull's, not the eyes' frame
    }


def chin_slopes(rows: list[dict]) -> dict[str, float]:
    """Per person: how far the chin drops per unit of inner-lip gap (least squares over each
    clip's frames, so framing and head height drop out; the median of their clips)."""
    by_clip: dict[str, list[dict]] = {}
    for r in rows:
        by_clip.setdefault(r["clip"], []).append(r)
    per: dict[str, list[float]] = {}
    for rs in by_clip.values():
        gap = np.array([r["gap"] for r in rs])
        if len(rs) < 20 or np.ptp(gap) < 0.1:
            continue
        slope = np.polyfit(gap, [r["chin"] for r in rs], 1)[0]
        per.setdefault(rs[0]["person"], []).append(float(slope))
    return {p: float(np.median(v)) for p, v in sorted(per.items())}


def our_chin_ratio(identity) -> float:
    """The default engine's chin drop over its inner-lip gap on an "aa" at full loudness
    (68 points; inter-ocular distances between the eye centres, as the mesh measures)."""
    from engines.motion import face_motion as M
    from engines.render.landmark_default import SpeechLandmarkEngine

    n = identity.neutral
    lm = M.apply(n, M.build_fields(n), SpeechLandmarkEngine.viseme("AA"))
    d = lm - n
    return float(d[8, 1] / (d[66, 1] - d[62, 1]))  # the lips' middle, as the mesh's 13/14


def scan_clips(every: int) -> list[dict]:
    import av

    from engines.face.mesh import MeshTracker

    rows = []
    for path in sorted(p for p in TALKING.iterdir() if p.suffix in (".mp4", ".mpg")):
        track = MeshTracker(iris=False)
        with av.open(str(path)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i % every:
                    continue
                mesh = track(np.ascontiguousarray(frame.to_ndarray(format="rgb24")))
                if mesh is None:
                    continue
                rows.append({"clip": path.name, "frame": i, "person": person_of(path.stem),
                             "mesh": mesh[:, :2].astype(np.float32), **measures(mesh)})
    return rows


def choose(rows: list[dict], per_shape: int = 4) -> dict[str, list[dict]]:
    """Per shape, the best frame of each person, then the best ``per_shape`` people."""
    by_person: dict[str, list[dict]] = {}
    for r in rows:
        by_person.setdefault(r["person"], []).append(r)
    picks: dict[str, list[tuple[float, dict]]] = {s: [] for s in SHAPES}
    for rs in by_person.values():
        med = {k: float(np.median([r[k] for r in rs])) for k in ("width", "lift", "lower")}
        for s in SHAPES:
            best, score = None, -np.inf
            for r in rs:
                w = r["width"] / med["width"]
                sc = _score(s, r, w, med)
                if sc > score:
                    best, score = r, sc
            if best is not None and np.isfinite(score):
                picks[s].append((score, best))
    return {s: [r for _, r in sorted(v, key=lambda t: -t[0])[:per_shape]]
            for s, v in picks.items()}


def _score(shape: str, r: dict, w: float, med: dict) -> float:
    g = r["gap"]
    if shape == "aa":  # wide open, neither spread nor rounded
        return g - abs(w - 1.0) if abs(w - 1) < 0.08 else -np.inf
    if shape == "ee":  # spread, a little open
        return w if 0.03 < g < 0.15 and r["lift"] < med["lift"] + 0.04 else -np.inf
    if shape == "oo":  # rounded, a little open
        return -w if 0.03 < g < 0.2 else -np.inf
    if shape == "f/v":  # lower lip tucked: thinner, nearly shut
        return -r["lower"] / med["lower"] if g < 0.05 and w > 0.9 else -np.inf
    if shape == "m/b/p":  # shut, lips pressed (thin)
        return -(r["lower"] + r["upper"]) if g < 0.01 and abs(w - 1) < 0.06 else -np.inf
    if shape == "smile":  # wide, corners up
        return (w - 1) + 2 * (r["lift"] - med["lift"]) if w > 1.08 else -np.inf
    raise ValueError(shape)


def real_tile(r: dict) -> np.ndarray:
    import av

    with av.open(str(TALKING / r["clip"])) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == r["frame"]:
                img = frame.to_ndarray(format="rgb24")
                break
    return mouth_crop(img, r["mesh"][[61, 291]], r["mesh"][[33, 133, 362, 263]])


def mouth_crop(img: np.ndarray, corners: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """A square around the mouth, 1.3 inter-ocular distances wide, level with the eyes."""
    r_eye, l_eye = eyes[:2].mean(0), eyes[2:].mean(0)
    iod = float(np.linalg.norm(l_eye - r_eye))
    ex = (l_eye - r_eye) / iod
    ey = np.array([-ex[1], ex[0]])
    c = corners.mean(0)
    h = 0.65 * iod
    src = np.float32([c - h * ex - h * ey, c + h * ex - h * ey, c - h * ex + h * ey])
    dst = np.float32([[0, 0], [TILE, 0], [0, TILE]])
    return cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (TILE, TILE),
                          flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


# --- our mouths -------------------------------------------------------------------------

def our_tiles(identity, learned_mouth: bool = False) -> dict[str, np.ndarray]:
    from engines.motion import face_motion as M
    from engines.motion.emotion_model import emotion_offsets
    from engines.render import lip_shapes, texture_warp
    from engines.render.compositor import paste_roi
    from engines.render.expression_texture import ExpressionTexture
    from engines.render.landmark_default import SpeechLandmarkEngine, lips_closing
    from etf_models.emotions import emotion_one_hot

    warp = texture_warp.prepare(identity, learned_mouth=learned_mouth)
    fields = M.build_fields(identity.neutral)
    out = {}
    for s in SHAPES:
        if s == "smile":
            tex = ExpressionTexture(warp.expression)
            vec = emotion_one_hot("happy")
            lm = identity.neutral + (vec @ emotion_offsets(identity.neutral).reshape(7, -1)
                                     ).reshape(68, 2)
            roi = texture_warp.render_roi(warp, lm, tex.source(vec))
        else:
            speech = SpeechLandmarkEngine.viseme(PHONE[s])
            lm = M.apply(identity.neutral, fields, speech)
            # the lips shaped as the engine shapes them in speech (not while they press
            # or tuck: m b p, f v keep the fields' shape)
            lm = lip_shapes.default_model().apply(lm, identity.neutral,
                                                  1.0 - lips_closing(speech))
            roi = texture_warp.render_roi(warp, lm)
        img = paste_roi(identity.photo, roi, warp.roi, warp.feather)
        ph = identity.canonical_to_photo(lm)
        out[s] = mouth_crop(img, ph[[48, 54]], ph[36:48])
    return out


def faces() -> list[tuple[str, object]]:
    from engines.face.default_face import default_identity
    from engines.face.enrollment import EnrollOptions, enroll

    got = [("built-in", default_identity())]
    for name in DEVSET_FACES:
        if (DEVSET / name).is_file():
            got.append((name, enroll(DEVSET / name, EnrollOptions(log_warnings=False))))
    return got


def _label(t: np.ndarray, text: str) -> np.ndarray:
    t = np.ascontiguousarray(t.copy())
    cv2.putText(t, text, (4, 14), 0, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(t, text, (4, 14), 0, 0.42, (255, 255, 0), 1, cv2.LINE_AA)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, default=2, help="use every n-th frame of the clips")
    ap.add_argument("--mouth", choices=("painted", "learned"), default="painted",
                    help="our mouth interior: the painted one (default) or the learned model")
    args = ap.parse_args()
    idents = faces()
    ours = [(name, our_tiles(ident, args.mouth == "learned")) for name, ident in idents]
    scanned = scan_clips(args.every) if TALKING.is_dir() else []
    picks = choose(scanned) if scanned else {s: [] for s in SHAPES}
    slopes = chin_slopes(scanned)
    rows = []
    for s in SHAPES:
        row = [_label(t[s], f"ours {s} {name[:10]}") for name, t in ours]
        row += [_label(real_tile(r), f"real {r['person'][:12]}") for r in picks[s]]
        row += [np.zeros((TILE, TILE, 3), np.uint8)] * (len(ours) + 4 - len(row))
        rows.append(np.hstack(row))
    sheet = np.vstack(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(OUT / "mouth_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    keep = ("clip", "frame", "person", "gap", "width", "lift", "lower", "upper")
    (OUT / "mouth_sheets.json").write_text(json.dumps(
        {"about": "real mouths chosen per shape by their face-mesh measures "
                  "(inter-ocular distances); benchmarks/mouth_sheets.py",
         "faces": [n for n, _ in ours],
         "chin_drop_over_gap": {
             "about": "chin drop per unit of inner-lip gap: real = per person, the median "
                      "of per-clip least-squares slopes (face mesh, eye-aligned, the chin "
                      "measured from the nose tip: nods drop out); ours = "
                      "the default engine's full-loudness aa",
             "real_median_person": round(float(np.median(list(slopes.values()))), 3)
             if slopes else None,
             "real_per_person": {k: round(v, 3) for k, v in slopes.items()},
             "ours_aa": {name: round(our_chin_ratio(ident), 3) for name, ident in idents}},
         "real": {s: [{k: (round(float(r[k]), 4) if isinstance(r[k], float) else r[k])
                       for k in keep} for r in picks[s]] for s in SHAPES}}, indent=1) + "\n")
    print(f"wrote {OUT / 'mouth_sheet.png'} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
