"""Self-describing checkpoints for every network of the project.

A checkpoint is one ``torch.save`` file holding plain data only (loaded with
``weights_only=True``, so a checkpoint can never run code)::

    {"format": "etf-checkpoint", "version": 1, "model": "deepspeech",
     "config": {...architecture...}, "state_dict": {...tensors...}, "meta": {...}}

``load_checkpoint`` validates all of it and says clearly what is wrong with a foreign,
corrupt or mismatched file; ``build`` recreates the network from the stored config.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

FORMAT = "etf-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign, or for another model."""


def save_checkpoint(path: str | os.PathLike, model: str, config: dict,
                    state_dict: dict[str, torch.Tensor], meta: dict | None = None) -> str:
    """Write a checkpoint; returns its SHA-256 (hex)."""
    blob = {
        "format": FORMAT, "version": VERSION, "model": model, "config": dict(config),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "meta": dict(meta or {}),
    }
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return sha256_of(path)


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, model: str | None = None) -> dict[str, Any]:
    """Read and validate a checkpoint (optionally requiring ``model``)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise CheckpointError(f"{name}: no such checkpoint file")
    try:
        blob = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for foreign/corrupt files
        raise CheckpointError(f"{name}: not a readable checkpoint ({type(e).__name__}: {e})") \
            from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{name}: not an etf checkpoint (no '{FORMAT}' header)")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"{name}: checkpoint version {blob.get('version')!r} is not "
                              f"supported (this build reads {VERSION})")
    if model is not None and blob.get("model") != model:
        raise CheckpointError(f"{name}: holds a {blob.get('model')!r} model, not {model!r}")
    if not isinstance(blob.get("config"), dict) or not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"{name}: checkpoint lacks its config or weights")
    return blob
