"""One place that reads the launcher's variables and sets up torch.distributed.

Works under ``torchrun``, ``python -m torch.distributed.launch`` (``--local_rank``/``--local-rank``
or ``LOCAL_RANK``), SLURM-style variables set by the user, and as a single plain process. NCCL on
GPUs, gloo on CPUs. Returns an explicit :class:`DistInfo`; no global state is patched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from refers.base.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int | None = None) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def resolve_device(name: str | None = None) -> torch.device:
    """The device a command runs on: ``name`` (``cpu``, ``cuda``, ``cuda:N``), by default the GPU
    when there is one, else the CPU.

    Raises:
        UserError: (exit 2) ``name`` is no such device, or names a GPU this machine does not have.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name} is not a device: expected cpu, cuda or cuda:N", 2)
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        have = f"this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}" if count else "no GPU is available"
        raise UserError(f"--device {name}: {have}; run with --device cpu or on a machine with that GPU", 2)
    return device


def init_distributed(local_rank: int | None = None, device: str | None = None) -> DistInfo:
    """Initialise the default process group if the launcher asked for more than one process.

    Args:
        local_rank: from ``--local_rank`` of the legacy launcher; ``LOCAL_RANK`` wins when both exist.
        device: "cpu" or "cuda" to force; default: CUDA when available.

    Raises:
        UserError: (exit 2) a GPU was asked for and there is none (:func:`resolve_device`).
    """
    world_size = _env_int("WORLD_SIZE", default=1) or 1
    rank = _env_int("RANK", default=0) or 0
    env_local = _env_int("LOCAL_RANK")
    local = env_local if env_local is not None else (local_rank if local_rank is not None and local_rank >= 0 else 0)
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: object, info: DistInfo, src: int = 0) -> object:
    """Every rank gets rank ``src``'s value (for decisions such as early stopping)."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
