"""The seven emotions, in the order every emotion vector uses.

One order for the networks' [B,7] emotion inputs (G_L, G_T), the engines' emotion state
and motion fields, the training shards and the control channel: index 0 is neutral.
"""

from __future__ import annotations

import numpy as np

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "angry", "sad", "surprise", "fear", "disgust")


def emotion_one_hot(name: str) -> np.ndarray:
    """One-hot [7] for an emotion name; ValueError naming the valid choices otherwise."""
    if name not in EMOTIONS:
        raise ValueError(f"unknown emotion {name!r}; choose one of {', '.join(EMOTIONS)}")
    v = np.zeros(len(EMOTIONS), dtype=np.float32)
    v[EMOTIONS.index(name)] = 1.0
    return v
