"""Multi-GPU (or multi-process CPU) training through torchrun and DistributedDataParallel.

``torchrun --nproc_per_node N -m server.cli train landmarks ...`` starts N processes with
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` in their environment; ``setup`` joins them
(NCCL on CUDA, gloo on CPU) and gives each its device. The trainers wrap their networks
with ``wrap`` (DistributedDataParallel averages the gradients, so every rank holds the
same weights), sample different batches per rank, and only rank 0 writes checkpoints.
Without torchrun everything is a single process and these helpers do nothing.
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str = "auto") -> torch.device:
    """Join the torchrun group if there is one; the device for this process."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if n > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if device not in ("auto", "cpu"):
        raise ValueError(f"device {device!r} is not available here (CUDA: "
                         f"{torch.cuda.is_available()})")
    return torch.device("cpu")


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when running under torchrun."""
    module = module.to(device)
    if world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def in_sync(module: nn.Module) -> bool:
    """Whether every rank holds the same weights (a cheap checksum, gathered)."""
    if world_size() == 1:
        return True
    total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
    sums = [torch.zeros_like(total) for _ in range(world_size())]
    torch.distributed.all_gather(sums, total)
    return all(torch.allclose(s, sums[0], rtol=0, atol=1e-9 * max(1.0, abs(float(s))))
               for s in sums)


def teardown() -> None:
    """Leave the group together: a rank that closes its gloo pairs while another is still
    using them aborts the other process on exit.

    Drop the DDP wrappers first (``GanTrainer.unwrap``): DDP modules live in reference
    cycles, so the collection here is what frees them (and the work their reducers hold)
    while the group and the interpreter are still alive, not Python's finalization."""
    if torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
