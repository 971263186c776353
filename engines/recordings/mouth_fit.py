"""``etf fit-mouth``: mouth-interior training samples from real talking faces.

Every other frame of the real clips (``../shared/data/talking`` and the MEAD / talking-style
clips of ``../shared/data/emotion``): the face mesh (tracked), its 68 points through the
fixed map (the same points the renderer's engines produce), the canonical frame, and the
mouth patch (:mod:`etf_models.mouth_patch`) sampled from the frame. A person's resting
mouth is the median of their least-open frames (their neutral clip where MEAD has one).

The samples (patch pixels + conditioning) stay in a local cache for training; what ships is
only the trained network (:mod:`etf_models.mouth_train`), never an image of a person.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engines.face.mesh import FaceMesh, MeshTracker
from engines.face.mesh68 import mesh_to_68
from etf_models import mouth_patch as mp
from etf_models.canonical_face import IOD, apply_affine, similarity_to_canonical
from etf_models.datasets import person_of

log = logging.getLogger(__name__)

#: canonical crop kept per frame around the mouth (canonical pixels from the mouth centre)
CROP_X, CROP_UP, CROP_DOWN, CROP_SCALE = 60, 45, 70, 1.5
#: share of a person's frames (least open) whose median is their resting mouth
REST_SHARE = 0.25


@dataclass
class Clip:
    name: str
    person: str
    landmarks: list = field(default_factory=list)  # canonical [68,2] per kept frame
    crops: list = field(default_factory=list)  # canonical mouth crop uint8 per kept frame
    crop_from_canon: list = field(default_factory=list)  # 2x3 per kept frame


def _crop_transform(lm: np.ndarray) -> np.ndarray:
    c = lm[48:68].mean(0)
    s = CROP_SCALE
    return np.array([[s, 0.0, (CROP_X - c[0]) * s], [0.0, s, (CROP_UP - c[1]) * s]])


def read_clip(path: Path, tracker_mesh: FaceMesh, every: int = 2) -> Clip:
    """Mesh-tracked canonical landmarks and mouth crops of one clip."""
    import av

    clip = Clip(path.stem, person_of(path.stem))
    tracker = MeshTracker(tracker_mesh, iris=False)
    size = (int(2 * CROP_X * CROP_SCALE), int((CROP_UP + CROP_DOWN) * CROP_SCALE))
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            img = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
            mesh = tracker(img)  # track every frame, keep every ``every``-th
            if mesh is None or i % every:
                continue
            lm_img = mesh_to_68(mesh)
            to_canon = similarity_to_canonical(lm_img)
            if np.hypot(*to_canon[:, 0]) > 64.0 / 30:  # face under 30 px between the eyes
                continue
            lm = apply_affine(to_canon, lm_img)
            crop_m = _crop_transform(lm)
            full = crop_m[:, :2] @ to_canon[:, :2]
            m = np.c_[full, crop_m[:, :2] @ to_canon[:, 2] + crop_m[:, 2]]
            crop = cv2.warpAffine(img, m, size, flags=cv2.INTER_AREA
                                  if np.hypot(*m[:, 0]) < 1 else cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            clip.landmarks.append(lm.astype(np.float32))
            clip.crops.append(crop)
            clip.crop_from_canon.append(crop_m)
    log.info("%s: %d frames", path.name, len(clip.landmarks))
    return clip


def rest_of(clips: list[Clip]) -> np.ndarray:
    """Resting landmarks: the median of the least-open frames of these clips."""
    lms = np.concatenate([np.stack(c.landmarks) for c in clips if c.landmarks])
    gaps = np.array([mp.inner_gap(lm) for lm in lms])
    keep = gaps <= np.quantile(gaps, REST_SHARE)
    return np.median(lms[keep], axis=0)


def samples(clips: list[Clip]) -> dict[str, np.ndarray]:
    """Training arrays for one person's clips (each clip's rest is its own, or the person's
    neutral clip's where there is one): patches [N,H,W,3] uint8, conditions
    [N,C,H,W] float16, lip colour [N,3], clip index per sample."""
    # a posed emotion's least-open frames are no rest: MEAD's own neutral clip is
    neutral = [c for c in clips if "neutral" in c.name]
    out = {"patch": [], "cond": [], "lip": [], "clip": [], "gap": []}
    for ci, clip in enumerate(clips):
        if not clip.landmarks:
            continue
        rest = rest_of(neutral or [clip])
        # the lips' colour: median over the clip's least-open frames
        lms = np.stack(clip.landmarks)
        gaps = np.array([mp.inner_gap(lm) for lm in lms])
        cols = []
        for k in np.argsort(gaps)[:max(3, len(gaps) // 4)]:
            col = mp.lip_colour(clip.crops[k], apply_affine(clip.crop_from_canon[k], lms[k]))
            if col is not None:
                cols.append(col)
        if not cols:
            continue
        lip = np.median(cols, axis=0)
        for lm, crop, crop_m, gap in zip(lms, clip.crops, clip.crop_from_canon, gaps,
                                         strict=True):
            m, cond = mp.conditions(lm, rest, lip)
            # crop pixels -> patch pixels: patch = m o crop_m^-1
            inv = np.linalg.inv(np.vstack([crop_m, [0, 0, 1]]))[:2]
            pm = m[:, :2] @ inv[:, :2]
            full = np.c_[pm, m[:, :2] @ inv[:, 2] + m[:, 2]]
            patch = cv2.warpAffine(crop, full, (mp.PATCH_W, mp.PATCH_H),
                                   flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
            out["patch"].append(patch)
            out["cond"].append(cond.astype(np.float16))
            out["lip"].append(lip)
            out["clip"].append(ci)
            out["gap"].append(gap / IOD)
    return {k: np.asarray(v) for k, v in out.items()}


def collect(videos: list[Path], cache: Path, every: int = 2) -> dict[str, dict]:
    """Per person, their training arrays; cached per person under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    by_person: dict[str, list[Path]] = {}
    for v in videos:
        by_person.setdefault(person_of(v.stem), []).append(v)
    fm = FaceMesh()
    result = {}
    for person, paths in sorted(by_person.items()):
        f = cache / f"{person}.npz"
        if not f.exists():
            clips = [read_clip(p, fm, every) for p in paths]
            arrays = samples([c for c in clips if c.landmarks])
            np.savez(f, **arrays)
        with np.load(f) as z:
            result[person] = {k: z[k] for k in z.files}
        log.info("%s: %d samples", person, len(result[person]["patch"]))
    return result


#: frames whose lips part at least this much (inter-ocular distances) show their teeth and
#: cavity well enough to measure their colour
COLOUR_GAP = 0.08


def _highlight(px: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean colour of the brightest 8% of the interior's pixels ``px`` [n,3] by their
    luminance ``y`` [n] (the teeth, where they show)."""
    return px[y >= np.percentile(y, 92)].mean(0)


def interior_colours(people: dict[str, dict], names: list[str]) -> dict:
    """How bright real teeth and how dark a real mouth's cavity are against the same
    person's lips: per frame, the mean colour of the brightest 8% and of the darkest 10% of
    the interior's pixels, over the lips' colour; the median per person over their open
    frames, then the median over ``names``. Per channel (RGB) and as luminance (the mean of
    the channels over the lips' mean); and how coloured teeth get: the saturation
((max - min) / max) of their highlight, its 75th percentile over the people."""
    per = {}
    for who in names:
        a = people[who]
        bright, dark, lum, sat = [], [], [], []
        for patch, cond, lip, gap in zip(a["patch"], a["cond"], a["lip"], a["gap"], strict=True):
            inside = cond[0] > 0.95
            if gap < COLOUR_GAP or inside.sum() < 20:
                continue
            px = patch[inside].astype(np.float64)
            y = px.mean(1)
            top = _highlight(px, y)
            bright.append(top / np.maximum(lip, 1.0))
            dark.append(px[y <= np.percentile(y, 10)].mean(0) / np.maximum(lip, 1.0))
            lum.append(top.mean() / max(float(np.mean(lip)), 1.0))
            sat.append((top.max() - top.min()) / max(float(top.max()), 1.0))
        if len(bright) >= 10:
            per[who] = (np.median(bright, 0), np.median(dark, 0), float(np.median(lum)),
                        float(np.median(sat)))
    if not per:
        raise ValueError("no open-mouth frames to measure")
    return {"people": sorted(per),
            "teeth_over_lip_rgb": np.round(np.median([v[0] for v in per.values()], 0), 3).tolist(),
            "teeth_over_lip_luminance": round(float(np.median([v[2] for v in per.values()])), 3),
            "teeth_saturation_p75": round(float(np.percentile([v[3] for v in per.values()],
                                                              75)), 3),
            "cavity_over_lip_rgb": np.round(np.median([v[1] for v in per.values()], 0), 3).tolist()}


#: inner-lip gap bins (inter-ocular distances) for the teeth's brightness against the gap
GAP_BINS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.18, 0.3)


def teeth_by_gap(people: dict[str, dict], names: list[str]) -> dict:
    """How bright the interior's highlight (the brightest 8% of its pixels: teeth where
    they show) is against the lips as the lips part: light reaches into a wide mouth, a
    narrow one stays in the lips' shadow. Per gap bin, the median over ``names`` of each
    person's median (people with at least 5 frames in the bin)."""
    n_bins = len(GAP_BINS) - 1
    per = []
    for who in names:
        a = people[who]
        got: list[list[float]] = [[] for _ in range(n_bins)]
        for patch, cond, lip, gap in zip(a["patch"], a["cond"], a["lip"], a["gap"], strict=True):
            b = int(np.searchsorted(GAP_BINS, gap, side="right")) - 1
            inside = cond[0] > 0.95
            if not 0 <= b < n_bins or inside.sum() < 8:
                continue
            px = patch[inside].astype(np.float64)
            top = _highlight(px, px.mean(1))
            got[b].append(float(top.mean()) / max(float(lip.mean()), 1.0))
        per.append([np.median(v) if len(v) >= 5 else np.nan for v in got])
    med = np.nanmedian(np.array(per, np.float64), axis=0)
    return {"gap": [round((lo + hi) / 2, 3) for lo, hi in zip(GAP_BINS[:-1], GAP_BINS[1:],
                                                             strict=True)],
            "teeth_over_lip_luminance": np.round(med, 3).tolist()}


def videos_in(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir()
                  if p.suffix in (".mp4", ".mpg"))


def run(talking: Path, emotion: Path, output: Path, report: Path, hold_out: list[str],
        steps: int = 3000, cache: Path | None = None, seed: int = 0) -> dict:
    """Extract the samples, train the interior with ``hold_out`` people left out, report
    their error, write the ONNX export to ``output`` and the report (JSON) to ``report``."""
    import hashlib
    import json

    from etf_models.mouth_train import export_onnx, train

    videos = videos_in(talking, emotion)
    if not videos:
        raise SystemExit(f"no clips in {talking} or {emotion}")
    people = collect(videos, cache or Path.home() / ".cache" / "etf" / "mouth-samples")
    g, result = train(people, hold_out, steps=steps, seed=seed)
    export_onnx(g, output)
    result["interior_colours"] = interior_colours(people, result["train_people"])
    result["interior_colours"]["teeth_by_gap"] = teeth_by_gap(people, result["train_people"])
    result["sha256"] = hashlib.sha256(output.read_bytes()).hexdigest()
    result["sources"] = ("frames of ../shared/data/talking (styletalk, EDTalk, LatentSync, "
                         "GRID CC BY 4.0, Real3DPortrait, MEAD) and ../shared/data/emotion "
                         "(MEAD, research use; styletalk); no image kept")
    report.write_text(json.dumps(result, indent=1) + "\n")
    return result
