"""Named collectives of the tensor-parallel group (Megatron style), all through deepspeed.comm,
so `forward` code reads like the maths. `tp=None` or a group of one means: no communication."""

from __future__ import annotations

import torch

from helios.parallel.group import TPGroup


def tp_size(tp: TPGroup | None) -> int:
    """World size of the group; 1 without parallelism."""
    return 1 if tp is None else tp.world_size


def tp_rank(tp: TPGroup | None) -> int:
    """Rank within the group; 0 without parallelism."""
    return 0 if tp is None else tp.rank


def _dscomm(tp: TPGroup):
    """deepspeed.comm, after checking the group was really initialised (not just constructed)."""
    import deepspeed.comm as dscomm

    if not dscomm.is_initialized():
        raise RuntimeError(
            f"{tp} has no process group: create it with init_tp_group(...) or "
            "TPGroup.from_process_group(pg) before running collectives"
        )
    return dscomm


def reduce_from_tp_region(x: torch.Tensor, tp: TPGroup | None) -> torch.Tensor:
    """Sum partial results of row-parallel layers across the group (in place, returned)."""
    if tp_size(tp) == 1:
        return x
    x = x.contiguous()
    _dscomm(tp).all_reduce(x, group=tp.group)
    return x


def gather_from_tp_region(x: torch.Tensor, tp: TPGroup | None, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's shard of `x` along `dim` (rank order)."""
    if tp_size(tp) == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp.world_size)]
    _dscomm(tp).all_gather(parts, x, group=tp.group)
    return torch.cat(parts, dim=dim)


def barrier(tp: TPGroup | None) -> None:
    """Wait for every rank of the group."""
    if tp_size(tp) == 1:
        return
    _dscomm(tp).barrier(group=tp.group)
