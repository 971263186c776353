"""The lips' shape at a given opening and width, learned from real mouths, scored leave one
person out.

Every clip of ``../shared/data/talking`` (dlib's 68 points per frame, eye-aligned, as
``benchmarks/lipsync_talking.py`` reads them; the head's nod and turn taken out against
the clip's rest face with :func:`engines.recordings.emotion_fit.pose_free`): each lip
point's displacement from the rest face, measured from the nose's base, in inter-ocular
distances, is regressed on the frame's opening change and width change above and below
rest (:mod:`engines.render.lip_shapes` applies it).

Scored leave one person out, on the frames where the mouth moves (opening or width 0.03
or more from rest): the lips' mean point error (IOD) of
  * ``rest``: the rest face's lips (no shape at all);
  * ``learned_at_real``: the learned shape for the real frame's own opening and width
    (how much of the lips' shape those two numbers and the fit explain);
  * ``engine_today`` / ``engine_learned``: the default engine heard on the clip's audio,
    its lips as the hand-made fields shape them, and reshaped by the fit on the other
    people (the engine's opening and width are its own in both: their errors weigh the
    same on both sides; the difference is the shape).
And the engine's opening and width correlations with the real ones, with and without the
reshaping (they should not move). ``--write`` writes the fit on everyone to
``engines/render/lip_shapes.json`` and prints its SHA-256 (pinned in
:mod:`engines.render.lip_shapes`).

    python benchmarks/lip_shapes.py [--write]   # -> benchmarks/results/lip_shapes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402

FPS = 25.0
OUT = ROOT / "benchmarks" / "results" / "lip_shapes.json"
TALKING = ROOT.parent / "shared" / "data" / "talking"
SHARDS = Path.home() / ".cache" / "etf" / "talking-shards"
#: a frame counts as moving when its opening or width is this far from rest
MOVING = 0.03


def regressors(d_open: np.ndarray, d_width: np.ndarray) -> np.ndarray:
    return np.stack([d_open, np.maximum(d_width, 0.0), np.minimum(d_width, 0.0)], axis=1)


def measures(lm: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Opening and width changes from rest, per frame of ``lm`` [N,68,2]."""
    from engines.render.mouth_ridge import mouth_width
    from etf_models.canonical_face import mouth_opening

    return (mouth_opening(lm) - mouth_opening(rest), mouth_width(lm) - mouth_width(rest))


def lips_from_rest(lm: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The lips' displacement from rest [N,20,2], from the anchor, in IOD."""
    from engines.render.lip_shapes import ANCHOR, POINTS
    from etf_models.canonical_face import IOD

    return ((lm[:, POINTS] - lm[:, ANCHOR, None]) - (rest[POINTS] - rest[ANCHOR])) / IOD


def real_frames(c: dict) -> dict:
    """The clip's tracked frames: lips from rest, opening and width changes."""
    from engines.recordings.emotion_fit import pose_free

    rest = c["neutral"].astype(np.float64)
    lm = pose_free(c["target"][c["ok"]], c["neutral"]).astype(np.float64)
    d_open, d_width = measures(lm, rest)
    return {"lips": lips_from_rest(lm, rest), "open": d_open, "width": d_width}


def fit(frames: list[dict]):
    """The shape basis [3,20,2] from these clips' frames (least squares, no intercept),
    made left-right symmetric: each point moves as the mean of itself and its mirrored
    partner (x negated). Left and right lips move alike on average; what is left of the
    speakers' head turns and dlib's own lean does not belong to the shape (the raw fit
    moved both corners 0.05-0.07 IOD the same way per unit of opening)."""
    from engines.render.lip_shapes import POINTS, LipShapes
    from etf_models.canonical_face import MIRROR_68

    x = np.vstack([regressors(f["open"], f["width"]) for f in frames])
    y = np.vstack([f["lips"].reshape(len(f["lips"]), -1) for f in frames])
    basis, *_ = np.linalg.lstsq(x, y, rcond=None)
    basis = basis.reshape(3, len(POINTS), 2)
    mirrored = basis[:, MIRROR_68[POINTS] - POINTS[0]] * np.array([-1.0, 1.0])
    return LipShapes(0.5 * (basis + mirrored))


def point_error(pred: np.ndarray, real: np.ndarray) -> np.ndarray:
    return np.linalg.norm(pred - real, axis=-1).mean(axis=-1)


def engine_lips(c: dict, model) -> np.ndarray:
    """The default engine's landmarks [n,68,2] on the clip's audio (no idle motion), with
    the lip shapes ``model`` (None: the fields' own)."""
    from engines.render.landmark_default import SpeechLandmarkEngine

    eng = SpeechLandmarkEngine(c["neutral"], fps=FPS, idle_amplitude=0.0, learned_lips=False)
    eng.lip_model = model
    eng.push_audio(c["audio"])
    eng.flush()
    return np.array([eng.next_frame()[0] for _ in range(c["n"])], np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true",
                    help="write the fit on everyone to engines/render/lip_shapes.json")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from benchmarks.lipsync_talking import ensure_shards, load_clips, score
    from engines.recordings.emotion_fit import pose_free
    from engines.render import lip_shapes
    from engines.render.pinned import write_pinned_json

    t0 = time.time()
    ensure_shards(TALKING, SHARDS, 2)
    clips = load_clips(TALKING, SHARDS, None)
    reals = [real_frames(c) for c in clips]
    people = sorted({c["person"] for c in clips})
    rows = []
    for person in people:
        te = [i for i, c in enumerate(clips) if c["person"] == person]
        model = fit([reals[i] for i, c in enumerate(clips) if c["person"] != person])
        err: dict[str, list] = {k: [] for k in ("rest", "learned_at_real", "engine_today",
                                                "engine_learned")}
        corr: dict[str, list] = {k: [] for k in ("open_today", "open_learned", "width_today",
                                                 "width_learned", "real_open", "real_width")}
        gap = np.full(8, np.nan)
        for i in te:
            c, r = clips[i], reals[i]
            rest = c["neutral"].astype(np.float64)
            moving = (np.abs(r["open"]) >= MOVING) | (np.abs(r["width"]) >= MOVING)
            real = r["lips"][moving]
            err["rest"].append(point_error(np.zeros_like(real), real))
            shaped = np.tensordot(regressors(r["open"][moving], r["width"][moving]),
                                  model.basis, 1)
            err["learned_at_real"].append(point_error(shaped, real))
            for name, m in (("today", None), ("learned", model)):
                lm = engine_lips(c, m)
                ours = lips_from_rest(pose_free(lm[c["ok"]].astype(np.float32),
                                                c["neutral"]).astype(np.float64), rest)
                err[f"engine_{name}"].append(point_error(ours[moving], real))
                o, w = measures(lm, rest)
                corr[f"open_{name}"] += [o, gap]
                corr[f"width_{name}"] += [w, gap]
            ro, rw = np.full(c["n"], np.nan), np.full(c["n"], np.nan)
            ro[c["ok"]], rw[c["ok"]] = r["open"], r["width"]
            corr["real_open"] += [ro, gap]
            corr["real_width"] += [rw, gap]
        e = {k: float(np.median(np.concatenate(v))) for k, v in err.items()}
        j = {k: np.concatenate(v) for k, v in corr.items()}
        row = {"person": person, "moving_frames": int(sum(len(v) for v in err["rest"])),
               "lip_error_iod": {k: round(v, 4) for k, v in e.items()},
               "opening_corr": {k: score(j[f"open_{k}"], j["real_open"])["corr"]
                                for k in ("today", "learned")},
               "width_corr": {k: score(j[f"width_{k}"], j["real_width"])["corr"]
                              for k in ("today", "learned")}}
        rows.append(row)
        print(f"{person:24s} lips (IOD): rest {e['rest']:.4f} learned at real "
              f"{e['learned_at_real']:.4f} engine today {e['engine_today']:.4f} learned "
              f"{e['engine_learned']:.4f}  opening corr {row['opening_corr']}  width corr "
              f"{row['width_corr']}", flush=True)

    def med(get):
        return round(float(np.median([get(r) for r in rows])), 4)

    summary = {
        "lip_error_iod_median_person": {k: med(lambda r, k=k: r["lip_error_iod"][k])
                                        for k in rows[0]["lip_error_iod"]},
        "engine_learned_better_for": sum(r["lip_error_iod"]["engine_learned"]
                                         < r["lip_error_iod"]["engine_today"] for r in rows),
        "opening_corr_median_person": {k: med(lambda r, k=k: r["opening_corr"][k])
                                       for k in ("today", "learned")},
        "width_corr_median_person": {k: med(lambda r, k=k: r["width_corr"][k])
                                     for k in ("today", "learned")},
        "people": len(rows)}
    full = fit(reals)
    report = {"benchmark": "lip_shapes", "about": __doc__.split("\n\n")[0].replace("\n", " "),
              "moving_threshold": MOVING, "leave_one_person_out": summary, "per_person": rows,
              "fit_on_everyone": full.to_dict(), "seconds": round(time.time() - t0, 1),
              "machine": machine_info()}
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print("leave one person out:", json.dumps(summary))
    if args.write:
        sha = write_pinned_json(lip_shapes.FIT_PATH, full.to_dict())
        print(f"wrote {lip_shapes.FIT_PATH} sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
