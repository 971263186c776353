"""The mouth's opening learned around the phones, scored leave one person out.

Every clip of ``../shared/data/talking`` (dlib's 68 points per frame, as
``benchmarks/lipsync_talking.py`` reads them) is heard by the default engine's own phone
recogniser. Per frame, the features are the phone (one-hot) and loudness of every second
10 ms row from 200 ms before the frame's anticipated row to 40 ms after it; the target is
the real opening (inner-lip gap / eye-corner distance) against its clip's median. A ridge
regression maps one to the other (:mod:`engines.render.opening_ridge` runs it), and its
opening is blended half and half with the visemes' own (the regression's scaled to the
visemes' spread, the mix spread back to the visemes' amplitude).

Scored leave one person out: for each person the regression and the blend's constants
come from the others only; reported per person, the correlation with the real mouth (best
lag within +-3 frames) of the visemes alone, the regression alone and the blend, and the
blend's amplitude against the visemes'. Also the two devset clips (never fitted on), with
the fit on everyone. ``--write`` writes that fit to ``engines/render/opening_ridge.json``
(and prints its SHA-256, pinned in :mod:`engines.render.opening_ridge`).

    python benchmarks/opening_ridge.py [--write]   # -> benchmarks/results/opening_ridge.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402

FPS = 25.0
#: 10 ms rows around the frame's anticipated row: -200 ms .. +40 ms, every 20 ms
OFFSETS = np.arange(-20, 5, 2)
LAMBDA = 300.0
#: the regression's share of the blend
SHARE = 0.5
OUT = ROOT / "benchmarks" / "results" / "opening_ridge.json"
TALKING = ROOT.parent / "shared" / "data" / "talking"
SHARDS = Path.home() / ".cache" / "etf" / "talking-shards"


def heard(neutral: np.ndarray, audio: np.ndarray, n: int) -> dict:
    """The default engine (visemes only) on ``audio``: phones and loudness per 10 ms row,
    its anticipation, and its mouth opening per frame [n]."""
    from engines.render.landmark_default import SpeechLandmarkEngine
    from etf_models.canonical_face import mouth_opening

    eng = SpeechLandmarkEngine(neutral, fps=FPS, idle_amplitude=0.0, learned_opening=False)
    eng.push_audio(audio)
    eng.flush()
    lm = np.array([eng.next_frame()[0] for _ in range(n)], np.float32)
    return {"phones": np.asarray(eng._phones, np.int64), "levels": np.asarray(eng._levels),
            "ant": eng.anticipation_s, "reach": eng.coart_future, "ours": mouth_opening(lm),
            "engine": eng}


def _rows(d: dict, n: int) -> np.ndarray:
    """Each frame's anticipated 10 ms row, as the engine's ``next_frame`` takes it."""
    from engines.render.visemes import ROW_S

    return np.round((np.arange(n) / FPS + d["ant"]) / ROW_S).astype(int)


def features(d: dict, n: int) -> np.ndarray:
    """[n, K * (n_phones + 1)]: per offset the phone one-hot and the loudness (the layout
    :class:`engines.render.opening_ridge.OpeningRidge` reads its weights in)."""
    from engines.render.opening_ridge import window
    from engines.render.visemes import PHONES

    ph, lv = window(d["phones"], d["levels"], _rows(d, n), OFFSETS, d["reach"])
    out = np.zeros((n, len(OFFSETS), len(PHONES) + 1), np.float32)
    out[np.arange(n)[:, None], np.arange(len(OFFSETS))[None, :], ph] = 1.0
    out[:, :, -1] = lv
    return out.reshape(n, -1)


def fit(xs: list[np.ndarray], ys: list[np.ndarray], ours: list[np.ndarray]) -> dict:
    """The ridge and the blend's constants from these clips."""
    from engines.render.visemes import PHONES

    x = np.vstack(xs)
    y = np.concatenate(ys)
    ok = np.isfinite(y)
    x, y = x[ok].astype(np.float64), y[ok]
    mu = x.mean(0)
    xc = x - mu
    w = np.linalg.solve(xc.T @ xc + LAMBDA * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
    bias = float(y.mean() - mu @ w)
    pred = np.concatenate([xi @ w + bias for xi in xs])
    o = np.concatenate(ours)
    good = np.isfinite(o)
    mean, sd_o = float(o[good].mean()), float(o[good].std())
    gain = sd_o / max(float(pred[good].std()), 1e-9)
    mixed = (1 - SHARE) * o[good] + SHARE * (mean + gain * pred[good])
    spread = sd_o / max(float(mixed.std()), 1e-9)
    wk = w.reshape(len(OFFSETS), len(PHONES) + 1)
    return {"phones": list(PHONES), "offsets": OFFSETS.tolist(),
            "w_phone": np.round(wk[:, :-1], 6).tolist(), "w_level": np.round(wk[:, -1], 6).tolist(),
            "bias": round(bias, 6), "mean_opening": round(mean, 6), "gain": round(gain, 6),
            "share": SHARE, "spread": round(spread, 6), "lambda": LAMBDA}


def blended(model, d: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(regression alone, the engine's opening with ``model``) per frame."""
    from etf_models.canonical_face import mouth_opening

    r = np.array([model.predict(d["phones"], d["levels"], int(c), d["reach"])
                  for c in _rows(d, n)])
    eng = d["engine"]
    eng.opening_model = model
    eng.rewind()
    lm = np.array([eng.next_frame()[0] for _ in range(n)], np.float32)
    eng.opening_model = None
    return r, mouth_opening(lm)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true",
                    help="write the fit on everyone to engines/render/opening_ridge.json")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from benchmarks.lipsync_talking import ensure_shards, load_clips, score
    from engines.render import opening_ridge

    t0 = time.time()
    ensure_shards(TALKING, SHARDS, 2)
    clips = load_clips(TALKING, SHARDS, None)
    data = [heard(c["neutral"], c["audio"], c["n"]) for c in clips]
    xs = [features(d, c["n"]) for d, c in zip(data, clips, strict=True)]
    ys = [c["real"] - np.nanmedian(c["real"]) for c in clips]
    people = sorted({c["person"] for c in clips})
    rows = []
    for person in people:
        tr = [i for i, c in enumerate(clips) if c["person"] != person]
        te = [i for i, c in enumerate(clips) if c["person"] == person]
        model = opening_ridge.OpeningRidge.from_dict(
            fit([xs[i] for i in tr], [ys[i] for i in tr], [data[i]["ours"] for i in tr]))
        real = np.concatenate([clips[i]["real"] for i in te])
        ours = np.concatenate([data[i]["ours"] for i in te])
        got = [blended(model, data[i], clips[i]["n"]) for i in te]
        ridge = np.concatenate([g[0] for g in got])
        blend = np.concatenate([g[1] for g in got])
        s_ours, s_blend = score(ours, real), score(blend, real)
        rows.append({"person": person, "frames": int(len(real)), "visemes": s_ours["corr"],
                     "regression": score(ridge, real)["corr"], "blend": s_blend["corr"],
                     "median_ratio_visemes": s_ours["median_ratio"],
                     "median_ratio_blend": s_blend["median_ratio"],
                     "p90_ratio_visemes": s_ours["p90_ratio"],
                     "p90_ratio_blend": s_blend["p90_ratio"]})
        print(f"{person:24s} visemes {rows[-1]['visemes']:.3f}  regression "
              f"{rows[-1]['regression']:.3f}  blend {rows[-1]['blend']:.3f}", flush=True)
    full = fit(xs, ys, [d["ours"] for d in data])
    devset = devset_clips(opening_ridge.OpeningRidge.from_dict(full))
    summary = {k: {"median": round(float(np.median([r[k] for r in rows])), 4),
                   "mean": round(float(np.mean([r[k] for r in rows])), 4)}
               for k in ("visemes", "regression", "blend")}
    report = {"benchmark": "opening_ridge", "about": __doc__.split("\n\n")[0].replace("\n", " "),
              "offsets_rows": OFFSETS.tolist(), "lambda": LAMBDA, "share": SHARE,
              "people": len(people), "leave_one_person_out": summary, "per_person": rows,
              "devset_fit_on_everyone": devset, "seconds": round(time.time() - t0, 1),
              "machine": machine_info()}
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print("leave one person out:", summary)
    print("devset:", devset)
    if args.write:
        text = json.dumps(full, separators=(",", ":")) + "\n"
        opening_ridge.FIT_PATH.write_text(text)
        print(f"wrote {opening_ridge.FIT_PATH} sha256 "
              f"{hashlib.sha256(text.encode()).hexdigest()}")
    return 0


def devset_clips(model) -> list[dict]:
    """The fit on everyone, on the devset's paired clips (engine landmarks, not rendered)."""
    from benchmarks.lipsync_devset import CLIPS, DEVSET, closed_mouth_frame, frames_of
    from engines.face.enrollment import neutralise
    from engines.face.face_metrics import best_lag_corr, frame_landmarks, mouth_openings
    from engines.media.audio_io import load_audio
    from etf_models.canonical_face import apply_affine, similarity_to_canonical

    out = []
    for clip in CLIPS:
        if not (DEVSET / clip).is_file():
            continue
        frames = frames_of(DEVSET / clip)
        real = mouth_openings(frames)
        lm = frame_landmarks([frames[closed_mouth_frame(real)]])[0]
        neutral = neutralise(apply_affine(similarity_to_canonical(lm), lm).astype(np.float32))[0]
        d = heard(neutral, load_audio(DEVSET / clip, 16000), len(real))
        _, blend = blended(model, d, len(real))
        out.append({"clip": clip, "visemes": round(best_lag_corr(d["ours"], real)[0], 4),
                    "blend": round(best_lag_corr(blend, real)[0], 4)})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
