"""``etf fit-emotions``: emotion geometry and expression texture measured on real faces.

Input: MEAD's front-view clips (``mead_<speaker>_front_<emotion>_level<k>_001.mp4``), one
neutral clip and one clip per emotion for each speaker. The speakers talk while they pose,
so every statistic is a median over the clip's frames: the expression stays, the speech
mostly cancels against the same speaker's neutral clip, which talks too.

For every frame: dlib's 68 points, the similarity that puts the eyes at their canonical
places (:mod:`etf_models.canonical_face`), and the frame's luminance warped onto a
template face (the mean neutral shape), so a wrinkle is compared with the same patch of
skin however the expression moved it.

Output (:mod:`engines.motion.emotion_model` reads it):
  * ``fields`` [7,68,2]: per emotion, the median aligned landmarks minus the same speaker's
    neutral median, averaged over speakers (:func:`pooled_field`: scaled back to a typical
    speaker's strength where they agree), in canonical pixels (a fixed scale: the
    canonical inter-ocular distance). Neutral is zero. Intensity 1 = MEAD level 3.
    ``etf fit-emotions`` then calibrates them through the instrument
    (:mod:`engines.render.emotion_calibration`) and keeps the uncalibrated ones as
    ``measured_fields`` with the gains as ``instrument_gain``.
  * ``ratio`` [7,R,R]: expression ratio images on the template, luminance of the emotion
    over luminance of neutral (median over speakers, scaled back to a typical speaker's
    strength: ``texture_gain``), smoothed, 1 off the face and
    inside the mouth (teeth and cavity are the mouth renderer's business). Neutral is 1.
  * ``template`` [V,2]: the template's vertices (68 landmarks + forehead points), so any
    identity's own landmarks can carry the ratio images onto its photo.

``--hold-out SPEAKER`` fits without that speaker, for judging on a face the fit never saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
from scipy import sparse

from etf_models.canonical_face import (
    BROW_L,
    BROW_R,
    CANON_SIZE,
    EYE_L,
    EYE_R,
    INNER_LIP_RING,
    IOD,
    JAW,
    LOWER_INNER,
    UPPER_INNER,
    apply_affine,
    barycentric_matrix,
    similarity_to_canonical,
)
from etf_models.emotions import EMOTIONS

log = logging.getLogger("etf.emotion_fit")

#: MEAD's emotion names -> ours. MEAD's "contempt" has no place among the seven.
MEAD_EMOTIONS = {
    "neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad",
    "surprised": "surprise", "fear": "fear", "disgusted": "disgust",
}
_CLIP = re.compile(r"mead_(?P<spk>[A-Z]\d+)_front_(?P<emo>[a-z]+)_level(?P<lvl>\d)_\d+\.mp4$")
#: Ratio images are stored at this side (the canonical 256 frame, halved).
RATIO_SIZE = 128
#: Forehead points sit this far above each brow point (IOD units): they let the ratio
#: images reach the forehead lines of surprise and fear, which no landmark covers.
FOREHEAD_LIFT = 0.55
RATIO_BLUR_PX = 2.5  # on the 256 frame
#: Shading broader than this (px on the 256 frame) is the studio's light changing between
#: clips or the head turning toward it, not the expression: it is divided out.
RATIO_BROAD_PX = 14.0
RATIO_RANGE = (0.7, 1.3)
#: Emotions that raise the brows with the frontalis (AU1+2) crease the forehead in
#: horizontal lines; their maps above the brows are smoothed along the lines (sigma px on
#: the 256 frame, across / along), so creases that sit a little apart in each speaker pool
#: into lines instead of blotches. Angry's and disgust's creases between the brows run
#: vertically and keep their maps.
FOREHEAD_LINE_EMOTIONS = ("surprise", "fear")
FOREHEAD_LINE_SIGMA = (0.8, 9.0)


def find_mead_clips(data_dir: str | Path) -> dict[str, dict[str, Path]]:
    """{speaker: {emotion: clip}} for the MEAD front clips under ``data_dir``."""
    clips: dict[str, dict[str, Path]] = {}
    for p in sorted(Path(data_dir).glob("mead_*_front_*.mp4")):
        m = _CLIP.search(p.name)
        if not m or m["emo"] not in MEAD_EMOTIONS:
            continue
        clips.setdefault(m["spk"], {})[MEAD_EMOTIONS[m["emo"]]] = p
    return {s: c for s, c in clips.items() if "neutral" in c and len(c) > 1}


def forehead_points(lm: np.ndarray) -> np.ndarray:
    """Points above the brows [10,2] (canonical frame, eyes level)."""
    return lm[17:27] - np.array([0.0, FOREHEAD_LIFT * IOD])


def _border() -> np.ndarray:
    t = np.linspace(0.0, CANON_SIZE - 1.0, 6)[:-1]
    e = CANON_SIZE - 1.0
    return np.concatenate([np.c_[t, 0 * t], np.c_[0 * t + e, t], np.c_[e - t, 0 * t + e],
                           np.c_[0 * t, e - t]])


def mesh_vertices(lm: np.ndarray, forehead: np.ndarray) -> np.ndarray:
    """68 landmarks + forehead points + the fixed frame border: the warp's vertices."""
    return np.vstack([lm, forehead, _border()]).astype(np.float64)


def measure_clip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(canonical landmarks [N,68,2], canonical luminance crops [N,256,256] float32) of the
    frames with a face."""
    from engines.recordings.preprocess import _frames_at, _track_landmarks

    frames = _frames_at(str(path), 25.0)
    lms = _track_landmarks(frames, window=False)
    out_lm, out_y = [], []
    for img, lm in zip(frames, lms, strict=True):
        if np.isnan(lm).any():
            continue
        m = similarity_to_canonical(lm)
        crop = cv2.warpAffine(img, m, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        out_lm.append(apply_affine(m, lm))
        out_y.append(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32))
    if not out_lm:
        raise ValueError(f"{path.name}: no face in any frame")
    return np.asarray(out_lm, np.float32), np.asarray(out_y, np.float32)


def neutral_still(path: Path) -> np.ndarray:
    """The neutral clip's most typical closed-mouth frame, RGB uint8: the frame nearest the
    clip's median eye-aligned landmarks, its lips' gap counted five times (the speakers
    talk). A face to render the fitted emotions on and read back (see
    :mod:`engines.render.emotion_calibration`)."""
    from engines.recordings.preprocess import _frames_at, _track_landmarks

    frames = _frames_at(str(path), 25.0)
    lms = _track_landmarks(frames, window=False)
    ok = [i for i in range(len(frames)) if not np.isnan(lms[i]).any()]
    if not ok:
        raise ValueError(f"{path.name}: no face in any frame")
    aligned = np.stack([apply_affine(similarity_to_canonical(lms[i]), lms[i]) for i in ok])
    med = np.median(aligned, axis=0)
    gap = (aligned[:, LOWER_INNER, 1].mean(axis=1) - aligned[:, UPPER_INNER, 1].mean(axis=1))
    score = np.linalg.norm(aligned - med, axis=-1).mean(axis=1) + 5.0 * np.abs(gap)
    return frames[ok[int(np.argmin(score))]]


#: Rough depth of each landmark in front of the eye corners' plane, in canonical pixels
#: (1 px ~ 1 mm at the canonical eye distance), from typical adult head proportions. Enough
#: to tell a nod from an expression: when the head pitches by a, a point's image height
#: shifts by about depth * sin(a), so the nose tip (30 mm out) moves most, the eye corners
#: not at all.
DEPTH = np.zeros(68, np.float32)
DEPTH[0:17] = [-30, -24, -17, -10, -3, 3, 8, 11, 12, 11, 8, 3, -3, -10, -17, -24, -30]
DEPTH[17:27] = [2, 6, 9, 10, 10, 10, 10, 9, 6, 2]
DEPTH[27:31] = [12, 17, 23, 30]
DEPTH[31:36] = [17, 21, 23, 21, 17]
DEPTH[36:48] = [0, 3, 3, 0, 2, 2, 0, 3, 3, 0, 2, 2]
DEPTH[48:60] = [8, 16, 20, 22, 20, 16, 8, 14, 17, 18, 17, 14]
DEPTH[60:68] = [9, 18, 20, 18, 9, 16, 17, 16]
_NOSE = np.array([29, 30])


def pose_free(lms: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Landmarks [N,68,2] (eye-aligned) with the head's nod and turn taken out against the
    same speaker's ``ref`` [68,2].

    Eye alignment removes roll, scale and position, but a nod moves the nose and mouth
    against the eyes, as much as an expression does (on MEAD the eye-to-nose-tip height
    varies by 16 px between one speaker's clips). The nose tip's offset from where it sits
    in ``ref`` gives the nod and turn angles; every point is moved back by its depth times
    that angle.
    """
    lms = np.asarray(lms, np.float32)
    eyes = lms[:, 36:48].mean(axis=1, keepdims=True)
    ref_eyes = ref[36:48].mean(axis=0)
    off = (lms[:, _NOSE] - eyes).mean(axis=1) - (ref[_NOSE] - ref_eyes).mean(axis=0)
    sin = off / DEPTH[_NOSE].mean()  # [N,2]: turn (x), nod (y)
    return lms - sin[:, None, :] * DEPTH[None, :, None]


#: Share of a clip's frames, those nearest the expression's apex, that make its field.
APEX_SHARE = 0.3
_UPPER = np.r_[17:48]
_LOWER = np.r_[0:17, 48:68]


def _apex(d: np.ndarray) -> np.ndarray:
    """Median displacement [K,2] over the frames reaching farthest along the clip's median
    displacement ``d`` [N,K,2]: the expression as held, not as it passes."""
    score = (d * np.median(d, axis=0)).sum(axis=(1, 2))
    return np.median(d[score >= np.quantile(score, 1.0 - APEX_SHARE)], axis=0)


def clip_field(lms: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """One clip's expression displacement [68,2] against the speaker's neutral ``neutral``.

    The upper face (brows, eyes, nose) and the lower face (lips, jaw) each at their own
    apex. The speakers talk while they pose, and the neutral clip talks too, so the
    difference keeps what the emotion adds to a speaking mouth (a smile's bared teeth, a
    surprised mouth's opening), and speech common to both cancels.
    """
    d = lms - neutral
    out = np.zeros((68, 2), np.float32)
    out[_UPPER] = _apex(d[:, _UPPER])
    out[_LOWER] = _apex(d[:, _LOWER])
    return out


#: Pooling never strengthens a measurement by more than this (a speaker's idiosyncrasy,
#: cancelled by the pooling, must not come back as strength).
MAX_POOL_GAIN = 2.0


#: Below this agreement (pooled size over the speakers' typical size) the speakers pose
#: the region in different directions, and the pooled map is left as weak as it is:
#: scaling it up would make a direction none of them shows.
MIN_AGREEMENT = 0.7


def _restore_gain(each: list[float], pooled: float, agreement: bool = True) -> float:
    """How much a pooled map shrank against its speakers' typical size, clipped to
    1..MAX_POOL_GAIN; with ``agreement``, 1 where the speakers disagree (MIN_AGREEMENT)."""
    gain = np.mean(each) / max(pooled, 1e-6)
    if agreement and gain > 1.0 / MIN_AGREEMENT:
        return 1.0
    return float(np.clip(gain, 1.0, MAX_POOL_GAIN))


def pooled_field(per_speaker: np.ndarray) -> np.ndarray:
    """One emotion's field [68,2] from the speakers' fields [S,68,2]: their mean, which
    keeps the displacement they share, scaled per region (upper face, lower face) back to
    the speakers' typical size; speakers who pose the same emotion a little differently
    (brows in or out, mouth wider or taller) average to a weaker expression than any of
    them shows."""
    mean = per_speaker.mean(axis=0)
    out = mean.copy()
    for region in (_UPPER, _LOWER):
        g = _restore_gain([np.linalg.norm(f[region]) for f in per_speaker],
                          np.linalg.norm(mean[region]))
        out[region] = mean[region] * g
    return out


def _to_template(bary: sparse.csr_matrix, src_vertices: np.ndarray,
                 images: np.ndarray) -> np.ndarray:
    """Warp images [N,256,256] whose face has ``src_vertices`` [N,V,2] onto the template
    (whose barycentric matrix is ``bary``)."""
    out = np.empty_like(images)
    for i, (v, img) in enumerate(zip(src_vertices, images, strict=True)):
        src = (bary @ v.astype(np.float32)).reshape(CANON_SIZE, CANON_SIZE, 2)
        out[i] = cv2.remap(img, src, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def _vertices(lms: np.ndarray, ref: np.ndarray, fore: np.ndarray) -> np.ndarray:
    """Mesh vertices [N,V,2] of frames; the forehead follows the head (shifted as the
    head's own pose shifts the brows)."""
    posed = lms - pose_free(lms, ref)
    return np.stack([mesh_vertices(x, fore + p[17:27]) for x, p in zip(lms, posed, strict=True)])


def forehead_weight(template: np.ndarray) -> np.ndarray:
    """Weight [256,256] that is 1 on the forehead (from 10 px above the brows up), 0 from
    4 px above them down, in the template frame."""
    brows = template[17:27]
    xs = np.arange(CANON_SIZE, dtype=np.float32)
    order = np.argsort(brows[:, 0])
    top = np.interp(xs, brows[order, 0], brows[order, 1])  # brow line per column
    ys = np.arange(CANON_SIZE, dtype=np.float32)[:, None]
    return np.clip((top[None, :] - 4.0 - ys) / 6.0, 0.0, 1.0).astype(np.float32)


def forehead_lines(log_ratio: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``log_ratio`` with its forehead (``weight``) smoothed along horizontal lines."""
    along = cv2.GaussianBlur(log_ratio, (0, 0), sigmaX=FOREHEAD_LINE_SIGMA[1],
                             sigmaY=FOREHEAD_LINE_SIGMA[0])
    return log_ratio * (1.0 - weight) + along * weight


#: The band along each brow left out of the ratio images: its middle's offset below the
#: brow's landmarks and its thickness (px on the 256 frame, where the eyes are 64 apart):
#: the brow's hair and how far it moves.
BROW_BAND_PX = (5, 18)


def _face_masks(template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face weight, weight of what is not skin: the mouth's interior, the eyeballs, the
    brows' hair) on the 256 template frame, soft-edged."""
    face = np.zeros((CANON_SIZE, CANON_SIZE), np.float32)
    hull = cv2.convexHull(np.vstack([template[JAW], template[68:78]]).astype(np.float32))
    cv2.fillConvexPoly(face, np.round(hull).astype(np.int32), 1.0)
    face = cv2.erode(face, np.ones((7, 7), np.uint8))
    face = cv2.GaussianBlur(face, (0, 0), 4.0)
    mouth = np.zeros_like(face)
    for ring in (INNER_LIP_RING, EYE_R, EYE_L):  # teeth and eyeballs are not skin
        cv2.fillPoly(mouth, [np.round(template[ring]).astype(np.int32)], 1.0)
    mouth = cv2.dilate(mouth, np.ones((5, 5), np.uint8))
    # Nor is the brows' hair: where a brow moved between the emotion and neutral, the ratio
    # holds its edge (dark where it arrived, light where it left), not the skin's shading,
    # and on another face that edge paints pale smudges over the forehead.
    for brow in (BROW_R, BROW_L):  # (dlib's brow points run along the hair's upper edge)
        line = template[brow] + np.array([0.0, BROW_BAND_PX[0]])
        cv2.polylines(mouth, [np.round(line).astype(np.int32)], False, 1.0, BROW_BAND_PX[1])
    mouth = cv2.GaussianBlur(mouth, (0, 0), 1.5)
    return face, mouth


def fit(data_dir: str | Path, hold_out: str | None = None,
        measured: dict | None = None) -> dict[str, np.ndarray]:
    """Fit fields and ratio images from the MEAD clips under ``data_dir``.

    ``measured`` (optional, filled in) caches :func:`measure_clip` results by path, so a
    leave-one-speaker-out loop measures each clip once.
    """
    clips = find_mead_clips(data_dir)
    speakers = sorted(s for s in clips if s != hold_out)
    if not speakers:
        raise ValueError(f"no MEAD front clips with a neutral clip under {data_dir}")
    measured = {} if measured is None else measured

    def get(p: Path):
        if p not in measured:
            log.info("measuring %s", p.name)
            measured[p] = measure_clip(p)
        return measured[p]

    neutrals = {}
    for s in speakers:
        lm_n = get(clips[s]["neutral"])[0]
        ref = np.median(lm_n, axis=0)
        for _ in range(2):  # the neutral clip's own pose varies too
            ref = np.median(pose_free(lm_n, ref), axis=0)
        neutrals[s] = ref
    template_lm = np.mean([neutrals[s] for s in speakers], axis=0)
    template = np.vstack([template_lm, forehead_points(template_lm)])
    bary = barycentric_matrix(mesh_vertices(template_lm, template[68:]), CANON_SIZE, CANON_SIZE)
    face_w, mouth_w = _face_masks(template)
    fore_w = forehead_weight(template)

    per_speaker: dict[int, list[np.ndarray]] = {}
    log_ratios: dict[int, list[np.ndarray]] = {}
    counts = np.zeros(len(EMOTIONS), np.int32)
    frames = {}
    for s in speakers:
        fore = forehead_points(neutrals[s])

        lm_n, y_n = get(clips[s]["neutral"])
        base = np.median(_to_template(bary, _vertices(lm_n, neutrals[s], fore), y_n), axis=0) + 4.0
        for emo, path in clips[s].items():
            if emo == "neutral":
                continue
            k = EMOTIONS.index(emo)
            lm_e, y_e = get(path)
            per_speaker.setdefault(k, []).append(clip_field(pose_free(lm_e, neutrals[s]),
                                                            neutrals[s]))
            warped = np.median(_to_template(bary, _vertices(lm_e, neutrals[s], fore), y_e),
                               axis=0) + 4.0
            lr = np.log(warped / base)
            # Only the skin's own creases and bulges: the broad light is divided out
            # (a blur weighted to the face, so the background does not leak in).
            broad = cv2.GaussianBlur(lr * face_w, (0, 0), RATIO_BROAD_PX) / np.maximum(
                cv2.GaussianBlur(face_w, (0, 0), RATIO_BROAD_PX), 1e-3)
            lr = lr - broad
            if emo in FOREHEAD_LINE_EMOTIONS:
                lr = forehead_lines(lr, fore_w)
            log_ratios.setdefault(k, []).append(lr)
            counts[k] += 1
            frames[f"{s}/{emo}"] = len(lm_e)
    have = counts > 0
    fields = np.zeros((len(EMOTIONS), 68, 2), np.float32)
    for k in np.flatnonzero(have):
        fields[k] = pooled_field(np.stack(per_speaker[k]))
    ratio = np.ones((len(EMOTIONS), RATIO_SIZE, RATIO_SIZE), np.float32)
    keep = face_w * (1.0 - mouth_w)
    texture_gain = np.ones(len(EMOTIONS), np.float32)
    for k in np.flatnonzero(have):
        # The median over speakers: one speaker's hair or glint does not make a wrinkle.
        # It also shrinks what they share wherever their creases sit a little apart, so
        # it is scaled back to a typical speaker's strength (on the skin, after blurring).
        each = [cv2.GaussianBlur(x, (0, 0), RATIO_BLUR_PX) for x in log_ratios[k]]
        lr = cv2.GaussianBlur(np.median(np.stack(log_ratios[k]), axis=0), (0, 0), RATIO_BLUR_PX)
        # (No agreement test here: a speaker's own creases and glints make every single
        # map larger, not differently directed.)
        texture_gain[k] = _restore_gain([np.linalg.norm(x * keep) for x in each],
                                        np.linalg.norm(lr * keep), agreement=False)
        r = np.exp(lr * texture_gain[k])
        r = 1.0 + (np.clip(r, *RATIO_RANGE) - 1.0) * keep
        ratio[k] = cv2.resize(r, (RATIO_SIZE, RATIO_SIZE), interpolation=cv2.INTER_AREA)
    missing = [EMOTIONS[k] for k in range(1, len(EMOTIONS)) if not have[k]]
    if missing:
        log.warning("no clips for %s: those emotions keep no field", ", ".join(missing))
    return {
        "fields": fields,
        "ratio": ratio.astype(np.float16),
        "template": template.astype(np.float32),
        "texture_gain": texture_gain,
        "speakers": np.array(speakers),
        "frames": np.array(json.dumps(frames)),
        "source": np.array("MEAD (Wang et al., ECCV 2020), front view, neutral level 1 and "
                           "emotions level 3, via ali-vilab/dreamtalk's examples; research "
                           "use only (MEAD's terms)"),
    }


def save(model: dict[str, np.ndarray], path: str | Path) -> str:
    """Write the fitted model as an ``.npz`` with fixed zip timestamps (the same fit gives
    the same bytes) and return its SHA-256."""
    import io
    import zipfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(model):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(model[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    return hashlib.sha256(path.read_bytes()).hexdigest()
