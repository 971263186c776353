"""Emotion geometry read by a second instrument: real MEAD faces against our renders of them.

The emotion fields are measured with dlib's 68 points and calibrated through dlib
(engines/render/emotion_calibration.py). This benchmark reads both sides with instruments
the fit never used: MediaPipe's 468-point mesh (brows, lips, chin) and its iris model's own
lid margins (the eye's opening and how much white shows above the iris), in outer
eye-corner distances (mesh points 33 and 263; about 1.45x dlib's canonical IOD).

  * real: each MEAD speaker's clip per emotion (level 3, the middle half of its frames),
    the median of each measure minus the same speaker's neutral clip's median;
  * ours: that speaker's typical neutral frame (the one the calibration renders on),
    enrolled and rendered in each emotion at intensity 1 with silent audio (every 4th
    frame of 0.4-2 s), the median minus our neutral render's.

These are the fit's own three speakers, so this is no held-out score: it says whether the
renders move the face as far as the real faces they were measured on, region by region, by
a different ruler. MEAD's speakers talk while they pose, so the mouth's measures include
what each emotion adds to speech; the renders are silent.

No ruler here is exact. ``instrument_check`` raises the built-in face's upper lids and brows
by a known amount (the band from above the brows down to the eyes' middle stretched upward)
and reports how much of that rise dlib, the mesh and the iris model read: landmark models
lean toward an average face, each by its own amount, and a rise read at half its size on
both real and rendered faces still compares them fairly only if the lean is the same on
both.

    python benchmarks/emotion_geometry.py [--out benchmarks/results/emotion_geometry.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "emotion"
MEASURES = ("eye_opening", "white_above_iris", "brow_inner", "brow_middle", "brow_outer",
            "brow_separation", "lip_gap", "mouth_width", "corner_lift", "chin_drop")
#: what clip_measures returns: the medians of MEASURES, then the lip gap's first quartile
COLUMNS = (*MEASURES, "lip_gap_first_quartile")


def measures(img: np.ndarray, mesh, fm) -> np.ndarray:
    """The MEASURES of one face (RGB ``img``, its 478-point ``mesh``), in outer eye-corner
    distances, eye-aligned (x along the eye line, y down)."""
    ex = mesh[263, :2] - mesh[33, :2]
    iod = float(np.linalg.norm(ex))
    ex = ex / iod
    ey = np.array([-ex[1], ex[0]])

    def y(p):
        return float(np.asarray(p)[..., :2] @ ey) / iod

    def x(p):
        return float(np.asarray(p)[..., :2] @ ex) / iod

    lids, irises = fm.eye_contours(img, mesh)
    opening, above = [], []
    for lid, iris in zip(lids, irises, strict=True):
        upper = y(lid[11:14].mean(0))
        lower = y(lid[3:6].mean(0))
        radius = float(np.linalg.norm(iris[1:] - iris[0], axis=1).mean()) / iod
        opening.append(lower - upper)
        above.append(y(iris[0]) - radius - upper)
    eyes = y(mesh[[33, 133, 362, 263]].mean(0))
    return np.array([
        np.mean(opening), np.mean(above),
        eyes - 0.5 * (y(mesh[107]) + y(mesh[336])),
        eyes - 0.5 * (y(mesh[105]) + y(mesh[334])),
        eyes - 0.5 * (y(mesh[70]) + y(mesh[300])),
        x(mesh[336]) - x(mesh[107]),
        y(mesh[14]) - y(mesh[13]),
        x(mesh[291]) - x(mesh[61]),
        0.5 * (y(mesh[0]) + y(mesh[17])) - 0.5 * (y(mesh[61]) + y(mesh[291])),
        y(mesh[152]) - eyes,
    ])


def clip_measures(frames, fm) -> np.ndarray:
    """Median MEASURES over the frames where the mesh finds the face, then the lip gap's
    first quartile (the mouth between words: MEAD talks, so the median gap is partly
    speech)."""
    from engines.face.mesh import MeshTracker

    track = MeshTracker(fm, iris=False)
    out = [measures(f, m, fm) for f in frames if (m := track(f)) is not None]
    if not out:
        raise ValueError("no face in any frame")
    out = np.stack(out)
    gap = out[:, MEASURES.index("lip_gap")]
    return np.r_[np.median(out, axis=0), np.percentile(gap, 25)]


def instrument_check(fm, stretches=(0.2, 0.4, 0.8)) -> dict:
    """How much of a known rise of the upper lids and brows each instrument reads, on the
    built-in face: the band from 0.9 IOD above the eyes' middle down to it is stretched
    upward by each share in ``stretches`` (a point at height h above the middle rises by
    h * share). IOD here is dlib's eye-centre distance."""
    from engines.face import enrollment
    from engines.face.default_face import default_photo

    photo = default_photo()

    def read(img):
        lm = enrollment.detect_landmarks(img, enrollment.detect_faces(img)[0][0])
        mesh = fm(img)
        lids, _ = fm.eye_contours(img, mesh)
        return {"lid": {"dlib": lm[[37, 38, 43, 44], 1].mean(),
                        "mesh": mesh[[159, 386], 1].mean(),
                        "iris model": lids[:, 11:14, 1].mean()},
                "brow": {"dlib": lm[17:27, 1].mean(),
                         "mesh": mesh[[70, 63, 105, 66, 107, 300, 293, 334, 296, 336], 1].mean()},
                "lm": lm}

    base = read(photo)
    lm = base["lm"]
    iod = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
    mid = int(lm[36:48, 1].mean())
    top = max(int(mid - 0.9 * iod), 0)
    out = []
    for share in stretches:
        img = photo.copy()
        band = photo[top:mid]
        k = int(round(share / (1 + share) * (mid - top)))
        img[top:mid] = cv2.resize(band[k:], (band.shape[1], mid - top))
        got = read(img)
        row = {"stretch": share}
        for part in ("lid", "brow"):
            true = (mid - base[part]["dlib"]) * share / iod
            row[part] = {"true_rise": round(float(true), 4),
                         **{name: round(float((base[part][name] - got[part][name]) / iod / true), 3)
                            for name in base[part]}}
        out.append(row)
    return {"what": "share of a known rise each instrument reads (1 = exact)", "rows": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emotion-model", default=None,
                    help="judge this fitted file (etf fit-emotions -o FILE), not the shipped one")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"
                                         / "emotion_geometry.json"))
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"needs the MEAD clips in {DATA}")
    from engines.face.enrollment import EnrollOptions, enroll_image
    from engines.face.mesh import FaceMesh
    from engines.motion import emotion_model
    from engines.motion.emotion_state import EmotionState
    from engines.recordings.emotion_fit import find_mead_clips, neutral_still
    from engines.recordings.preprocess import _frames_at
    from engines.render import texture_warp
    from engines.render.pipeline import FaceAnimator
    from etf_models.emotions import EMOTIONS

    model = (emotion_model.EmotionModel.load(args.emotion_model, sha256=None)
             if args.emotion_model else emotion_model.default_model())
    fm = FaceMesh()
    t0 = time.time()
    check = instrument_check(fm)
    for row in check["rows"]:
        print(f"known rise x{row['stretch']}: read " + "; ".join(
            f"{part} " + ", ".join(f"{k} {v:.2f}" for k, v in row[part].items()
                                   if k != "true_rise") for part in ("lid", "brow")))
    real, ours = {}, {}
    for spk, clips in sorted(find_mead_clips(DATA).items()):
        r = {}
        for emo in EMOTIONS:
            frames = _frames_at(str(clips[emo]), 25.0)
            n = len(frames)
            r[emo] = clip_measures(frames[n // 4 : 3 * n // 4], fm)
        still = neutral_still(clips["neutral"])
        still = cv2.resize(still, None, fx=2, fy=2, interpolation=cv2.INTER_LANCZOS4)
        ident = enroll_image(still, source=spk, options=EnrollOptions(log_warnings=False))
        warp = texture_warp.prepare(ident, expression=True, emotion_model=model)
        o = {}
        for emo in EMOTIONS:
            anim = FaceAnimator(ident, emotion=EmotionState(emo, 1.0), warp=warp,
                                emotion_model=model)
            frames = [f.image for f in anim.render_all(np.zeros(32000, np.float32))][10:50:4]
            o[emo] = clip_measures(frames, fm)
        real[spk] = {e: (r[e] - r["neutral"]).tolist() for e in EMOTIONS[1:]}
        ours[spk] = {e: (o[e] - o["neutral"]).tolist() for e in EMOTIONS[1:]}
        real[spk]["neutral_absolute"] = r["neutral"].tolist()
        ours[spk]["neutral_absolute"] = o["neutral"].tolist()
        print(f"{spk}: neutral eye opening real {r['neutral'][0]:.3f}, ours {o['neutral'][0]:.3f}",
              flush=True)
    table = {}
    print(f"{'':24s}" + "".join(f"{e:>15s}" for e in EMOTIONS[1:]))
    print(f"{'(real / ours)':24s}")
    for k, name in enumerate(COLUMNS):
        row = {}
        for e in EMOTIONS[1:]:
            rv = float(np.mean([real[s][e][k] for s in real]))
            ov = float(np.mean([ours[s][e][k] for s in ours]))
            row[e] = {"real": round(rv, 4), "ours": round(ov, 4)}
        table[name] = row
        print(f"{name:24s}" + "".join(f"{row[e]['real']:+7.3f}/{row[e]['ours']:+.3f}"
                                      for e in EMOTIONS[1:]))
    result = {
        "benchmark": "emotion geometry, real MEAD vs our renders of the same speakers, read by "
                     "the face mesh and the iris model's lid margins",
        "units": "outer eye-corner distances; each emotion minus the same face's neutral",
        "note": "the fit's own speakers (not held out); MEAD talks, the renders are silent",
        "emotion_model_sha256": model.sha256,
        "instrument_check": check,
        "mean_over_speakers": table,
        "per_speaker": {"real": real, "ours": ours},
        "seconds": round(time.time() - t0, 1),
        "machine": machine_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
