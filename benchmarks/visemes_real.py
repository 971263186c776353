"""The default engine's visemes fitted to real talking mouths, scored leave one person out.

The viseme table (``engines/render/visemes.py``) was drawn by hand. Here every clip of
``../shared/data/talking`` (dlib's 68 points per frame from ``etf preprocess --kind
talking``, as ``benchmarks/lipsync_talking.py`` reads them) is heard by the engine's own
phone recogniser; each frame gets the phone the engine shows at that moment, and per phone
we compare the real mouth (inner-lip gap / eye-corner distance, mouth width over the rest
face's) with ours. Two numbers per phone are fitted: ``k`` scales its opening targets
(jaw_open, lips_part), ``j`` its shape targets (lip_stretch, lip_round), each from a
per-phone linear model of our gap and width (three replays of the engine: the table as is,
openings halved, shapes halved), clipped to 0.2..1.5 (``j`` to 0.5..1.5: the recogniser's
mistakes flatten every phone's real shape toward the mean, and width is not what lip sync
scores, so rounding and spreading stay visible); then one opening gain brings the median
person's median opening to the real one.

Scored leave one person out: for each person, the fit (``k``, ``j``, gain) uses only the
others, and that person's correlation with their real mouth (best lag within +-3 frames)
and amplitude (median and 90th percentile ratio) are reported beside today's table. With
``--write`` the fit on everyone is written to ``engines/render/visemes_real.json``, which
the engine loads.

    python benchmarks/visemes_real.py [--write]   # -> benchmarks/results/visemes_real.json
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

FPS = 25.0
K_RANGE, J_RANGE = (0.2, 1.5), (0.5, 1.5)
OUT = ROOT / "benchmarks" / "results" / "visemes_real.json"


def _recognise(clips):
    from engines.render.landmark_default import SpeechLandmarkEngine

    engines = []
    for c in clips:
        eng = SpeechLandmarkEngine(c["neutral"], fps=FPS, idle_amplitude=0.0)
        eng.push_audio(c["audio"])
        eng.flush()
        engines.append(eng)
    return engines


def _replay(clips, engines, table_for, gain_for):
    """Per clip: (phone shown per frame, our opening, our width over the rest width), with
    the viseme table and opening gain each person's fold gives."""
    from etf_models.canonical_face import mouth_opening

    out = []
    for c, eng in zip(clips, engines, strict=True):
        eng.targets = table_for(c["person"])
        eng.opening_gain = gain_for(c["person"])
        eng.rewind()
        lm = np.array([eng.next_frame()[0] for _ in range(c["n"])], np.float32)
        rows = np.round((np.arange(c["n"]) / FPS + eng.anticipation_s) / 0.01).astype(int)
        ph = eng._phones
        label = np.where(rows < len(ph), ph[np.minimum(rows, len(ph) - 1)], -1)
        width = np.linalg.norm(lm[:, 54] - lm[:, 48], axis=1) / _rest_width(c)
        out.append((label, mouth_opening(lm), width))
    return out


def _rest_width(c) -> float:
    return float(np.linalg.norm(c["neutral"][54] - c["neutral"][48]))


def _real(clips):
    got = []
    for c in clips:
        w = np.linalg.norm(c["target"][:, 54] - c["target"][:, 48], axis=1) / _rest_width(c)
        w[~c["ok"]] = np.nan
        got.append((c["real"], w))
    return got


def _per_phone(clips, replay, real, keep, which: int) -> np.ndarray:
    """Per phone, the median over people (of ``keep``) of each person's median: which 0 =
    real opening, 1 = real width, 2 = our opening, 3 = our width."""
    from engines.render.visemes import PHONES

    by: dict[int, dict[str, list[float]]] = {}
    for c, (label, og, ow), (rg, rw) in zip(clips, replay, real, strict=True):
        if c["person"] not in keep:
            continue
        vals = (rg, rw, og, ow)[which]
        good = (label >= 0) & c["ok"] & np.isfinite(vals)
        for lab, v in zip(label[good], vals[good], strict=True):
            by.setdefault(int(lab), {}).setdefault(c["person"], []).append(float(v))
    res = np.full(len(PHONES), np.nan)
    for lab, d in by.items():
        per = [np.median(v) for v in d.values() if len(v) >= 3]
        if len(per) >= 3:
            res[lab] = np.median(per)
    return res


def _solve(real, ours_1, ours_half, lo_hi) -> np.ndarray:
    """The factor x with a + b x = real, from ours at x = 1 and x = 0.5 (per phone)."""
    b = (ours_1 - ours_half) / 0.5
    a = ours_1 - b
    ok = np.isfinite(real) & np.isfinite(b) & (np.abs(b) > 1e-3)
    x = np.ones_like(real)
    x[ok] = (real[ok] - a[ok]) / b[ok]
    return np.clip(x, *lo_hi)


def fit(clips, passes, real, keep):
    """(k, j) per phone from the people in ``keep``."""
    from engines.render.visemes import PHONE_INDEX

    base, half_k, half_j = passes
    k = _solve(_per_phone(clips, base, real, keep, 0), _per_phone(clips, base, real, keep, 2),
               _per_phone(clips, half_k, real, keep, 2), K_RANGE)
    j = _solve(_per_phone(clips, base, real, keep, 1), _per_phone(clips, base, real, keep, 3),
               _per_phone(clips, half_j, real, keep, 3), J_RANGE)
    k[PHONE_INDEX["SIL"]] = j[PHONE_INDEX["SIL"]] = 1.0
    return k, j


def _person_arrays(clips, replay, person):
    idx = [i for i, c in enumerate(clips) if c["person"] == person]
    return (np.concatenate([clips[i]["real"] for i in idx]),
            np.concatenate([replay[i][1] for i in idx]))


def _median_ratio(clips, replay, people) -> float:
    """The median person's median opening, real over ours."""
    r = []
    for p in people:
        real, ours = _person_arrays(clips, replay, p)
        ok = np.isfinite(real) & np.isfinite(ours)
        r.append(np.median(real[ok]) / max(np.median(ours[ok]), 1e-6))
    return float(np.median(r))


def _fit_gain(clips, engines, table, gain, people, rounds: int = 3) -> float:
    """The opening gain at which ``people``'s median person opens as wide as the real one
    (a few rounds: shut lips and the held jaw make the opening not quite proportional)."""
    for _ in range(rounds):
        trial = _replay(clips, engines, lambda _q: table, lambda _q, g=gain: g)
        gain *= _median_ratio(clips, trial, people)
    return gain


def score(clips, replay, people) -> dict:
    from engines.face.face_metrics import best_lag_corr

    res = {}
    for p in people:
        real, ours = _person_arrays(clips, replay, p)
        ok = np.isfinite(real) & np.isfinite(ours)
        res[p] = {"corr": round(best_lag_corr(ours, real, 3)[0], 4),
                  "median_ratio": round(float(np.median(ours[ok]) / np.median(real[ok])), 3),
                  "p90_ratio": round(float(np.percentile(ours[ok], 90)
                                           / np.percentile(real[ok], 90)), 3)}
    return res


def summary(per: dict) -> dict:
    a = np.array([[v["corr"], v["median_ratio"], v["p90_ratio"]] for v in per.values()])
    within = (np.abs(a[:, 1] - 1) <= 0.2) & (np.abs(a[:, 2] - 1) <= 0.2)
    return {"median_corr": round(float(np.median(a[:, 0])), 4),
            "mean_corr": round(float(a[:, 0].mean()), 4),
            "median_ratio_median": round(float(np.median(a[:, 1])), 3),
            "p90_ratio_median": round(float(np.median(a[:, 2])), 3),
            "people_within_20pct": int(within.sum())}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.lipsync_talking import TALKING, ensure_shards, load_clips
    from engines.motion.face_motion import P
    from engines.render import visemes
    from engines.render.landmark_default import SpeechLandmarkEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--talking", default=str(TALKING))
    ap.add_argument("--shards", default=str(Path.home() / ".cache" / "etf" / "talking-shards"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--write", action="store_true",
                    help="write the fit on everyone to engines/render/visemes_real.json")
    args = ap.parse_args(argv)
    talking, shards = Path(args.talking), Path(args.shards)
    if not talking.is_dir():
        print(f"visemes_real: no talking clips in {talking}", file=sys.stderr)
        return 2
    t0 = time.time()
    ensure_shards(talking, shards, 2)
    clips = load_clips(talking, shards, None)
    people = sorted({c["person"] for c in clips})
    engines = _recognise(clips)
    hand = visemes.HAND_TARGETS
    gain0 = SpeechLandmarkEngine.hand_opening_gain
    opening = [P["jaw_open"], P["lips_part"]]
    shape = [P["lip_stretch"], P["lip_round"]]

    def scaled(k, j, base=hand):
        t = base.copy()
        t[:, opening] *= k[:, None]
        t[:, shape] *= j[:, None]
        return t

    ones = np.ones(len(visemes.PHONES))
    passes = [_replay(clips, engines, lambda _p, t=t: t, lambda _p: gain0)
              for t in (hand, scaled(0.5 * ones, ones), scaled(ones, 0.5 * ones))]
    real = _real(clips)
    # each fold: the fit on the others, then one gain so their median person opens as
    # wide as the real median person
    tables, gains = {}, {}
    for p in people:
        keep = [q for q in people if q != p]
        tables[p] = scaled(*fit(clips, passes, real, keep))
        gains[p] = _fit_gain(clips, engines, tables[p], gain0, keep)
    held = _replay(clips, engines, tables.__getitem__, gains.__getitem__)
    k, j = fit(clips, passes, real, people)
    gain = _fit_gain(clips, engines, scaled(k, j), gain0, people)
    before, after = score(clips, passes[0], people), score(clips, held, people)
    result = {
        "benchmark": "default engine's visemes fitted to real talking mouths, leave one "
                     "person out (benchmarks/visemes_real.py)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": platform.machine(), "platform": platform.platform()},
        "people": people, "seconds": round(time.time() - t0, 1),
        "summary": {"hand_table": summary(before), "fitted_held_out": summary(after)},
        "per_person": {p: {"hand_table": before[p], "fitted_held_out": after[p],
                           "fold_opening_gain": round(gains[p], 4)} for p in people},
        "fit_all": {"opening_gain": round(gain, 4),
                    "k": {ph: round(float(x), 3) for ph, x in zip(visemes.PHONES, k,
                                                                 strict=True)},
                    "j": {ph: round(float(x), 3) for ph, x in zip(visemes.PHONES, j,
                                                                 strict=True)}},
        "sources": "../shared/data/talking (styletalk, EDTalk, LatentSync, GRID CC BY 4.0, "
                   "Real3DPortrait, MEAD examples; research use): per-phone numbers only",
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.write:
        visemes.FIT_PATH.write_text(json.dumps(
            {"about": "per-phone opening (k) and shape (j) factors on the hand table and the "
                      "opening gain, fitted on real talking mouths by "
                      "benchmarks/visemes_real.py --write", **result["fit_all"]},
            indent=1) + "\n")
    for name, s in result["summary"].items():
        print(f"{name:16s} {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
