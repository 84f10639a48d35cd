"""The tensor-parallel shard group handle and its initialisation in any process (test worker,
Ray shard worker, or a process whose caller already set up torch.distributed)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as tdist

logger = logging.getLogger(__name__)

_SHM_OP_NAME = "deepspeed_shm_comm"


@dataclass(frozen=True)
class TPGroup:
    """One rank's view of its tensor-parallel group: `group` is the torch ProcessGroup that
    collectives run on (None for the default group)."""

    rank: int
    world_size: int
    group: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size} must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, {self.world_size})")

    @classmethod
    def from_process_group(cls, pg: Any = None) -> "TPGroup":
        """Wrap an already-initialised torch.distributed group (None: the default group)."""
        if not tdist.is_initialized():
            raise ValueError("torch.distributed is not initialised; call init_tp_group(...) instead")
        _ensure_deepspeed_comm(tdist.get_backend(pg))
        return cls(rank=tdist.get_rank(pg), world_size=tdist.get_world_size(pg), group=pg)

    def __repr__(self) -> str:
        return f"TPGroup(rank={self.rank}, world_size={self.world_size})"


GroupLike = TPGroup | tdist.ProcessGroup | None
"""What a `tp_group` / `sp_group` argument takes: a caller that set up torch.distributed itself
holds a plain ProcessGroup, which `as_tp_group` wraps."""


def as_tp_group(group: GroupLike, what: str = "tp_group") -> TPGroup | None:
    """`group` as a TPGroup (a ProcessGroup is wrapped; None stays None: no parallelism)."""
    if group is None or isinstance(group, TPGroup):
        return group
    if isinstance(group, tdist.ProcessGroup):
        return TPGroup.from_process_group(group)
    raise ValueError(
        f"{what}: expected a TPGroup, a torch.distributed.ProcessGroup or None, got {type(group).__name__}"
    )


def disable_deepspeed_shm() -> None:
    """DeepSpeed 0.19.8's CPU shared-memory all-reduce can crash or leak /dev/shm; gloo is enough."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[_SHM_OP_NAME] = False


def _ensure_deepspeed_comm(backend: str) -> None:
    """Make `deepspeed.comm` usable on top of an initialised torch.distributed."""
    import deepspeed.comm as dscomm

    if backend == "gloo":
        disable_deepspeed_shm()
    if not dscomm.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def _bind_cuda_device(rank: int, cuda_device: int | None) -> None:
    """Select this rank's GPU before NCCL starts (DeepSpeed binds the device named by LOCAL_RANK)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError("backend='nccl' needs a CUDA device, but none is visible")
    index = cuda_device if cuda_device is not None else (0 if count == 1 else rank % count)
    if not 0 <= index < count:
        raise ValueError(f"cuda_device={index} must be in [0, {count})")
    torch.cuda.set_device(index)
    os.environ["LOCAL_RANK"] = str(index)


def init_tp_group(
    rank: int,
    world_size: int,
    *,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    backend: str = "gloo",
    timeout_s: float = 600.0,
    cuda_device: int | None = None,
) -> TPGroup:
    """Join (or create) the process group of `world_size` ranks through deepspeed.comm and return
    the TP group spanning all of them. Safe to call when torch.distributed is already initialised:
    the existing default group is reused and must agree with `rank` and `world_size`.
    With NCCL the rank binds CUDA device `cuda_device` (default: the only visible GPU, as in a
    Ray GPU worker, else `rank % device_count` for one process per GPU on one host)."""
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} must be 'gloo' or 'nccl'")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if not isinstance(master_port, int) or not 0 < master_port < 65536:
        raise ValueError(f"master_port={master_port!r} must be an int in 1..65535")
    if backend == "gloo":
        disable_deepspeed_shm()
    if tdist.is_initialized():
        if tdist.get_rank() != rank or tdist.get_world_size() != world_size:
            raise ValueError(
                f"torch.distributed is already initialised as rank {tdist.get_rank()} of "
                f"{tdist.get_world_size()}, not rank={rank} of world_size={world_size}"
            )
        return TPGroup.from_process_group(None)
    import deepspeed

    if backend == "nccl":
        _bind_cuda_device(rank, cuda_device)
    deepspeed.init_distributed(
        dist_backend=backend,
        auto_mpi_discovery=False,
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
        verbose=False,
    )
    logger.info("joined TP group rank %d/%d via %s at %s:%d", rank, world_size, backend, master_addr, master_port)
    return TPGroup(rank=rank, world_size=world_size, group=None)
