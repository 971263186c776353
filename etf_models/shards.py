"""The training-shard format: what ``etf preprocess`` writes and the trainers read.

``engines/recordings/preprocess.py`` writes, for each clip, ``<out>/shards/<clip_id>.npz``
(no pickles) holding, at the target fps:

- ``landmarks`` [T,68,2]: dlib's 68 points aligned to the canonical 256 frame (the
  enrollment's eye-centred similarity), NaN rows where no face was found;
- ``affine`` [T,2,3]: photo -> canonical map of each frame;
- ``windows`` [T,6,29]: the paper's speech windows from the clip's audio;
- ``jpeg`` / ``jpeg_offsets``: the 256x256 canonical face crops, JPEG-encoded;
- ``emotion`` (index into ``etf_models.emotions.EMOTIONS``), ``intensity``, ``speaker``,
  ``fps``, ``clip_id``;

and ``<out>/speakers.npz``: each speaker's neutral landmarks [68,2]. This module reads
them; it needs NumPy (and OpenCV for the crops), never the engines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def decode_crops(shard, idx: np.ndarray | None = None) -> np.ndarray:
    """RGB crops [K,256,256,3] of a loaded shard (all frames, or ``idx``)."""
    import cv2

    off = shard["jpeg_offsets"]
    jpeg = shard["jpeg"]
    idx = np.arange(len(off) - 1) if idx is None else idx
    return np.stack([cv2.cvtColor(cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_COLOR),
                                  cv2.COLOR_BGR2RGB) for i in idx])


def load_landmark_frames(out_dir: str | os.PathLike):
    """All preprocessed frames with a face, as ``LandmarkFrames`` for G_L training."""
    from etf_models.landmark_train import LandmarkFrames

    out = Path(out_dir)
    with np.load(out / "speakers.npz") as z:
        neutrals = {k: z[k] for k in z.files}
    parts = []
    for path in sorted((out / "shards").glob("*.npz")):
        with np.load(path) as z:
            lm, win = z["landmarks"], z["windows"]
            emo, inten, spk = int(z["emotion"]), float(z["intensity"]), str(z["speaker"])
        ok = np.isfinite(lm).all(axis=(1, 2))
        n = int(ok.sum())
        if n == 0 or spk not in neutrals:
            continue
        emotion = np.zeros((n, 7), np.float32)
        emotion[:, emo] = 1.0
        parts.append(LandmarkFrames(win[ok], emotion, np.full(n, inten, np.float32),
                                    np.repeat(neutrals[spk][None], n, 0), lm[ok]))
    if not parts:
        raise ValueError(f"{out}: no preprocessed frames (run etf preprocess first)")
    return LandmarkFrames.concat(parts)

