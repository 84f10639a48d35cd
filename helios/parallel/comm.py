"""Named collectives of the tensor-parallel group (Megatron style), all through deepspeed.comm,
so `forward` code reads like the maths. `tp=None` or a group of one means: no communication.
Each collective carries a name; with helios.parallel.timing enabled it is timed under it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from helios.parallel import timing
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


def _timed(name: str, x: torch.Tensor):
    """The timer's context for this collective, or a no-op one when timing is off."""
    timer = timing.ACTIVE
    return contextlib.nullcontext() if timer is None else timer.time(name, x)


def reduce_from_tp_region(x: torch.Tensor, tp: TPGroup | None, name: str = "all_reduce") -> torch.Tensor:
    """Sum partial results of row-parallel layers across the group (in place, returned)."""
    if tp_size(tp) == 1:
        return x
    x = x.contiguous()
    if timing.ACTIVE is None:
        _dscomm(tp).all_reduce(x, group=tp.group)
    else:
        with timing.ACTIVE.time(name, x):
            _dscomm(tp).all_reduce(x, group=tp.group)
    return x


class PendingReduce:
    """An all-reduce in flight; `wait()` returns the summed tensor (plus `bias`, if given)."""

    def __init__(self, x: torch.Tensor, work: Any, name: str, bias: torch.Tensor | None = None) -> None:
        self._x = x
        self._work = work
        self._name = name
        self._bias = bias

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            with _timed(f"{self._name}:wait", self._x):
                self._work.wait()
            self._work = None
        return self._x if self._bias is None else self._x + self._bias


def reduce_from_tp_region_async(
    x: torch.Tensor, tp: TPGroup | None, name: str = "all_reduce", bias: torch.Tensor | None = None
) -> PendingReduce:
    """Start the all-reduce of `x` and return at once; independent work can run before `wait()`.
    Collectives still start in program order on every rank, so the result equals the blocking one."""
    if tp_size(tp) == 1:
        return PendingReduce(x, None, name, bias)
    x = x.contiguous()
    work = _dscomm(tp).all_reduce(x, group=tp.group, async_op=True)
    return PendingReduce(x, work, name, bias)


def gather_from_tp_region(x: torch.Tensor, tp: TPGroup | None, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's shard of `x` along `dim` (rank order)."""
    if tp_size(tp) == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp.world_size)]
    with _timed("all_gather", x):
        _dscomm(tp).all_gather(parts, x, group=tp.group)
    return torch.cat(parts, dim=dim)


def barrier(tp: TPGroup | None) -> None:
    """Wait for every rank of the group."""
    if tp_size(tp) == 1:
        return
    _dscomm(tp).barrier(group=tp.group)


def split_sizes(total: int, world_size: int) -> list[int]:
    """Near-equal contiguous split of `total` tokens over the ranks (the first ones get one more)."""
    base, extra = divmod(total, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def seq_to_heads(x: torch.Tensor, sp: TPGroup, sizes: list[int]) -> torch.Tensor:
    """Ulysses all-to-all: (B, my tokens, H, D) -> (B, all tokens, my H/N heads, D).
    `sizes` are every rank's token counts (uneven allowed)."""
    batch, local, heads, dim = x.shape
    n = sp.world_size
    send = x.view(batch, local, n, heads // n, dim).permute(2, 1, 0, 3, 4).reshape(n * local, batch, heads // n, dim)
    recv = torch.empty(sum(sizes), batch, heads // n, dim, dtype=x.dtype, device=x.device)
    with _timed("seq_to_heads", recv):
        _dscomm(sp).all_to_all_single(
            recv, send.contiguous(), output_split_sizes=sizes, input_split_sizes=[local] * n, group=sp.group
        )
    return recv.permute(1, 0, 2, 3)


def heads_to_seq(y: torch.Tensor, sp: TPGroup, sizes: list[int]) -> torch.Tensor:
    """Inverse of seq_to_heads: (B, all tokens, my H/N heads, D) -> (B, my tokens, H, D)."""
    batch, _, heads_local, dim = y.shape
    n = sp.world_size
    local = sizes[sp.rank]
    send = y.permute(1, 0, 2, 3).contiguous()
    recv = torch.empty(n * local, batch, heads_local, dim, dtype=y.dtype, device=y.device)
    with _timed("heads_to_seq", recv):
        _dscomm(sp).all_to_all_single(recv, send, output_split_sizes=[local] * n, input_split_sizes=sizes, group=sp.group)
    out = recv.view(n, local, batch, heads_local, dim).permute(2, 1, 0, 3, 4)
    return out.reshape(batch, local, n * heads_local, dim)


def gather_uneven(x: torch.Tensor, sp: TPGroup, sizes: list[int], dim: int = 1) -> torch.Tensor:
    """All-gather pieces of different lengths `sizes` along `dim` (padded to the longest, trimmed)."""
    longest = max(sizes)
    pad = [0, 0] * (x.ndim - 1 - (dim % x.ndim)) + [0, longest - x.shape[dim]]
    padded = torch.nn.functional.pad(x, pad).contiguous()
    parts = [torch.empty_like(padded) for _ in range(sp.world_size)]
    with _timed("gather_uneven", padded):
        _dscomm(sp).all_gather(parts, padded, group=sp.group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)
