"""What a face does on its own: spontaneous blinks and slow idle head motion.

Both runtimes (the default renderer and the paper's networks) add these to the landmarks
they make from speech, so a silent face still lives.
"""

from __future__ import annotations

import math

import numpy as np

from etf_models.canonical_face import IOD


class Blinker:
    """Spontaneous blinks: gaps of 2-6 s, each blink 150-250 ms (fast close, slower open)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.start = float(rng.uniform(0.8, 3.0))
        self.dur = float(rng.uniform(0.15, 0.25))

    def at(self, t: float) -> float:
        while t > self.start + self.dur:
            self.start += self.dur + float(self.rng.uniform(2.0, 6.0))
            self.dur = float(self.rng.uniform(0.15, 0.25))
        x = (t - self.start) / self.dur
        if x < 0.0:
            return 0.0
        y = x / 0.35 if x < 0.35 else 1.0 - (x - 0.35) / 0.65
        return float(y * y * (3 - 2 * y))


class IdleMotion:
    """Small, slow head motion (roll, sway, nod, lean) from sums of incommensurate sines."""

    def __init__(self, rng: np.random.Generator, amplitude: float = 1.0) -> None:
        self.freq = rng.uniform(0.08, 0.3, size=(4, 2))
        self.phase = rng.uniform(0, 2 * math.pi, size=(4, 2))
        self.amp = amplitude

    def at(self, t: float, speech_level: float) -> tuple[float, float, float, float]:
        s = np.sin(2 * math.pi * self.freq * t + self.phase).mean(axis=1)
        roll = 0.012 * s[0] * self.amp
        dx = 0.015 * IOD * s[1] * self.amp
        dy = (0.012 * s[2] + 0.012 * speech_level) * IOD * self.amp  # a slight nod on stress
        zoom = 1.0 + 0.006 * s[3] * self.amp
        return roll, dx, dy, zoom
