"""What a face does on its own: spontaneous blinks and slow idle head motion.

Both runtimes (the default renderer and the paper's networks) add these to the landmarks
they make from speech, so a silent face still lives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from etf_models.canonical_face import IOD


class Blinker:
    """Spontaneous blinks as real talking people blink (``benchmarks/blinks_real.py``, 141
    blinks in 6.3 minutes of 28 real talking clips: 22 a minute, irregular, each ~0.2 s):
    the time from one blink's start to the next's and each blink's length drawn from
    log-normal fits to them; fast close, slower open. (Hand-set before: every 2-6 s, 15 a
    minute, 0.15-0.25 s.)"""

    #: mean and standard deviation of log(seconds) from one blink's start to the next's:
    #: the real intervals' spread, the mean that gives the real rate
    GAP_LOG = (0.74, 0.699)
    #: ... and of a blink's length, lids down and back (the real lengths' fit, lengthened
    #: by the lids' first and last moments, which the measure does not see)
    DURATION_LOG = (-1.296, 0.572)
    #: A blink lasts within these (s; longer real closures are looks down, not blinks);
    #: the eyes stay open at least REOPEN between two.
    DURATION_S = (0.1, 0.45)
    REOPEN = 0.15
    #: The first blink comes within this (s), so a short clip still blinks.
    FIRST_S = (0.8, 3.0)

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.start = float(rng.uniform(*self.FIRST_S))
        self.dur = self._duration()

    def _duration(self) -> float:
        return float(np.clip(self.rng.lognormal(*self.DURATION_LOG), *self.DURATION_S))

    def at(self, t: float) -> float:
        while t > self.start + self.dur:
            gap = float(self.rng.lognormal(*self.GAP_LOG))
            self.start += max(gap, self.dur + self.REOPEN)
            self.dur = self._duration()
        x = (t - self.start) / self.dur
        if x < 0.0:
            return 0.0
        y = x / 0.35 if x < 0.35 else 1.0 - (x - 0.35) / 0.65
        return float(y * y * (3 - 2 * y))


class HeadPose(NamedTuple):
    """A head pose: rotations in radians (yaw turns toward image right, pitch tips the
    chin down, roll tilts clockwise), shift in canonical pixels, zoom as a factor."""

    yaw: float
    pitch: float
    roll: float
    dx: float
    dy: float
    zoom: float


class IdleMotion:
    """Small, slow head motion from sums of incommensurate sines: a few degrees of turn,
    nod and tilt, a little sway and lean; speaking tips the head forward with the
    loudness (a nod on stressed stretches) and it drifts back up in pauses."""

    def __init__(self, rng: np.random.Generator, amplitude: float = 1.0) -> None:
        self.freq = rng.uniform(0.08, 0.3, size=(6, 2))
        self.phase = rng.uniform(0, 2 * math.pi, size=(6, 2))
        self.amp = amplitude

    def at(self, t: float, speech_level: float) -> HeadPose:
        s = np.sin(2 * math.pi * self.freq * t + self.phase).mean(axis=1)
        a = self.amp
        return HeadPose(
            yaw=0.045 * s[4] * a,  # ~2.5 degrees
            pitch=(0.025 * s[5] + 0.05 * speech_level) * a,  # ~1.5 idle, ~3 with a stress
            roll=0.012 * s[0] * a,
            dx=0.015 * IOD * s[1] * a,
            dy=0.012 * s[2] * IOD * a,
            zoom=1.0 + 0.006 * s[3] * a,
        )


#: the head turns about a point this far behind the eye corners (canonical pixels)
PIVOT_DEPTH = 1.0 * IOD


def pose_points(points: np.ndarray, depth: np.ndarray, pose: HeadPose,
                centre: np.ndarray) -> np.ndarray:
    """Landmarks [N,2] seen with the head in ``pose``: each point, at its ``depth`` [N]
    (canonical pixels, relative to the eye corners, smaller nearer the camera), is rotated
    about a pivot behind ``centre`` and projected straight on, so the nose travels farther
    than the cheeks when the head turns or nods (parallax), not the rigid in-plane
    rotation of a flat picture."""
    cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    # the last point is the eye corners' plane at the centre: its shift under the turn is
    # taken out below, so the head turns and does not slide
    x = np.append(points[:, 0] - centre[0], 0.0)
    y = np.append(points[:, 1] - centre[1], 0.0)
    z = np.append(np.asarray(depth, np.float64), 0.0) - PIVOT_DEPTH
    x, z = x * cy - z * sy, x * sy + z * cy  # yaw: nearer points move toward +x
    y = y * cp - z * sp  # pitch: nearer points move down
    x, y = x * cr - y * sr, x * sr + y * cr
    out = np.stack([x[:-1] - x[-1], y[:-1] - y[-1]], 1) * pose.zoom
    return (out + centre + (pose.dx, pose.dy)).astype(np.float32)
