"""Tensor-parallel building blocks (Megatron layout, vLLM-style loading).

Every parameter carries `weight_loader(param, source)`: `source` is a full checkpoint tensor or
a lazy safetensors slice; a sharded parameter also records its `shard_dim`, and its loader reads
only this rank's slice of the source. Replicated parameters get the plain full-copy loader.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from helios.parallel.comm import PendingReduce, reduce_from_tp_region, reduce_from_tp_region_async, tp_rank, tp_size
from helios.parallel.group import TPGroup

WeightLoader = Callable[[nn.Parameter, Any], int]


def divide(numerator: int, denominator: int, what: str = "dimension") -> int:
    """Exact division, or a ValueError saying what does not split across the TP group."""
    if numerator % denominator:
        raise ValueError(f"{what}={numerator} is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


def source_shape(source: Any) -> tuple[int, ...]:
    """Shape of a tensor or of a safetensors lazy slice (which has get_shape())."""
    if isinstance(source, torch.Tensor):
        return tuple(source.shape)
    return tuple(source.get_shape())


def _copy_into(param: nn.Parameter, tensor: torch.Tensor) -> int:
    with torch.no_grad():
        param.data.copy_(tensor.to(dtype=param.dtype))
    return tensor.numel() * tensor.element_size()


def replicated_weight_loader(param: nn.Parameter, source: Any) -> int:
    """Copy the whole tensor; returns the bytes read from the source."""
    shape = source_shape(source)
    if shape != tuple(param.shape):
        raise ValueError(f"shape {list(shape)} in checkpoint, expected {list(param.shape)}")
    tensor = source if isinstance(source, torch.Tensor) else source[:]
    return _copy_into(param, tensor)


def make_shard_loader(shard_dim: int, rank: int, world_size: int) -> WeightLoader:
    """Loader reading rows `[rank*n, (rank+1)*n)` of `shard_dim` only (n = local size)."""

    def load(param: nn.Parameter, source: Any) -> int:
        shape = source_shape(source)
        expected = list(param.shape)
        expected[shard_dim] *= world_size
        if list(shape) != expected:
            raise ValueError(f"shape {list(shape)} in checkpoint, expected {expected}")
        size = param.shape[shard_dim]
        index = [slice(None)] * len(shape)
        index[shard_dim] = slice(rank * size, (rank + 1) * size)
        return _copy_into(param, source[tuple(index)])

    return load


def set_weight_attrs(param: nn.Parameter, *, shard_dim: int | None, tp: TPGroup | None) -> None:
    """Attach the loader (and shard dim) a checkpoint tensor needs to land in `param`."""
    param.shard_dim = shard_dim  # type: ignore[attr-defined]
    if shard_dim is None or tp_size(tp) == 1:
        param.weight_loader = replicated_weight_loader  # type: ignore[attr-defined]
    else:
        param.weight_loader = make_shard_loader(shard_dim, tp_rank(tp), tp_size(tp))  # type: ignore[attr-defined]


def weight_loader_of(param: nn.Parameter) -> WeightLoader:
    """The parameter's own loader, or full copy for plain (replicated) torch modules."""
    return getattr(param, "weight_loader", replicated_weight_loader)


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local: output features split across ranks (heads, FFN up)."""

    def __init__(self, in_features: int, out_features: int, *, tp: TPGroup | None, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.tp_size = tp_size(tp)
        self.out_per_rank = divide(out_features, self.tp_size, "out_features")
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features), requires_grad=False)
        set_weight_attrs(self.weight, shard_dim=0, tp=tp)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_per_rank), requires_grad=False)
            set_weight_attrs(self.bias, shard_dim=0, tp=tp)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, out_per_rank={self.out_per_rank}, tp={self.tp_size}"


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) + b: input features split across ranks (attn out, FFN down)."""

    def __init__(self, in_features: int, out_features: int, *, tp: TPGroup | None, bias: bool = True) -> None:
        super().__init__()
        self.tp = tp
        self.in_features = in_features
        self.out_features = out_features
        self.tp_size = tp_size(tp)
        self.in_per_rank = divide(in_features, self.tp_size, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank), requires_grad=False)
        set_weight_attrs(self.weight, shard_dim=1, tp=tp)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_attrs(self.bias, shard_dim=None, tp=tp)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.linear(x, self.weight, self.bias)
        y = reduce_from_tp_region(F.linear(x, self.weight), self.tp, "row_out")
        return y if self.bias is None else y + self.bias

    def forward_async(self, x: torch.Tensor) -> PendingReduce:
        """Same result as forward, with the all-reduce left in flight until `.wait()`."""
        if self.tp_size == 1:
            return reduce_from_tp_region_async(F.linear(x, self.weight, self.bias), None)
        return reduce_from_tp_region_async(F.linear(x, self.weight), self.tp, "row_out", self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, in_per_rank={self.in_per_rank}, tp={self.tp_size}"


class DistributedRMSNorm(nn.Module):
    """RMSNorm over the FULL width while each rank holds a slice of it (q/k norm across heads):
    all-reduce the sum of squares, then scale the local slice with the local slice of the weight."""

    def __init__(self, full_dim: int, *, eps: float, tp: TPGroup | None) -> None:
        super().__init__()
        self.tp = tp
        self.full_dim = full_dim
        self.eps = eps
        self.tp_size = tp_size(tp)
        self.weight = nn.Parameter(torch.empty(divide(full_dim, self.tp_size, "norm width")), requires_grad=False)
        set_weight_attrs(self.weight, shard_dim=0, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.rms_norm(x, (self.full_dim,), self.weight, self.eps)
        xf = x.float()
        sum_sq = reduce_from_tp_region(xf.pow(2).sum(dim=-1, keepdim=True), self.tp, "norm_sum_sq")
        out = xf * torch.rsqrt(sum_sq / self.full_dim + self.eps) * self.weight.float()
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"full_dim={self.full_dim}, eps={self.eps}, tp={self.tp_size}"
