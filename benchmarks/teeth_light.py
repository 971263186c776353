"""What colour are a person's teeth? Predicted from their lips or from the whites of their eyes.

The painted mouth needs the teeth's colour in the photo's light before it has ever seen
them. Taking it from the lips (their colour times the real teeth-over-lips ratio) works
for bare lips, but lips vary in colour from person to person, and lipstick leaves nothing
of the light in them: a red-lipped photo got pink teeth. The whites of the eyes are a near
white surface in the same light, whatever the person's skin or make-up.

On the real talking clips of ``../shared/data/talking`` (the preprocessed canonical frames
of ``benchmarks/lipsync_talking.py``'s cache), per clip:

* the teeth: the mean colour of the brightest 8% of the interior's pixels in frames whose
  lips part at least 0.08 inter-ocular distances (the renderer's ``interior_colours``
  measure), the clip's median;
* the lips: the median colour between the outer and inner lips over the clip's least-open
  quarter of frames (as ``etf fit-mouth`` takes it);
* the whites of the eyes: what the renderer's own eyeball code
  (:func:`engines.render.eyeball.prepare_eyes`) measures on each frame as the light on the
  eye (the brightest tenth of the white, ``white_top``: the typical white, ``sclera``,
  carries the lashes' shadow, and predicted the teeth's brightness with a median error of
  0.171 instead of 0.097), both eyes' median, the clip's median.

Each person's values are the median of their clips'. The teeth are then predicted for each
person from their lips, from their eyes' whites, and from the brighter of the two (each
source fails dark: lipstick, shadowed or lash-hidden whites), each with the ratio of the
others (leave one person out), and the error reported: luminance (|log| of predicted over
real) and colour (the distance between the two chromaticities, r and g of r+g+b). Also the
renderer's own ``teeth_in_light`` and ``teeth_from_lips`` (their ratios fitted on these
people, so not held out), and both on the two devset clips (never fitted on; red lips).

    python benchmarks/teeth_light.py [--write]   # -> benchmarks/results/teeth_light.json

``--write`` prints the ratio over everyone (``TEETH_OVER_SCLERA`` in
``engines/render/texture_warp.py``). Machine-independent (no timing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARDS = Path.home() / ".cache" / "etf" / "talking-shards"
TALKING = ROOT.parent / "shared" / "data" / "talking"
OUT = ROOT / "benchmarks" / "results" / "teeth_light.json"
#: lips parted at least this far (inter-ocular distances) show their teeth well enough
OPEN_GAP = 0.08
#: frames of a clip looked at
EVERY = 2


def shard_frames(path: Path):
    """(canonical RGB frame, its 68 landmarks) for every EVERY-th frame of a preprocessed
    clip (landmarks NaN where untracked)."""
    with np.load(path) as z:
        lms = z["landmarks"].astype(np.float64)
        jpeg, offsets = z["jpeg"], z["jpeg_offsets"]
    for i in range(0, len(lms), EVERY):
        img = cv2.cvtColor(cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        yield img, lms[i]


def video_frames(path: Path):
    """The same for a video (dlib's 68 points, each frame brought to the canonical frame as
    the preprocessed clips are)."""
    from benchmarks.lipsync_devset import frames_of
    from engines.face.face_metrics import frame_landmarks
    from etf_models.canonical_face import CANON_SIZE, apply_affine, similarity_to_canonical

    frames = frames_of(path)[::EVERY]
    for img, lm in zip(frames, frame_landmarks(frames), strict=True):
        if not np.isfinite(lm).all():
            yield img, lm
            continue
        m = similarity_to_canonical(lm)
        yield (cv2.warpAffine(img, m, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_AREA),
               apply_affine(m, lm))


def clip_colours(frames) -> dict | None:
    """The clip's teeth, lips and eye-white colours (RGB) from its (canonical frame,
    landmarks) pairs, or None if it shows too few."""
    from engines.render.eyeball import prepare_eyes
    from etf_models import mouth_patch as mp
    from etf_models.canonical_face import IOD

    teeth, scleras, shut = [], [], []
    for img, lm in frames:
        if not np.isfinite(lm).all():
            continue
        gap = mp.inner_gap(lm) / IOD
        eyes = [e for e in prepare_eyes(img, lm) if e.sclera_measured]
        if len(eyes) == 2:
            scleras.append(np.median([e.white_top for e in eyes], axis=0))
        col = mp.lip_colour(img, lm)
        if col is not None:
            shut.append((gap, col))
        if gap >= OPEN_GAP:
            inside = mp.coverage(img.shape[:2], mp.smooth_ring(lm[mp.INNER_RING])) > 0.95
            if inside.sum() >= 20:
                px = img[inside].astype(np.float64)
                y = px.mean(1)
                teeth.append(px[y >= np.percentile(y, 92)].mean(0))
    if len(teeth) < 5 or len(scleras) < 5 or not shut:
        return None
    shut.sort(key=lambda g: g[0])  # the lips: their least-open quarter
    lips = np.median([c for _, c in shut[:max(3, len(shut) // 4)]], 0)
    return {"teeth": np.median(teeth, 0), "sclera": np.median(scleras, 0),
            "lips": lips, "open_frames": len(teeth)}


def chroma(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return c[..., :2] / np.maximum(c.sum(-1, keepdims=True), 1e-6)


def errors(pred: np.ndarray, real: np.ndarray) -> dict:
    """Luminance |log| error and chromaticity distance, per person [n] -> medians."""
    lum = np.abs(np.log(pred.mean(-1) / real.mean(-1)))
    col = np.linalg.norm(chroma(pred) - chroma(real), axis=-1)
    return {"luminance_abs_log_median": round(float(np.median(lum)), 4),
            "luminance_abs_log_mean": round(float(np.mean(lum)), 4),
            "chromaticity_distance_median": round(float(np.median(col)), 4),
            "chromaticity_distance_mean": round(float(np.mean(col)), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true",
                    help="print the teeth-over-sclera ratio over everyone")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from benchmarks.lipsync_talking import ensure_shards
    from engines.render.texture_warp import TEETH_LEVEL, teeth_from_lips, teeth_in_light
    from etf_models.datasets import person_of, scan

    t0 = time.time()
    ensure_shards(TALKING, SHARDS, 2)
    per_person: dict[str, list[dict]] = {}
    for rec in scan(TALKING, "talking").clips:
        path = SHARDS / "shards" / f"{rec.clip_id}.npz"
        if not path.exists():
            continue
        got = clip_colours(shard_frames(path))
        if got is not None:
            per_person.setdefault(person_of(rec.speaker), []).append(got)
    people = sorted(per_person)
    teeth = np.array([np.median([c["teeth"] for c in per_person[p]], 0) for p in people])
    sclera = np.array([np.median([c["sclera"] for c in per_person[p]], 0) for p in people])
    lips = np.array([np.median([c["lips"] for c in per_person[p]], 0) for p in people])
    over_sclera, over_lips = teeth / sclera, teeth / lips
    held = {"sclera": [], "lips": [], "brighter": []}
    for i in range(len(people)):
        rest = np.arange(len(people)) != i
        by_sclera = sclera[i] * np.median(over_sclera[rest], 0)
        by_lips = lips[i] * np.median(over_lips[rest], 0)
        held["sclera"].append(by_sclera)
        held["lips"].append(by_lips)
        held["brighter"].append(by_sclera if by_sclera.mean() > by_lips.mean() else by_lips)
    ratio = np.median(over_sclera, 0)
    # the renderer's own (its ratios fitted on everyone, so not held out); the per-person
    # whites are both eyes' median, given as two alike eyes; it shows the teeth at
    # TEETH_LEVEL of their highlight, which is what is measured here: compared as highlights
    shipped = np.array([teeth_in_light(lp, [s, s]) for lp, s in zip(lips, sclera, strict=True)]
                       ) / TEETH_LEVEL
    shipped_lips = np.array([teeth_from_lips(lp) for lp in lips]) / TEETH_LEVEL
    report = {
        "benchmark": "teeth_light", "about": __doc__.split("\n\n")[0].replace("\n", " "),
        "people": people, "open_gap_iod": OPEN_GAP,
        "teeth_over_sclera_rgb_everyone": np.round(ratio, 3).tolist(),
        "spread_over_people": {
            "teeth_over_sclera_luminance_sd_log": round(float(np.log(
                over_sclera.mean(1)).std()), 4),
            "teeth_over_lips_luminance_sd_log": round(float(np.log(
                teeth.mean(1) / lips.mean(1)).std()), 4)},
        "leave_one_person_out": {k: errors(np.array(v), teeth) for k, v in held.items()},
        "renderer_not_held_out": {"teeth_in_light": errors(shipped, teeth),
                                  "teeth_from_lips": errors(shipped_lips, teeth)},
        "per_person": [{"person": p, "teeth": np.round(teeth[i], 1).tolist(),
                        "sclera": np.round(sclera[i], 1).tolist(),
                        "lips": np.round(lips[i], 1).tolist(),
                        "clips": len(per_person[p]),
                        "open_frames": int(sum(c["open_frames"] for c in per_person[p]))}
                       for i, p in enumerate(people)],
    }
    devset = []
    from benchmarks.lipsync_devset import CLIPS, DEVSET

    for clip in CLIPS:  # never fitted on: their people are not among the 13
        if not (DEVSET / clip).is_file():
            continue
        got = clip_colours(video_frames(DEVSET / clip))
        if got is None:
            continue
        whites = [got["sclera"]] * 2
        row = {"clip": clip, "teeth": np.round(got["teeth"], 1).tolist(),
               "sclera": np.round(got["sclera"], 1).tolist(),
               "lips": np.round(got["lips"], 1).tolist()}
        for name, pred in (("teeth_in_light", teeth_in_light(got["lips"], whites) / TEETH_LEVEL),
                           ("from_lips", teeth_from_lips(got["lips"]) / TEETH_LEVEL)):
            e = errors(pred[None], got["teeth"][None])
            row[name] = {"predicted": np.round(pred, 1).tolist(),
                         "luminance_abs_log": e["luminance_abs_log_median"],
                         "chromaticity_distance": e["chromaticity_distance_median"]}
        devset.append(row)
    report["devset"] = devset
    report["seconds"] = round(time.time() - t0, 1)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    for row in devset:
        print(row)
    print(json.dumps({k: report[k] for k in ("teeth_over_sclera_rgb_everyone",
                                             "spread_over_people", "leave_one_person_out",
                                             "renderer_not_held_out")}, indent=1))
    if args.write:
        print("TEETH_OVER_SCLERA =", np.round(ratio, 3).tolist())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
