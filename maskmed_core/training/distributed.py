"""Process-group set-up for DDP under torchrun: nccl on GPUs, gloo on CPU; only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskmed_core.devices import DeviceError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str) -> DistributedContext:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    ``device_name``: "cpu", "cuda" or "auto". Under torchrun each rank takes GPU ``LOCAL_RANK``.
    """
    want_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if device_name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is usable here; use --device cpu")
    if not launched_by_torchrun():
        device = torch.device("cuda" if want_cuda else "cpu")
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(values: tuple[float, ...], context: DistributedContext) -> tuple[float, ...]:
    """Sum Python numbers over ranks in one collective (identity without DDP)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tuple(tensor.tolist())


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def teardown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
