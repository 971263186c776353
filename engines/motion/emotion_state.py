"""A session's emotion: target emotion and intensity with smooth transitions.

Switching emotion never jumps: the emotion (and so the displayed AU parameters) blends
from where it is to the new target over ``transition_s`` (default 0.25 s), measured on the
caller's clock (video time for rendering, so results are reproducible).
"""

from __future__ import annotations

import threading

import numpy as np

from engines.motion.face_motion import EMOTION_MATRIX
from etf_models.emotions import EMOTIONS, emotion_one_hot

INTENSITY_ALIASES = {"low": 0.5, "high": 1.0}
DEFAULT_TRANSITION_S = 0.25


def parse_intensity(value: str | float) -> float:
    """Intensity from a number in 0..1 or an alias (low = 0.5, high = 1.0)."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in INTENSITY_ALIASES:
            return INTENSITY_ALIASES[key]
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"intensity {value!r} is not a number in 0..1 or one of "
                f"{', '.join(INTENSITY_ALIASES)}"
            ) from None
    value = float(value)
    if not 0.0 <= value <= 1.0 or value != value:
        raise ValueError(f"intensity {value} is outside 0..1")
    return value


class EmotionState:
    """Current emotion of one session, sampled per frame with :meth:`params_at` (the AU
    parameters of the default engines) or :meth:`vector_at` (the networks' emotion input).

    The state is the blended emotion vector; AU parameters are linear in it (neutral has
    none), so both views move together through a transition."""

    def __init__(self, emotion: str = "neutral", intensity: float = 1.0) -> None:
        self.emotion = emotion
        self.intensity = parse_intensity(intensity)
        vec = emotion_vector(emotion, self.intensity)
        self._from = vec
        self._to = vec
        self._t0 = 0.0
        self._dur = 0.0
        self._last_t = 0.0
        # set() runs on the control channel's thread, params_at() on the render thread.
        self._lock = threading.Lock()

    def set(
        self,
        emotion: str | None = None,
        intensity: float | str | None = None,
        at: float | None = None,
        transition_s: float = DEFAULT_TRANSITION_S,
    ) -> None:
        """Aim at a new emotion and/or intensity, starting at time ``at`` (default: now)."""
        if emotion is not None and emotion not in EMOTIONS:
            emotion_one_hot(emotion)  # raises with the list of valid names
        if not 0.0 <= transition_s <= 10.0:
            raise ValueError(f"transition {transition_s} s is outside 0..10 s")
        new_intensity = self.intensity if intensity is None else parse_intensity(intensity)
        new_emotion = self.emotion if emotion is None else emotion
        target = emotion_vector(new_emotion, new_intensity)
        t = self._last_t if at is None else at
        with self._lock:
            self._from = self._vector_at(t)
            self.emotion, self.intensity = new_emotion, new_intensity
            self._to = target
            self._t0, self._dur = t, transition_s

    def params_at(self, t: float) -> np.ndarray:
        """AU parameters [N_PARAMS] at time ``t`` (seconds, caller's clock)."""
        return self.vector_at(t) @ EMOTION_MATRIX

    def vector_at(self, t: float) -> np.ndarray:
        """The blended emotion vector [7] at time ``t``:
        ``intensity * one_hot + (1 - intensity) * neutral``, smoothly between targets."""
        with self._lock:
            return self._vector_at(t)

    def _vector_at(self, t: float) -> np.ndarray:
        self._last_t = max(self._last_t, t)
        if self._dur <= 0 or t >= self._t0 + self._dur:
            return self._to
        a = max(0.0, (t - self._t0) / self._dur)
        a = a * a * (3 - 2 * a)  # smoothstep: no velocity jump at either end
        return self._from + a * (self._to - self._from)


def emotion_vector(emotion: str, intensity: float) -> np.ndarray:
    """[7]: ``intensity`` of ``emotion``, the rest neutral (what G_L and G_T take)."""
    v = emotion_one_hot(emotion) * np.float32(intensity)
    v[0] += np.float32(1.0 - intensity)
    return v
