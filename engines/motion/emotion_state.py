"""A session's emotion: target emotion (or a mix of emotions) and intensity, with smooth
transitions.

Switching emotion never jumps: the emotion vector (and so the face's offsets and skin)
blends from where it is to the new target over ``transition_s`` (default 0.25 s), measured
on the caller's clock (video time for rendering, so results are reproducible).

A mix is weights over the seven emotions, e.g. ``{"happy": 0.6, "surprise": 0.3}``: the
face shows the blend of their geometry and skin; whatever the weights leave (here 0.1) is
neutral. Weights are numbers in 0..1 summing to at most 1; the intensity scales the mix.
"""

from __future__ import annotations

import threading

import numpy as np

from engines.motion.face_motion import EMOTION_MATRIX
from etf_models.emotions import EMOTIONS, emotion_one_hot

INTENSITY_ALIASES = {"low": 0.5, "high": 1.0}
#: Weights may overshoot 1 by this much (decimal fractions such as 0.7 + 0.3).
MIX_TOLERANCE = 1e-6
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


def parse_mix(mix: object) -> dict[str, float]:
    """A validated mix {emotion: weight}; ValueError naming what is wrong otherwise.

    Accepts a mapping, or text ``"happy:0.6,surprise:0.3"`` (the CLI's form)."""
    if isinstance(mix, str):
        items: dict[str, object] = {}
        for part in (p.strip() for p in mix.split(",") if p.strip()):
            name, sep, weight = part.partition(":")
            if not sep:
                raise ValueError(f"mix part {part!r} is not emotion:weight")
            try:
                items[name.strip()] = float(weight)
            except ValueError:
                raise ValueError(f"mix weight {weight!r} for {name.strip()} is not a number") \
                    from None
        mix = items
    if not isinstance(mix, dict) or not mix:
        raise ValueError("a mix needs at least one emotion: weight pair")
    out: dict[str, float] = {}
    for name, weight in mix.items():
        if name not in EMOTIONS:
            raise ValueError(f"unknown emotion {name!r} in the mix; choose from "
                             f"{', '.join(EMOTIONS)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or \
                not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"mix weight for {name} must be a number in 0..1, "
                             f"not {weight!r}")
        out[name] = float(weight)
    total = sum(out.values())
    if total > 1.0 + MIX_TOLERANCE:
        raise ValueError(f"mix weights sum to {total:g}, more than 1")
    return out


def mix_vector(mix: dict[str, float], intensity: float = 1.0) -> np.ndarray:
    """[7]: the mix scaled by ``intensity``, the rest neutral."""
    v = np.zeros(len(EMOTIONS), np.float32)
    for name, weight in mix.items():
        v[EMOTIONS.index(name)] += np.float32(weight * intensity)
    v[0] += np.float32(max(0.0, 1.0 - float(v[1:].sum()) - float(v[0])))
    return v


def dominant(mix: dict[str, float]) -> str:
    """The emotion with the largest weight (neutral when all are zero)."""
    name = max(mix, key=mix.get)
    return name if mix[name] > 0 else "neutral"


class EmotionState:
    """Current emotion of one session, sampled per frame with :meth:`vector_at` (the blend
    vector the default engines and the networks take) or :meth:`params_at` (the same blend
    as hand-made FACS parameters, linear in it: neutral has none).

    The state is the blended emotion vector, so every view moves together through a
    transition."""

    def __init__(self, emotion: str = "neutral", intensity: float = 1.0,
                 mix: dict[str, float] | str | None = None) -> None:
        self.intensity = parse_intensity(intensity)
        #: The current mix ({emotion: weight}) when one was set, else None.
        self.mix = None if mix is None else parse_mix(mix)
        if self.mix is not None:
            emotion = dominant(self.mix)
            vec = mix_vector(self.mix, self.intensity)
        else:
            vec = emotion_vector(emotion, self.intensity)
        self.emotion = emotion
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
        mix: dict[str, float] | str | None = None,
    ) -> None:
        """Aim at a new emotion (or ``mix``) and/or intensity, starting at time ``at``
        (default: now). An emotion and a mix together are refused."""
        if emotion is not None and mix is not None:
            raise ValueError("give an emotion or a mix, not both")
        if emotion is not None and emotion not in EMOTIONS:
            emotion_one_hot(emotion)  # raises with the list of valid names
        new_mix = parse_mix(mix) if mix is not None else (None if emotion else self.mix)
        if not 0.0 <= transition_s <= 10.0:
            raise ValueError(f"transition {transition_s} s is outside 0..10 s")
        new_intensity = self.intensity if intensity is None else parse_intensity(intensity)
        if new_mix is not None:
            new_emotion = dominant(new_mix)
            target = mix_vector(new_mix, new_intensity)
        else:
            new_emotion = self.emotion if emotion is None else emotion
            target = emotion_vector(new_emotion, new_intensity)
        t = self._last_t if at is None else at
        with self._lock:
            self._from = self._vector_at(t)
            self.emotion, self.intensity, self.mix = new_emotion, new_intensity, new_mix
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
