"""``etf preprocess``: dataset clips -> per-frame training shards for G_L and G_T.

For every clip a reader (``etf_models/datasets.py``) found, one shard
``<out>/shards/<clip_id>.npz`` in the format ``etf_models/shards.py`` describes and reads:
dlib's 68 points tracked through the clip and aligned to the canonical frame, the per-frame
transforms, the speech windows, the canonical crops (JPEG, q 92) and the clip's labels.

``<out>/speakers.npz`` holds each speaker's neutral landmarks: the median aligned face of
their neutral clips (all clips if none), with the mouth closed and any smile removed by the
enrollment's ``neutralise``. ``<out>/preprocess.json`` logs what was done and skipped.

Resumable: clips with a shard are not redone. Parallel over clips (``workers``). A clip
that cannot be read (corrupt file, no face, no audio) is skipped with a count and one log
line; it never stops the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from etf_models.datasets import ClipRecord

log = logging.getLogger("etf.preprocess")

CROP = 256
JPEG_QUALITY = 92
MIN_FACE_FRACTION = 0.5  # a clip needs a face in at least half of its frames


class ClipError(RuntimeError):
    """This clip cannot be used (the reason is the message)."""


def _frames_at(path: str, fps: float) -> list[np.ndarray]:
    """RGB frames resampled to ``fps`` (nearest earlier frame by timestamp)."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise ClipError("no video stream")
            frames = []
            for f in c.decode(video=0):
                t = float(f.time) if f.time is not None else len(frames) / fps
                frames.append((t, f.to_ndarray(format="rgb24")))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ClipError(f"unreadable video ({type(e).__name__}: {e})") from None
    if not frames:
        raise ClipError("no decodable frames")
    t0 = frames[0][0]
    times = np.array([t - t0 for t, _ in frames])
    n_out = int(np.floor(times[-1] * fps + 1e-6)) + 1
    pick = np.searchsorted(times, np.arange(n_out) / fps + 1e-6, side="right") - 1
    return [frames[max(0, int(i))][1] for i in pick]


def _track_landmarks(frames: list[np.ndarray], window: bool = True) -> np.ndarray:
    """68 points per frame, the detector run on every frame.

    dlib's shape model is fitted to its own detector's boxes: a box made from the previous
    frame's landmarks is larger than those, and the points drift down the face frame by
    frame (on MEAD clips the mouth ended on the chin). So the detector's box is used,
    and the last one is kept only for frames where it finds no face. After the first
    detection the detector looks in a window around the last box, scaled so the face is
    about 160 px (a 1080x1920 frame costs what a 256x256 one does); the whole frame is
    searched again whenever the window finds nothing. Without ``window`` the whole frame
    is searched every time: the box, and so the points, then do not depend on the
    window's rescaling (a few pixels on MEAD's mouths), as the emotion fit was measured.
    """
    from engines.face.enrollment import detect_face_near, detect_faces, detect_landmarks

    out = np.full((len(frames), 68, 2), np.nan, np.float32)
    box = None
    for i, img in enumerate(frames):
        found = detect_face_near(img, box) if window and box is not None else None
        if found is None:
            faces = detect_faces(img)
            if faces:
                found = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))[0]
        if found is not None:
            box = found
        if box is None:
            continue
        out[i] = detect_landmarks(img, box)
    return out


def process_clip(rec: ClipRecord, fps: float, frontend) -> dict:
    """Everything one shard holds, or ClipError."""
    import cv2

    from engines.audio.speech_frontend import audio_to_windows
    from engines.media.audio_io import AudioError, load_audio
    from etf_models.canonical_face import apply_affine, similarity_to_canonical
    from etf_models.emotions import EMOTIONS

    frames = _frames_at(rec.video, fps)
    photo = _track_landmarks(frames)
    found = np.isfinite(photo).all(axis=(1, 2))
    if found.mean() < MIN_FACE_FRACTION:
        raise ClipError(f"a face in only {found.sum()} of {len(frames)} frames")
    try:
        audio = load_audio(rec.audio, 16000)
    except (AudioError, OSError) as e:
        raise ClipError(f"unreadable audio: {e}") from None
    windows = audio_to_windows(frontend, audio, fps)
    n = min(len(frames), len(windows))
    if n < 2:
        raise ClipError("shorter than two frames")
    landmarks = np.full((n, 68, 2), np.nan, np.float32)
    affine = np.zeros((n, 2, 3), np.float32)
    blobs: list[bytes] = []
    blank = cv2.imencode(".jpg", np.zeros((CROP, CROP, 3), np.uint8))[1].tobytes()
    for i in range(n):
        if not found[i]:
            blobs.append(blank)
            continue
        m = similarity_to_canonical(photo[i])
        affine[i] = m
        landmarks[i] = apply_affine(m, photo[i])
        crop = cv2.warpAffine(frames[i], m, (CROP, CROP), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REPLICATE)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        blobs.append(buf.tobytes() if ok else blank)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return {"landmarks": landmarks, "affine": affine, "windows": windows[:n].astype(np.float32),
            "jpeg": np.frombuffer(b"".join(blobs), np.uint8), "jpeg_offsets": offsets,
            "emotion": np.int64(EMOTIONS.index(rec.emotion)),
            "intensity": np.float32(rec.intensity), "speaker": np.str_(rec.speaker),
            "fps": np.float32(fps), "clip_id": np.str_(rec.clip_id)}


_W: dict = {}


def _worker_init(fps: float, speech_weights: str | None) -> None:
    import torch

    from engines.audio.speech_frontend import DeepSpeechFrontend

    torch.set_num_threads(1)
    _W["fps"] = fps
    _W["frontend"] = (DeepSpeechFrontend.from_checkpoint(speech_weights) if speech_weights
                      else DeepSpeechFrontend.default())


def _worker(job: tuple[ClipRecord, str]) -> tuple[str, str | None]:
    rec, path = job
    try:
        data = process_clip(rec, _W["fps"], _W["frontend"])
    except ClipError as e:
        return rec.clip_id, str(e)
    except Exception as e:  # noqa: BLE001 - one bad clip must never stop the whole run
        return rec.clip_id, f"unexpected {type(e).__name__}: {e}"
    tmp = path + ".part.npz"
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return rec.clip_id, None


def speaker_neutrals(shard_dir: Path) -> dict[str, np.ndarray]:
    """Each speaker's neutral landmarks [68,2] from their shards (see module docstring)."""
    from engines.face.enrollment import neutralise

    per: dict[str, list[np.ndarray]] = {}
    neutral_only: dict[str, list[np.ndarray]] = {}
    for path in sorted(shard_dir.glob("*.npz")):
        with np.load(path) as z:
            lm, spk, emo = z["landmarks"], str(z["speaker"]), int(z["emotion"])
        lm = lm[np.isfinite(lm).all(axis=(1, 2))]
        per.setdefault(spk, []).append(lm)
        if emo == 0:
            neutral_only.setdefault(spk, []).append(lm)
    out = {}
    for spk, parts in per.items():
        pool = np.concatenate(neutral_only.get(spk, parts))
        out[spk] = neutralise(np.median(pool, axis=0).astype(np.float32))[0].astype(np.float32)
    return out


def preprocess(records: list[ClipRecord], out_dir: str | os.PathLike, fps: float = 25.0,
               workers: int = 1, speech_weights: str | None = None,
               progress: Callable[[], None] | None = None) -> dict:
    """Write shards for ``records`` into ``out_dir`` (see module docstring); returns the
    summary also written to ``preprocess.json``."""
    import multiprocessing as mp

    if fps not in (25.0, 30.0):
        raise ValueError(f"fps must be 25 or 30, got {fps:g}")
    out = Path(out_dir)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs, done = [], 0
    for rec in records:
        path = shard_dir / f"{rec.clip_id}.npz"
        if path.exists():
            done += 1
            if progress:
                progress()
        else:
            jobs.append((rec, str(path)))
    skipped: Counter = Counter()
    made = 0
    if jobs:
        ctx = mp.get_context("spawn" if workers > 1 else "fork")
        if workers > 1:
            with ctx.Pool(workers, _worker_init, (fps, speech_weights)) as pool:
                results = pool.imap_unordered(_worker, jobs)
                for clip_id, err in results:
                    made, skipped = _account(clip_id, err, made, skipped, progress)
        else:
            _worker_init(fps, speech_weights)
            for job in jobs:
                made, skipped = _account(*_worker(job), made, skipped, progress)
    neutrals = speaker_neutrals(shard_dir)
    np.savez(out / "speakers.npz", **neutrals)
    summary = {"clips": len(records), "written": made, "already_done": done,
               "skipped": sum(skipped.values()), "skip_reasons": dict(skipped),
               "speakers": sorted(neutrals), "fps": fps,
               "speech_model": speech_weights or "shipped default"}
    (out / "preprocess.json").write_text(json.dumps(summary, indent=1))
    return summary


def _account(clip_id: str, err: str | None, made: int, skipped: Counter,
             progress) -> tuple[int, Counter]:
    if err is None:
        made += 1
    else:
        reason = err.split(" (")[0]
        skipped[reason] += 1
        log.warning("skipped %s: %s", clip_id, err)
    if progress:
        progress()
    return made, skipped
