"""Measurements of faces in video frames, shared by the tests and the benchmarks.

Landmarks are re-detected on the frames themselves (dlib), so these numbers describe what a
viewer sees, whatever engine or transport produced the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from etf_models.canonical_face import mouth_opening


def frame_landmarks(
    frames: Sequence[np.ndarray], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """68 landmarks per RGB frame [N,68,2] (NaN where no face is found).

    With ``box`` (x0, y0, x1, y1) the detector is skipped (fast: ~1 ms a frame); use it when
    the face is known to stay in place, as in a stream of one enrolled photo.
    """
    from engines.face.enrollment import detect_faces, detect_landmarks

    out = np.full((len(frames), 68, 2), np.nan, np.float32)
    for i, f in enumerate(frames):
        if box is None:
            faces = detect_faces(f)
            if not faces:
                continue
            b = faces[0][0]
        else:
            b = box
        out[i] = detect_landmarks(f, b)
    return out


def face_box(landmarks_photo: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int]:
    """A detector-like box around photo landmarks [68,2], enlarged by ``margin``."""
    x0, y0 = landmarks_photo.min(axis=0)
    x1, y1 = landmarks_photo.max(axis=0)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return int(x0 - mx), int(y0 - my), int(x1 + mx), int(y1 + my)


def mouth_openings(frames: Sequence[np.ndarray], box=None) -> np.ndarray:
    """Mouth opening (inner-lip gap / outer-eye-corner distance) per frame, NaN if no face."""
    return mouth_opening(frame_landmarks(frames, box))


def brow_raise(landmarks: np.ndarray) -> np.ndarray:
    """Brow height above the eyes / outer-eye-corner distance, for [...,68,2] landmarks."""
    brows = landmarks[..., 17:27, 1].mean(axis=-1)
    eyes = landmarks[..., 36:48, 1].mean(axis=-1)
    width = np.linalg.norm(landmarks[..., 45, :] - landmarks[..., 36, :], axis=-1)
    return (eyes - brows) / width


def best_lag_corr(x: np.ndarray, y: np.ndarray, max_lag: int = 3) -> tuple[float, int]:
    """Max Pearson correlation of x[t] with y[t + lag] over |lag| <= max_lag."""
    best = (-2.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(0, -lag) : len(x) - max(0, lag)]
        b = y[max(0, lag) : len(y) - max(0, -lag)]
        n = min(len(a), len(b))
        ok = np.isfinite(a[:n]) & np.isfinite(b[:n])
        if ok.sum() > 10:
            c = float(np.corrcoef(a[:n][ok], b[:n][ok])[0, 1])
            best = max(best, (c, lag))
    return best


def loudness_envelope(audio: np.ndarray, n_frames: int, fps: float, sr: int = 16000) -> np.ndarray:
    """RMS of the audio under each video frame [n_frames]."""
    hop = sr / fps
    env = np.zeros(n_frames)
    for i in range(n_frames):
        seg = audio[int(i * hop) : int((i + 1) * hop)]
        env[i] = np.sqrt(np.mean(seg**2)) if len(seg) else 0.0
    return env
