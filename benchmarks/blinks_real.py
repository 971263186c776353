"""How often and how long real people blink while they talk, measured on real clips.

Every clip of ``../shared/data/talking`` (dlib's 68 points per frame in the canonical
frame, as ``benchmarks/lipsync_talking.py`` reads them): per frame the eyes' aspect ratio
(lid to lid over corner to corner, both eyes averaged); a blink is a run of frames under
``CLOSED`` of the clip's median (the eyes well shut) lasting at most ``LONGEST`` (longer
is a look down or away, not a blink), with open eyes on both sides. Its duration runs
from the frame the lids start down to the frame they are back (under ``MOVING`` of the
median); the interval is one blink's start to the next's in the same clip.

Reports the rate per clip and overall, the intervals' and durations' percentiles and the
log-normal fits (mean and standard deviation of their logarithms) that
:class:`engines.motion.idle.Blinker` draws from (``GAP_LOG``, ``DURATION_LOG`` there), and
how a Blinker with those constants blinks over an hour. Writes
``benchmarks/results/blinks_real.json`` (numbers only, no image).

    python benchmarks/blinks_real.py
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

FPS = 25.0
TALKING = ROOT.parent / "shared" / "data" / "talking"
SHARDS = Path.home() / ".cache" / "etf" / "talking-shards"
OUT = ROOT / "benchmarks" / "results" / "blinks_real.json"
#: Eyes this far under their median aspect ratio are shut; this far under are moving.
CLOSED = 0.6
MOVING = 0.85
#: The longest closed run that is a blink (frames at 25 fps: 0.4 s).
LONGEST = 10
#: Clips with more untracked frames than this are left out.
MAX_UNTRACKED = 0.2


def eye_ratio(lm: np.ndarray) -> np.ndarray:
    """[n] both eyes' mean aspect ratio (lids' two gaps over the corners' distance)."""
    def one(a):
        return ((np.linalg.norm(lm[:, a[1]] - lm[:, a[5]], axis=1)
                 + np.linalg.norm(lm[:, a[2]] - lm[:, a[4]], axis=1))
                / (2.0 * np.linalg.norm(lm[:, a[0]] - lm[:, a[3]], axis=1)))
    return 0.5 * (one([36, 37, 38, 39, 40, 41]) + one([42, 43, 44, 45, 46, 47]))


def blinks(ratio: np.ndarray) -> list[tuple[int, int]]:
    """(first, last + 1) frames of each blink: moving lids around a short shut run."""
    med = np.nanmedian(ratio)
    shut = ratio < CLOSED * med
    moving = ratio < MOVING * med
    n, out, i = len(ratio), [], 0
    while i < n:
        if not shut[i]:
            i += 1
            continue
        j = i
        while j < n and shut[j]:
            j += 1
        if j - i <= LONGEST and i > 0 and j < n:
            a, b = i, j
            while a > 0 and moving[a - 1]:
                a -= 1
            while b < n and moving[b]:
                b += 1
            if out and a < out[-1][1]:  # one blink, its shut run split by a noisy frame
                out[-1] = (out[-1][0], max(b, out[-1][1]))
            else:
                out.append((a, b))
        i = j
    return out


def log_fit(x: np.ndarray) -> dict:
    lx = np.log(x)
    return {"log_mean": round(float(lx.mean()), 3), "log_sd": round(float(lx.std()), 3)}


def measured_share() -> float:
    """The share of a Blinker blink's drawn length that the measure above sees (the
    lids' first and last moments stay over ``MOVING``)."""
    from engines.motion.idle import Blinker

    b = Blinker(np.random.default_rng(0))
    b.start, b.dur = 0.0, 1.0
    x = np.linspace(0.0, 1.0, 10001)
    closed = np.array([b.at(v) for v in x])
    return float((1.0 - 0.9 * closed < MOVING).mean())


def fitted(gaps: np.ndarray, durations: np.ndarray, seconds: float) -> dict:
    """What the Blinker draws from: intervals log-normal with the real intervals' spread
    and the mean that gives the real rate (the within-clip intervals over-weigh people who
    blink often: more of their intervals fit in a clip); lengths log-normal with the real
    lengths' spread, lengthened by what the measure does not see."""
    sd = float(np.log(gaps).std())
    mean_gap = seconds / len(durations)
    d = log_fit(durations)
    return {"gap_log": [round(float(np.log(mean_gap) - sd * sd / 2), 3), round(sd, 3)],
            "duration_log": [round(d["log_mean"] - float(np.log(measured_share())), 3),
                             d["log_sd"]]}


def simulate(hours: float = 1.0, fps: float = FPS, seed: int = 0) -> dict:
    """A :class:`Blinker` with the shipped constants, measured like the real clips."""
    from engines.motion.idle import Blinker

    b = Blinker(np.random.default_rng(seed))
    t = np.arange(int(hours * 3600 * fps)) / fps
    closed = np.array([b.at(x) for x in t])
    ratio = 1.0 - 0.9 * closed  # the eye's opening falls as the blink closes it
    found = blinks(ratio)
    starts = np.array([a for a, _ in found]) / fps
    lengths = [(end - a) / fps for a, end in found]
    return {"rate_per_min": round(len(found) / (hours * 60), 1),
            "interval_s_p10_p50_p90": np.percentile(np.diff(starts), [10, 50, 90]).round(2)
            .tolist(),
            "duration_s_p10_p50_p90": np.percentile(lengths, [10, 50, 90]).round(3).tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from benchmarks.lipsync_talking import ensure_shards, load_clips
    from engines.motion.idle import Blinker

    t0 = time.time()
    ensure_shards(TALKING, SHARDS, 2)
    clips = load_clips(TALKING, SHARDS, None)
    per_clip, gaps, durs, seconds = [], [], [], 0.0
    for c in clips:
        if (~c["ok"]).mean() > MAX_UNTRACKED:
            continue
        lm = np.where(c["ok"][:, None, None], c["target"], np.nan)
        found = blinks(eye_ratio(lm))
        starts = np.array([a for a, _ in found], float) / FPS
        gaps += np.diff(starts).tolist()
        durs += [(b - a) / FPS for a, b in found]
        seconds += c["n"] / FPS
        per_clip.append({"clip": c["clip"], "person": c["person"], "seconds": c["n"] / FPS,
                         "blinks": len(found),
                         "rate_per_min": round(len(found) / (c["n"] / FPS) * 60, 1)})
    g, d = np.array(gaps), np.array(durs)
    rates = np.array([p["rate_per_min"] for p in per_clip if p["seconds"] >= 10])
    report = {
        "benchmark": "blinks_real", "about": __doc__.split("\n\n")[0].replace("\n", " "),
        "closed": CLOSED, "moving": MOVING, "longest_frames": LONGEST,
        "clips": len(per_clip), "seconds": round(seconds, 1), "blinks": len(d),
        "rate_per_min": round(len(d) / seconds * 60, 1),
        "rate_per_min_clips_10s_p10_p50_p90": np.percentile(rates, [10, 50, 90]).round(1).tolist(),
        "interval_s_p10_p25_p50_p75_p90": np.percentile(g, [10, 25, 50, 75, 90]).round(2).tolist(),
        "interval_log_fit": log_fit(g),
        "duration_s_p10_p50_p90": np.percentile(d, [10, 50, 90]).round(3).tolist(),
        "duration_log_fit": log_fit(d),
        "fitted": fitted(g, d, seconds),
        "shipped": {"gap_log": list(Blinker.GAP_LOG), "duration_log": list(Blinker.DURATION_LOG),
                    "blinker_over_an_hour": simulate()},
        "per_clip": per_clip, "took_s": round(time.time() - t0, 1),
    }
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_clip", "about")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
