"""The fixed map from the 478-point face mesh to dlib's 68 points.

Each of the 68 is a weighted sum of a few mesh vertices (weights sum to 1), fitted by
``etf fit-mesh68`` on real frames where dlib and the mesh both ran
(:mod:`engines.recordings.mesh68_fit`); ``mesh_to_68.json`` beside this file holds the
indices, weights and the held-out error. The paper's networks and the motion fields keep
their 68-point interface through it.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

import numpy as np

MAP_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mesh_to_68.json")


@lru_cache(maxsize=1)
def mapping() -> tuple[np.ndarray, np.ndarray]:
    """(indices [68,K], weights [68,K]) of the shipped map."""
    with open(MAP_FILE) as f:
        data = json.load(f)
    idx = np.asarray(data["indices"], dtype=np.int64)
    wts = np.asarray(data["weights"], dtype=np.float64)
    if idx.shape != wts.shape or idx.shape[0] != 68 or not np.allclose(wts.sum(1), 1, 1e-3):
        raise ValueError(f"{MAP_FILE}: not a 68-point map")
    return idx, wts


def mesh_to_68(mesh: np.ndarray) -> np.ndarray:
    """dlib-style 68 points [68,2] (image pixels) of a mesh [478 or 468, >=2]."""
    idx, wts = mapping()
    return (mesh[idx, :2] * wts[:, :, None]).sum(1)


def depth_68(mesh: np.ndarray) -> np.ndarray:
    """The mesh's depth at the 68 points [68] (its z, same weights as the positions)."""
    idx, wts = mapping()
    return (mesh[idx, 2] * wts).sum(1)


@lru_cache(maxsize=1)
def template_depth_68() -> np.ndarray:
    """A typical face's depth at the 68 points [68], inter-ocular distances relative to the
    eye corners (smaller is nearer the camera), from the frames the map was fitted on."""
    with open(MAP_FILE) as f:
        return np.asarray(json.load(f)["depth_68_iod"], np.float64)
