"""What the G_L and G_T trainers share: a generator and a critic with their Adam optimisers,
the torchrun/DDP wrapping, the logging loop, and resumable checkpoints.

A subclass builds its networks, then calls ``GanTrainer.__init__`` and implements
``step(data) -> {loss name: value}`` (one generator and one critic update). The model file
(``save``) is a self-describing checkpoint of the generator alone, which is what the
engines load; the critic, the optimisers and the sampling state go to ``<file>.train.pt``
beside it so that training resumes exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from etf_models import distributed as dist
from etf_models.checkpoint import load_checkpoint, save_checkpoint


class GanTrainer:
    #: the checkpoint's model name (set by subclasses)
    model_name = ""

    def __init__(self, g: nn.Module, d: nn.Module, model_cfg, cfg,
                 device: torch.device | str = "cpu") -> None:
        self.model_cfg, self.cfg, self.device = model_cfg, cfg, torch.device(device)
        self.g, self.d = g.to(self.device), d.to(self.device)
        self.g_par, self.d_par = dist.wrap(self.g, self.device), dist.wrap(self.d, self.device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.steps = 0
        self.history: list[dict] = []
        self.rng = np.random.default_rng([cfg.seed, dist.rank()])  # own batches per rank

    def unwrap(self) -> None:
        """Drop the DistributedDataParallel wrappers before the process group goes.

        A DDP module sits in a reference cycle (it survives ``del``; only the cyclic
        garbage collector frees it), and its reducer holds the group and its last work
        objects. Left to the interpreter's exit, that teardown runs while Python is being
        finalized, which can abort the process (SIGABRT, "terminate called without an
        active exception")."""
        self.g_par, self.d_par = self.g, self.d

    def step(self, data) -> dict[str, float]:
        raise NotImplementedError

    def extra_meta(self) -> dict:
        return {}

    def fit(self, data, steps: int, log_every: int = 100, log: Callable[[str], None] = print,
            evaluate: Callable[[nn.Module], dict] | None = None) -> list[dict]:
        """Train until ``steps`` in all; every ``log_every`` steps the mean losses (and
        ``evaluate(generator)``) go to ``history`` and, on rank 0, to ``log``."""
        acc: dict[str, list[float]] = {}
        t0 = time.time()
        while self.steps < steps:
            for k, v in self.step(data).items():
                acc.setdefault(k, []).append(v)
            if self.steps % log_every == 0 or self.steps == steps:
                entry = {"step": self.steps, **{k: round(float(np.mean(v)), 5)
                                                for k, v in acc.items()},
                         "seconds": round(time.time() - t0, 1)}
                if evaluate is not None:
                    self.g.eval()
                    with torch.no_grad():
                        entry.update(evaluate(self.g))
                self.history.append(entry)
                if dist.is_main():
                    log(str(entry))
                acc.clear()
        self.g.eval()
        return self.history

    def save(self, path: str | Path) -> str | None:
        """The generator's checkpoint plus the resumable state (rank 0 only)."""
        if not dist.is_main():
            return None
        path = Path(path)
        torch.save({"d": self.d.state_dict(), "opt_g": self.opt_g.state_dict(),
                    "opt_d": self.opt_d.state_dict(), "rng": self.rng.bit_generator.state},
                   path.with_suffix(".train.pt"))
        return save_checkpoint(path, self.model_name, self.model_cfg.to_dict(),
                               self.g.state_dict(),
                               {"steps": self.steps, "train_config": self.cfg.to_dict(),
                                "history": self.history, **self.extra_meta()})

    def resume(self, path: str | Path) -> None:
        path = Path(path)
        blob = load_checkpoint(path, model=self.model_name)
        self.g.load_state_dict(blob["state_dict"])
        self.steps = int(blob["meta"]["steps"])
        self.history = list(blob["meta"]["history"])
        state = torch.load(path.with_suffix(".train.pt"), weights_only=False,
                           map_location=self.device)
        self.d.load_state_dict(state["d"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.bit_generator.state = state["rng"]
