"""The mouth's opening and width learned around the phones, scored leave one person out.

Every clip of ``../shared/data/talking`` (dlib's 68 points per frame, as
``benchmarks/lipsync_talking.py`` reads them) is heard by the default engine's own phone
recogniser. Per frame, the features are the phone (one-hot) and loudness of every second
10 ms row from 200 ms before the frame's anticipated row to 40 ms after it (the
loudness to 60 ms after it: live, it is known that far ahead of the phones), and the
spectral envelope (:mod:`engines.audio.spectral_envelope`, 8 cepstra) on the loudness's
rows, standardised and penalised apart (CEP_LAMBDA; its running mean starts from the
fitted people's mean, each fold's from its own people); the targets
are the real opening (inner-lip gap / eye-corner distance) and width (mouth-corner
distance / eye-corner distance), each against its clip's median. A ridge regression per
target maps one to the other (:mod:`engines.render.mouth_ridge` runs them), and each is
blended half and half with the visemes' own (the regression's scaled to the visemes'
spread, the mix spread back to the visemes' amplitude). The opening regression is fitted
on the visemes alone; the width's on the engine with the learned opening, which it
follows in the engine. Real mouths widen further than the visemes (the 90th percentile
of the width against its clip's median, per person), so the width blend spreads further
above its mean: k times, k from WIDEN_GRID such that the median person's widening is the
real one's (fitted on everyone, like the opening's gain; the choice leaving each person
out is reported too).

Scored leave one person out: for each person the regressions and the blends' constants
come from the others only; reported per person, the correlation with the real mouth (best
lag within +-3 frames) of the visemes alone, the regression alone and the blend, and the
blend's amplitude against the visemes'. Also the two devset clips (never fitted on), with
the fit on everyone. ``--write`` writes that fit to ``engines/render/mouth_ridge.json``
(and prints its SHA-256, pinned in :mod:`engines.render.mouth_ridge`).

    python benchmarks/mouth_ridge.py [--write] [--no-envelope] [--share 0.5]
                                                  # -> benchmarks/results/mouth_ridge.json
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
#: 10 ms rows around the frame's anticipated row: -200 ms .. +40 ms, every 20 ms
OFFSETS = np.arange(-20, 5, 2)
#: the loudness's rows: to +60 ms, the live recogniser's commit delay (the engine's
#: LEVEL_LEAD_ROWS), which the loudness is known ahead of the phones
LEVEL_OFFSETS = np.arange(-20, 7, 2)
LAMBDA = 300.0
#: the spectral envelope (engines.audio.spectral_envelope): cepstra per row, the rows read
#: (the loudness's), the ridge penalty on their standardised values, the running mean's
#: time constant (loud rows) and the loudness from which a row counts as heard
N_CEP = 8
CEP_OFFSETS = LEVEL_OFFSETS
CEP_LAMBDA = 10000.0
TAU_ROWS = 300.0
CEP_GATE = 0.1
#: the regression's share of the blend
SHARE = 0.5
#: how much wider than the visemes' the width blend may spread above its mean (real
#: mouths widen further than the visemes do, and narrow about as far): the k whose
#: widening matches the real people's is chosen
WIDEN_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
OUT = ROOT / "benchmarks" / "results" / "mouth_ridge.json"
TALKING = ROOT.parent / "shared" / "data" / "talking"
SHARDS = Path.home() / ".cache" / "etf" / "talking-shards"


def heard(neutral: np.ndarray, audio: np.ndarray, n: int) -> dict:
    """The default engine (visemes only, the lips as the fields shape them: the learned lip
    shape comes after the opening and width and keeps them) on ``audio``: phones and
    loudness per 10 ms row, its anticipation, its landmarks per frame [n,68,2] and the
    face's rest width."""
    from engines.audio.spectral_envelope import SpectralEnvelope
    from engines.render.landmark_default import SpeechLandmarkEngine
    from engines.render.mouth_ridge import mouth_width

    eng = SpeechLandmarkEngine(neutral, fps=FPS, idle_amplitude=0.0, learned_mouth=False,
                               learned_lips=False)
    eng.push_audio(audio)
    eng.flush()
    lm = np.array([eng.next_frame()[0] for _ in range(n)], np.float32)
    levels = np.asarray(eng._levels)
    return {"phones": np.asarray(eng._phones, np.int64), "levels": levels,
            "cep_raw": SpectralEnvelope(np.zeros(N_CEP)).raw(audio)[: len(levels)],
            "ant": eng.anticipation_s, "reach": eng.coart_future,
            "level_reach": eng._level_reach, "visemes": lm,
            "rest_width": float(mouth_width(eng.neutral)), "engine": eng}


def envelope_of(data: list[dict]) -> dict:
    """The spectral envelope's settings, its starting mean from the loud rows of
    ``data``'s clips (the people fitted on)."""
    rows = np.vstack([d["cep_raw"][d["levels"] > CEP_GATE] for d in data])
    return {"mean0": [round(float(v), 5) for v in rows.mean(0)], "tau_rows": TAU_ROWS,
            "gate": CEP_GATE}


def cepstra(d: dict, env: dict) -> np.ndarray:
    """A clip's spectral envelope rows as the engine streams them with ``env``."""
    from engines.audio.spectral_envelope import SpectralEnvelope

    return SpectralEnvelope.from_settings(env).normalise(d["cep_raw"], d["levels"])


def _rows(d: dict, n: int) -> np.ndarray:
    """Each frame's anticipated 10 ms row, as the engine's ``next_frame`` takes it."""
    from engines.render.visemes import ROW_S

    return np.round((np.arange(n) / FPS + d["ant"]) / ROW_S).astype(int)


def features(d: dict, n: int, cep: np.ndarray | None = None) -> np.ndarray:
    """[n, K * n_phones + L (+ C * N_CEP)]: per phone offset its one-hot, then the loudness
    per level offset, then (``cep``: the clip's spectral envelope rows) the envelope per
    offset (the layout :class:`engines.render.mouth_ridge.PhoneRidge` reads its weights
    in)."""
    from engines.render.mouth_ridge import cepstra_window, window
    from engines.render.visemes import PHONES

    rows = _rows(d, n)
    ph, lv = window(d["phones"], d["levels"], rows, OFFSETS, d["reach"],
                    LEVEL_OFFSETS, d["level_reach"])
    out = np.zeros((n, len(OFFSETS), len(PHONES)), np.float32)
    out[np.arange(n)[:, None], np.arange(len(OFFSETS))[None, :], ph] = 1.0
    parts = [out.reshape(n, -1), lv]
    if cep is not None:
        parts.append(cepstra_window(cep, rows, CEP_OFFSETS, d["level_reach"]).reshape(n, -1))
    return np.hstack(parts)


def fit(xs: list[np.ndarray], ys: list[np.ndarray], ours: list[np.ndarray],
        from_rest: bool) -> dict:
    """One regression and its blend's constants from these clips (``ours``: the engine's
    values, already taken from each face's rest value when ``from_rest``)."""
    from engines.render.visemes import PHONES

    x = np.vstack(xs)
    y = np.concatenate(ys)
    ok = np.isfinite(y)
    x, y = x[ok].astype(np.float64), y[ok]
    mu = x.mean(0)
    k = len(OFFSETS) * len(PHONES)
    n_base = k + len(LEVEL_OFFSETS)
    # the phones and loudness as they are, penalised by LAMBDA; the spectral envelope's
    # columns standardised, penalised by CEP_LAMBDA (its scale is arbitrary)
    scale = np.ones(x.shape[1])
    scale[n_base:] = x[:, n_base:].std(0) + 1e-6
    xc = (x - mu) / scale
    pen = np.r_[np.full(n_base, LAMBDA), np.full(x.shape[1] - n_base, CEP_LAMBDA)]
    w = np.linalg.solve(xc.T @ xc + np.diag(pen), xc.T @ (y - y.mean())) / scale
    bias = float(y.mean() - mu @ w)
    pred = np.concatenate([xi @ w + bias for xi in xs])
    o = np.concatenate(ours)
    good = np.isfinite(o)
    mean, sd_o = float(o[good].mean()), float(o[good].std())
    gain = sd_o / max(float(pred[good].std()), 1e-9)
    mixed = (1 - SHARE) * o[good] + SHARE * (mean + gain * pred[good])
    spread = sd_o / max(float(mixed.std()), 1e-9)
    out = {"phones": list(PHONES), "offsets": OFFSETS.tolist(),
           "level_offsets": LEVEL_OFFSETS.tolist(),
           "w_phone": np.round(w[:k].reshape(len(OFFSETS), len(PHONES)), 6).tolist(),
           "w_level": np.round(w[k:n_base], 6).tolist(),
           "bias": round(bias, 6), "mean": round(mean, 6), "gain": round(gain, 6),
           "share": SHARE, "spread": round(spread, 6), "from_rest": from_rest,
           "lambda": LAMBDA}
    if x.shape[1] > n_base:
        out.update({"cep_offsets": CEP_OFFSETS.tolist(), "cep_lambda": CEP_LAMBDA,
                    "w_cep": np.round(w[n_base:].reshape(len(CEP_OFFSETS), -1), 8).tolist()})
    return out


def replay(d: dict, n: int, fit_: dict) -> np.ndarray:
    """The engine's landmarks [n,68,2] on what it heard, with the mouth model ``fit_``
    ({"opening": ..., "width": ...} as the shipped file holds them; "width" None: the
    learned opening alone)."""
    from engines.render.mouth_ridge import MouthRidge, PhoneRidge

    eng = d["engine"]
    width = fit_["width"]
    eng.mouth_model = MouthRidge(PhoneRidge.from_dict(fit_["opening"]),
                                 None if width is None else PhoneRidge.from_dict(width),
                                 fit_.get("envelope"))
    # the spectral envelope as the engine would have streamed it with this fit's settings
    eng.envelope = eng.mouth_model.spectral_envelope()
    eng._cepstra = None if eng.envelope is None else d["cep"]
    eng.rewind()
    lm = np.array([eng.next_frame()[0] for _ in range(n)], np.float32)
    eng.mouth_model, eng.envelope = None, None
    return lm


def regression(fit_: dict, d: dict, n: int) -> np.ndarray:
    """The regression alone per frame (its deviation from a clip's median)."""
    from engines.render.mouth_ridge import PhoneRidge

    m = PhoneRidge.from_dict(fit_)
    return np.array([m.predict(d["phones"], d["levels"], int(c), d["reach"], d["level_reach"],
                               d.get("cep")) for c in _rows(d, n)])


def with_envelope(data: list[dict], clips: list[dict], fitted_on: list[int],
                  envelope: bool = True) -> tuple[dict | None, list[np.ndarray]]:
    """The envelope's settings from the clips ``fitted_on`` (None: ``envelope`` off), each
    clip's rows streamed with them (``d["cep"]``, in place) and every clip's features."""
    env = envelope_of([data[i] for i in fitted_on]) if envelope else None
    xs = []
    for d, c in zip(data, clips, strict=True):
        d["cep"] = None if env is None else cepstra(d, env)
        xs.append(features(d, c["n"], d["cep"]))
    return env, xs


def fit_both(xs, data, clips, ys_open, ys_width, env: dict | None = None) -> dict:
    """The opening's fit on the visemes, then the width's on the engine with that
    opening (each clip's width taken from its face's rest width); ``env``: the spectral
    envelope's settings the features were streamed with (None: they hold none)."""
    from engines.render.mouth_ridge import mouth_width
    from etf_models.canonical_face import mouth_opening

    opening = fit(xs, ys_open, [mouth_opening(d["visemes"]) for d in data], from_rest=False)
    ours_w = [mouth_width(replay(d, c["n"], {"opening": opening, "width": None,
                                             "envelope": env}))
              - d["rest_width"] for d, c in zip(data, clips, strict=True)]
    out = {"opening": opening, "width": fit(xs, ys_width, ours_w, from_rest=True)}
    if env is not None:
        out["envelope"] = env
    return out


def widened(fit_: dict, k: float) -> dict:
    """``fit_`` with the width blend's spread above its mean ``k`` times as wide (below it
    as it was)."""
    w = dict(fit_["width"])
    if w.get("spread_below") is None:
        w["spread_below"] = w["spread"]
    w["spread"] = round(w["spread_below"] * k, 6)
    return {**fit_, "width": w}


def widen_table(fit_: dict, data, clips, widths) -> dict:
    """For each k of WIDEN_GRID, per person the engine's widening (the 90th percentile of
    its width against the clip's median) over the real one's, and the same for narrowing
    (10th percentile)."""
    from engines.render.mouth_ridge import mouth_width

    people = sorted({c["person"] for c in clips})
    out = {"grid": list(WIDEN_GRID), "people": people, "p90_ratio": [], "p10_ratio": []}
    for k in WIDEN_GRID:
        f = widened(fit_, k)
        ours: dict[str, list] = {p: [] for p in people}
        real: dict[str, list] = {p: [] for p in people}
        for d, c, w in zip(data, clips, widths, strict=True):
            ours[c["person"]].append(centred(mouth_width(replay(d, c["n"], f))))
            real[c["person"]].append(centred(w))
        o = {p: np.concatenate(v) for p, v in ours.items()}
        r = {p: np.concatenate(v) for p, v in real.items()}
        out["p90_ratio"].append([round(float(np.percentile(o[p], 90)
                                             / np.nanpercentile(r[p], 90)), 3) for p in people])
        out["p10_ratio"].append([round(float(np.percentile(o[p], 10)
                                             / np.nanpercentile(r[p], 10)), 3) for p in people])
    return out


def widen_choice(table: dict, leave_out: str | None = None) -> float:
    """The k whose median widening over the people (but ``leave_out``) is nearest the real
    one's."""
    keep = [i for i, p in enumerate(table["people"]) if p != leave_out]
    med = [abs(np.median(np.array(row)[keep]) - 1.0) for row in table["p90_ratio"]]
    return float(table["grid"][int(np.argmin(med))])


def real_width(c: dict) -> np.ndarray:
    """The clip's real mouth width per frame (NaN where untracked)."""
    from engines.render.mouth_ridge import mouth_width

    w = mouth_width(np.where(c["ok"][:, None, None], c["target"], 1.0))
    return np.where(c["ok"], w, np.nan)


def centred(v: np.ndarray) -> np.ndarray:
    """A clip's values from its own median (faces differ in width at rest)."""
    return v - np.nanmedian(v)


def main(argv: list[str] | None = None) -> int:
    global SHARE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true",
                    help="write the fit on everyone to engines/render/mouth_ridge.json")
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    ap.add_argument("--share", type=float, default=SHARE,
                    help="the regression's share of each blend (default %(default)s)")
    ap.add_argument("--no-envelope", action="store_true",
                    help="the phones and loudness alone (the fit before the spectral envelope)")
    args = ap.parse_args(argv)
    SHARE = args.share
    from benchmarks.lipsync_talking import ensure_shards, load_clips, score
    from engines.render import mouth_ridge
    from engines.render.mouth_ridge import mouth_width
    from engines.render.pinned import write_pinned_json
    from etf_models.canonical_face import mouth_opening

    t0 = time.time()
    ensure_shards(TALKING, SHARDS, 2)
    clips = load_clips(TALKING, SHARDS, None)
    data = [heard(c["neutral"], c["audio"], c["n"]) for c in clips]
    envelope = not args.no_envelope
    env, xs = with_envelope(data, clips, list(range(len(clips))), envelope)
    ys_open = [c["real"] - np.nanmedian(c["real"]) for c in clips]
    widths = [real_width(c) for c in clips]
    ys_width = [w - np.nanmedian(w) for w in widths]
    people = sorted({c["person"] for c in clips})
    full = fit_both(xs, data, clips, ys_open, ys_width, env)
    widen = widen_table(full, data, clips, widths)
    k = widen_choice(widen)
    widen["chosen"] = k
    widen["chosen_leaving_each_person_out"] = {p: widen_choice(widen, p) for p in people}
    print("widening:", json.dumps(widen), flush=True)
    full = widened(full, k)
    gap = np.full(8, np.nan)
    rows = []
    for person in people:
        tr = [i for i, c in enumerate(clips) if c["person"] != person]
        te = [i for i, c in enumerate(clips) if c["person"] == person]
        # the envelope's starting mean from the others too; every clip streamed with it
        env_p, xs_p = with_envelope(data, clips, tr, envelope)
        both = widened(fit_both([xs_p[i] for i in tr], [data[i] for i in tr],
                                [clips[i] for i in tr], [ys_open[i] for i in tr],
                                [ys_width[i] for i in tr], env_p), k)
        only_open = {"opening": both["opening"], "width": None, "envelope": env_p}
        series: dict[str, list[np.ndarray]] = {k: [] for k in (
            "real_o", "real_w", "vis_o", "open_o", "both_o", "open_w", "both_w", "reg_o",
            "reg_w")}
        for i in te:
            n = clips[i]["n"]
            lm_open, lm_both = replay(data[i], n, only_open), replay(data[i], n, both)
            for key, v in (("real_o", clips[i]["real"]), ("real_w", centred(widths[i])),
                           ("vis_o", mouth_opening(data[i]["visemes"])),
                           ("open_o", mouth_opening(lm_open)), ("both_o", mouth_opening(lm_both)),
                           ("open_w", centred(mouth_width(lm_open))),
                           ("both_w", centred(mouth_width(lm_both))),
                           ("reg_o", regression(both["opening"], data[i], n)),
                           ("reg_w", regression(both["width"], data[i], n))):
                series[key] += [v, gap]  # a person's clips end to end, a gap between them
        j = {k: np.concatenate(v) for k, v in series.items()}
        s_vis, s_both = score(j["vis_o"], j["real_o"]), score(j["both_o"], j["real_o"])
        rows.append({
            "person": person, "frames": int(np.isfinite(j["real_o"]).sum()),
            "opening": {"visemes": s_vis["corr"],
                        "regression": score(j["reg_o"], j["real_o"])["corr"],
                        "blend": score(j["open_o"], j["real_o"])["corr"],
                        "blend_with_width": s_both["corr"],
                        "median_ratio_visemes": s_vis["median_ratio"],
                        "median_ratio_blend": s_both["median_ratio"],
                        "p90_ratio_visemes": s_vis["p90_ratio"],
                        "p90_ratio_blend": s_both["p90_ratio"]},
            "width": {"visemes": score(j["open_w"], j["real_w"])["corr"],
                      "regression": score(j["reg_w"], j["real_w"])["corr"],
                      "blend": score(j["both_w"], j["real_w"])["corr"],
                      "widening_ratio_blend": round(float(
                          np.nanpercentile(j["both_w"], 90) / np.nanpercentile(j["real_w"], 90)),
                          3),
                      "narrowing_ratio_blend": round(float(
                          np.nanpercentile(j["both_w"], 10) / np.nanpercentile(j["real_w"], 10)),
                          3),
                      "sd_ratio_blend": round(float(np.nanstd(j["both_w"])
                                                    / np.nanstd(j["open_w"])), 3)},
        })
        o, w = rows[-1]["opening"], rows[-1]["width"]
        print(f"{person:24s} opening: visemes {o['visemes']:.3f} regression "
              f"{o['regression']:.3f} blend {o['blend']:.3f} (+width {o['blend_with_width']:.3f})"
              f"  width: visemes {w['visemes']:.3f} regression {w['regression']:.3f} "
              f"blend {w['blend']:.3f}", flush=True)
    devset = devset_clips(full)
    summary = {t: {k: {"median": round(float(np.median([r[t][k] for r in rows])), 4),
                       "mean": round(float(np.mean([r[t][k] for r in rows])), 4)}
                   for k in (("visemes", "regression", "blend", "blend_with_width")
                             if t == "opening" else ("visemes", "regression", "blend",
                                                     "widening_ratio_blend",
                                                     "narrowing_ratio_blend"))}
               for t in ("opening", "width")}
    report = {"benchmark": "mouth_ridge", "about": __doc__.split("\n\n")[0].replace("\n", " "),
              "offsets_rows": OFFSETS.tolist(), "level_offsets_rows": LEVEL_OFFSETS.tolist(),
              "lambda": LAMBDA, "share": SHARE,
              "spectral_envelope": None if env is None else {
                  "n_cep": N_CEP, "offsets_rows": CEP_OFFSETS.tolist(),
                  "cep_lambda": CEP_LAMBDA, "tau_rows": TAU_ROWS, "gate": CEP_GATE},
              "notes": "width 'visemes' is the engine with the learned opening alone (what "
                       "the width blend starts from); widths are taken from each clip's "
                       "median before scoring (faces differ in width at rest)",
              "people": len(people), "leave_one_person_out": summary, "per_person": rows,
              "widening": widen,
              "devset_fit_on_everyone": devset, "seconds": round(time.time() - t0, 1),
              "machine": machine_info()}
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print("leave one person out:", json.dumps(summary))
    print("devset:", devset)
    if args.write:
        sha = write_pinned_json(mouth_ridge.FIT_PATH,
                                {t: full[t] for t in (*mouth_ridge.TARGETS, "envelope")
                                 if t in full})
        print(f"wrote {mouth_ridge.FIT_PATH} sha256 {sha}")
    return 0


def devset_clips(full: dict) -> list[dict]:
    """The fit on everyone, on the devset's paired clips (engine landmarks, not rendered):
    opening and width against dlib's on the real frames."""
    from benchmarks.lipsync_devset import CLIPS, DEVSET, closed_mouth_frame, frames_of
    from engines.face.enrollment import neutralise
    from engines.face.face_metrics import best_lag_corr, frame_landmarks
    from engines.media.audio_io import load_audio
    from engines.render.mouth_ridge import mouth_width
    from etf_models.canonical_face import apply_affine, mouth_opening, similarity_to_canonical

    out = []
    for clip in CLIPS:
        if not (DEVSET / clip).is_file():
            continue
        frames = frames_of(DEVSET / clip)
        lms = frame_landmarks(frames)
        real = mouth_opening(lms)
        real_w = mouth_width(lms)
        lm = frame_landmarks([frames[closed_mouth_frame(real)]])[0]
        neutral = neutralise(apply_affine(similarity_to_canonical(lm), lm).astype(np.float32))[0]
        d = heard(neutral, load_audio(DEVSET / clip, 16000), len(real))
        d["cep"] = cepstra(d, full["envelope"]) if "envelope" in full else None
        lm_open = replay(d, len(real), {"opening": full["opening"], "width": None,
                                        "envelope": full.get("envelope")})
        lm_both = replay(d, len(real), full)
        def r(x, y):
            return round(best_lag_corr(x, y)[0], 4)

        out.append({"clip": clip, "opening_visemes": r(mouth_opening(d["visemes"]), real),
                    "opening_blend": r(mouth_opening(lm_open), real),
                    "opening_blend_with_width": r(mouth_opening(lm_both), real),
                    "width_visemes": r(mouth_width(lm_open), real_w),
                    "width_blend": r(mouth_width(lm_both), real_w)})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
