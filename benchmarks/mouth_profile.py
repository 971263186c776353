"""The open mouth's colour from the upper lip down to the lower lip: real mouths vs ours.

What a viewer reads in an open mouth is mostly its vertical make-up: upper teeth under the
upper lip, then the dark cavity, then the tongue (and, with the jaw down, the lower teeth)
above the lower lip. This measures it the same way on both sides:

* real: the open-mouth samples of ``etf fit-mouth`` (``~/.cache/etf/mouth-samples``, made
  from ../shared/data/talking and MEAD; rebuilt by ``etf fit-mouth`` when missing), each a
  64x48 patch on the resting mouth with its inner-lip coverage and the person's lip colour;
* ours: the default renderer's mouth on the built-in face and four devset photos, jaw
  openings from a narrow ee to a wide aa, put through the very same patch and lip-colour
  code.

Per sample, in the middle 60% of the opening's width, each column's interior from the
upper inner lip (t = 0) to the lower (t = 1) is split into ``BINS`` bands; a band's colour
is taken over the lips' colour (per channel, so light and skin drop out). Reported per
inner-lip gap class: each band's luminance ratio and its redness (R over the mean of G
and B), the median over a person's (a face's) samples, then the median over people (faces);
for all real people and for the mouth model's three held-out people apart.

Writes benchmarks/results/mouth_profile.json. Machine-independent (no timing).

    python benchmarks/mouth_profile.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = Path.home() / ".cache" / "etf" / "mouth-samples"
OUT = ROOT / "benchmarks" / "results" / "mouth_profile.json"
BINS = 6
#: inner-lip gap classes (inter-ocular distances)
GAPS = {"narrow (ee)": (0.06, 0.12), "mid": (0.12, 0.2), "wide (aa)": (0.2, 0.4)}
#: the mouth model's held-out people (benchmarks/results/mouth_model.json)
HELD_OUT = ("feifeili", "latentsync_demo2", "reagan")


def profile(patch: np.ndarray, inner: np.ndarray, lip: np.ndarray) -> np.ndarray | None:
    """[BINS, 3] colour over lip colour, top (upper inner lip) to bottom, or None when the
    opening is too small to split."""
    cols = np.nonzero((inner > 0.5).sum(0) >= BINS)[0]
    if cols.size < 5:
        return None
    x0, x1 = cols.min(), cols.max()
    keep = cols[np.abs(cols - (x0 + x1) / 2) <= 0.3 * (x1 - x0)]
    if keep.size < 3:
        return None
    out = np.zeros((BINS, 3))
    n = np.zeros(BINS)
    for x in keep:
        ys = np.nonzero(inner[:, x] > 0.5)[0]
        y0, y1 = ys.min(), ys.max() + 1
        t = (np.arange(y0, y1) + 0.5 - y0) / (y1 - y0)
        b = np.minimum((t * BINS).astype(int), BINS - 1)
        np.add.at(out, b, patch[y0:y1, x].astype(np.float64))
        np.add.at(n, b, 1.0)
    if (n == 0).any():
        return None
    return out / n[:, None] / np.maximum(np.asarray(lip, np.float64), 1.0)


#: bands across the opening, from its middle (0) to its corners (1)
ACROSS_BINS = 5


def across(patch: np.ndarray, inner: np.ndarray, lip: np.ndarray) -> np.ndarray | None:
    """[ACROSS_BINS, 3] colour over lip colour from the opening's middle out to its corners
    (both halves folded together; each column's interior above its middle, where the upper
    teeth show), or None when the opening is too small to split."""
    inside = inner > 0.5
    cols = np.nonzero(inside.sum(0) >= 2)[0]
    if cols.size < 2 * ACROSS_BINS:
        return None
    x0, x1 = cols.min(), cols.max() + 1
    mid, half = (x0 + x1) / 2, (x1 - x0) / 2
    out = np.zeros((ACROSS_BINS, 3))
    n = np.zeros(ACROSS_BINS)
    for x in cols:
        ys = np.nonzero(inside[:, x])[0]
        top = ys[: max(1, (len(ys) + 1) // 2)]
        b = min(int(abs(x + 0.5 - mid) / half * ACROSS_BINS), ACROSS_BINS - 1)
        out[b] += patch[top, x].astype(np.float64).sum(0)
        n[b] += len(top)
    if (n == 0).any():
        return None
    return out / n[:, None] / np.maximum(np.asarray(lip, np.float64), 1.0)


def _medians(profiles: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    p = np.stack(profiles)
    red = p[..., 0] / np.maximum(p[..., 1:].mean(-1), 1e-3)
    return np.median(p.mean(-1), 0), np.median(red, 0)


def summarise(groups: dict[str, list[np.ndarray]], min_n: int = 5) -> dict | None:
    """Per group (a person, a face) the median profile of its samples, then the median
    over the groups: a person with many frames counts once."""
    kept = [v for v in groups.values() if len(v) >= min_n]
    if not kept:
        return None
    meds = [_medians(v) for v in kept]
    return {"groups": len(meds), "n": sum(len(v) for v in kept),
            "luminance": np.round(np.median([m[0] for m in meds], 0), 3).tolist(),
            "redness": np.round(np.median([m[1] for m in meds], 0), 3).tolist()}


def real_profiles(fn=profile) -> dict[str, dict[str, list]]:
    """Per person, per gap class, the samples' profiles (``fn``: :func:`profile` top to
    bottom, or :func:`across` middle to corners)."""
    from engines.recordings import mouth_fit

    if not CACHE.exists() or not any(CACHE.glob("*.npz")):
        data = ROOT.parent / "shared" / "data"
        mouth_fit.collect(mouth_fit.videos_in(data / "talking", data / "emotion"), CACHE)
    out: dict[str, dict[str, list]] = {}
    for f in sorted(CACHE.glob("*.npz")):
        with np.load(f) as z:
            patch, cond, lip, gap = z["patch"], z["cond"], z["lip"], z["gap"]
        per = out.setdefault(f.stem, {g: [] for g in GAPS})
        for i in range(len(patch)):
            for name, (lo, hi) in GAPS.items():
                if lo <= gap[i] < hi:
                    p = fn(patch[i], cond[i, 0].astype(np.float32), lip[i])
                    if p is not None:
                        per[name].append(p)
    return out


def our_profiles(identity, fn=profile) -> dict[str, list]:
    """Per gap class, profiles (``fn``) of the default renderer's open mouths on
    ``identity``."""
    import cv2

    from engines.motion import face_motion as M
    from engines.render import texture_warp
    from engines.render.compositor import paste_roi
    from engines.render.landmark_default import SpeechLandmarkEngine
    from etf_models import mouth_patch as mp
    from etf_models.canonical_face import IOD

    warp = texture_warp.prepare(identity)
    fields = M.build_fields(identity.neutral)
    to_canon = identity.to_canonical
    ph_rest = identity.canonical_to_photo(identity.neutral)
    lip = mp.lip_colour(paste_roi(identity.photo, texture_warp.render_roi(
        warp, identity.neutral), warp.roi, warp.feather), ph_rest)
    out: dict[str, list] = {g: [] for g in GAPS}
    shapes = []
    for phone in ("IY", "EH", "AE", "AA", "AH", "AO"):
        base = SpeechLandmarkEngine.viseme(phone)
        for gain in np.linspace(0.5, 2.0, 7):  # quieter and louder than the table's own
            shapes.append(base * gain)
    for p in shapes:
        lm = M.apply(identity.neutral, fields, p)
        gap = mp.inner_gap(lm) / IOD
        name = next((g for g, (lo, hi) in GAPS.items() if lo <= gap < hi), None)
        if name is None:
            continue
        img = paste_roi(identity.photo, texture_warp.render_roi(warp, lm), warp.roi,
                        warp.feather)
        m, cond = mp.conditions(lm, identity.neutral, lip)
        full = np.c_[m[:, :2] @ to_canon[:, :2], m[:, :2] @ to_canon[:, 2] + m[:, 2]]
        patch = cv2.warpAffine(img, full, (mp.PATCH_W, mp.PATCH_H), flags=cv2.INTER_AREA,
                               borderMode=cv2.BORDER_REPLICATE)
        prof = fn(patch, cond[0], lip)
        if prof is not None:
            out[name].append(prof)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from benchmarks.mouth_sheets import faces

    real = real_profiles()
    report: dict = {"about": __doc__.split("\n\n")[0].replace("\n", " "), "bins": BINS,
                    "gaps_iod": GAPS, "real_people": sorted(real), "held_out": list(HELD_OUT)}
    for name in GAPS:
        report.setdefault("real_all", {})[name] = summarise(
            {who: per[name] for who, per in real.items()})
        report.setdefault("real_held_out", {})[name] = summarise(
            {who: real[who][name] for who in HELD_OUT if who in real})
    ours = {face: our_profiles(identity) for face, identity in faces()}
    report["ours_all"] = {g: summarise({f: v[g] for f, v in ours.items()}, min_n=2)
                          for g in GAPS}
    # how far ours is from the real people's median: mean |difference| over the bands
    # (and from the three held-out people's: these constants were set against real_all)
    for key, ref in (("ours_minus_real", "real_all"), ("ours_minus_held_out", "real_held_out")):
        report[key] = {
            g: {k: round(float(np.mean(np.abs(np.subtract(report["ours_all"][g][k],
                                                          report[ref][g][k])))), 3)
                for k in ("luminance", "redness")}
            for g in GAPS if report["ours_all"][g] and report[ref][g]}
    # across the opening: the side teeth in the cheeks' shadow (the buccal corridor)
    real_x = real_profiles(across)
    ours_x = {face: our_profiles(identity, across) for face, identity in faces()}
    report["across"] = {
        "about": "upper half of the opening, middle (first band) to corners (last), colour "
                 "over lip colour; median per person (face), then over people (faces)",
        "bins": ACROSS_BINS,
        "real_all": {g: summarise({who: per[g] for who, per in real_x.items()}) for g in GAPS},
        "ours_all": {g: summarise({f: v[g] for f, v in ours_x.items()}, min_n=2)
                     for g in GAPS}}
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    for g in GAPS:
        print(f"{g}:")
        for label, s in (("real", report["real_all"][g]), ("held", report["real_held_out"][g]),
                         ("ours", report["ours_all"][g])):
            if s:
                print(f"  {label} {s['groups']:2d} groups, n={s['n']:5d} lum {s['luminance']}"
                      f"  red {s['redness']}")
    print("mean |ours - real| per band:", report["ours_minus_real"])
    print("across, middle to corners:")
    for g in GAPS:
        for label in ("real_all", "ours_all"):
            v = report["across"][label][g]
            if v:
                print(f"  {g:12s} {label[:4]} {v['groups']:2d} groups lum {v['luminance']}"
                      f"  red {v['redness']}")
    print("mean |ours - held out| per band:", report["ours_minus_held_out"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
