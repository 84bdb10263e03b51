"""Data-parallel training over processes: torch DistributedDataParallel, started by torchrun.

    torchrun --standalone --nproc_per_node 4 -m models.train --arch aero --preset gpt2 \
        --device cuda --batch-size 512 --grad-accum 4 ...

torchrun gives every process RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address);
without them training is one process and nothing here communicates. The step is the same as one
process's on the same global batch:
  * every rank draws the same global batch (same generator) and takes its contiguous slice of the
    sequences (`rows`), split into the --grad-accum micro-batches;
  * each micro-batch's loss is its part of the whole step's loss (its share of the global
    batch's sequences; the paper-style summed entropy penalty adds up as is), and DDP averages
    gradients over ranks, so each rank scales its loss by the world size before backward;
  * evaluation windows are split the same way and the ranks' means averaged;
  * rank 0 alone prints and writes checkpoints.
Backends: gloo on the CPU, nccl on CUDA (one device per process: cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from models.errors import UserError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch's sequences (dim 0)."""
        size = batch.size(0) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over the ranks (the values themselves on one process)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to run forward and backward through: DDP on several processes."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def finish(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Group()


def start(device_name: str) -> Group:
    """Join the process group torchrun describes in the environment (none: one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    group = Group(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return group


def check_split(group: Group, batch_size: int, grad_accum: int) -> None:
    """The global batch must split evenly into ranks, and each rank's slice into micro-batches."""
    if grad_accum < 1 or batch_size % (group.world_size * grad_accum):
        raise UserError(
            f"--batch-size {batch_size} must divide evenly into {group.world_size} process(es) "
            f"x --grad-accum {grad_accum} micro-batches"
        )


def device_of(group: Group, device: torch.device) -> torch.device:
    """A CUDA device becomes this process's own, cuda:LOCAL_RANK, when distributed."""
    if group.active and device.type == "cuda":
        return torch.device("cuda", group.local_rank)
    return device
