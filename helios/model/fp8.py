"""FP8 GEMMs for the transformer's linears (e4m3 weights and activations, higher-precision output).

`convert_linears(model, skip=...)` swaps each selected linear (our column/row-parallel layers
and plain nn.Linear) for an `Fp8Linear` holding this rank's weight shard in float8_e4m3fn with
its scales; names stay the same, so per-layer opt-out patterns are diffusers module names
(fnmatch). Weights are quantized per output channel ("rowwise") or per tensor ("tensorwise");
activations per token or per tensor, dynamically, in every call.

TP: a column-parallel shard holds whole output rows, so its rowwise scales equal the full
weight's; a row-parallel shard quantizes its own K slice with its own scales and the partial
products are all-reduced exactly as in RowParallelLinear (bias added once, after the sum).

GEMM: `scaled_mm` runs torch._scaled_mm (the FP8 tensor cores on sm89+/Hopper; torch also has
a CPU kernel); `emulated` dequantizes the same fp8 values with the same scales and multiplies
in float32, so its error against the bf16/fp32 path is the quantization error alone (what the
quality check measures on a machine without FP8 GEMMs).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from helios.model.layers import ColumnParallelLinear, RowParallelLinear, weight_loader_of
from helios.parallel.comm import PendingReduce, reduce_from_tp_region, reduce_from_tp_region_async, tp_size

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
Recipe = Literal["rowwise", "tensorwise"]
Gemm = Literal["auto", "scaled_mm", "emulated"]

DEFAULT_SKIP: tuple[str, ...] = ("condition_embedder.*", "proj_out", "norm_out*", "patch_*")
"""Kept in the model dtype by default: embedders (incl. the fp32 time embedder), adaLN
projection, output projection (their error is not averaged over depth)."""
ALWAYS_SKIP: tuple[str, ...] = ("proj_out", "condition_embedder.time_embedder", "condition_embedder.time_proj")
"""Never converted: the model reads its compute dtypes from these weights (and diffusers keeps
the time embedder in float32)."""


class Fp8Error(ValueError):
    """FP8 was requested but cannot run as asked (device, recipe or GEMM)."""


def quantize(t: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, float32 scale) with t ~= fp8 * scale; rowwise: one scale per row (last dim
    reduced, shape (rows, 1)); tensorwise: a 0-dim scale."""
    tf = t.float()
    if recipe == "rowwise":
        amax = tf.abs().amax(dim=-1, keepdim=True)
    else:
        amax = tf.abs().amax()
    scale = amax.clamp(min=1e-12) / FP8_MAX
    return (tf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 values of an fp8 tensor with its scale."""
    return q.float() * scale


def fp8_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, *, recipe: Recipe, gemm: str,
               out_dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) @ dequant(weight (N, K)).T with x quantized on the fly -> (..., N) in out_dtype."""
    lead = x.shape[:-1]
    xq, xs = quantize(x.reshape(-1, x.shape[-1]), recipe)
    if gemm == "scaled_mm":
        ws = weight_scale.view(1, -1) if recipe == "rowwise" else weight_scale
        y = torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=ws, out_dtype=out_dtype)
    else:
        w = dequantize(weight, weight_scale.view(-1, 1) if recipe == "rowwise" else weight_scale)
        y = (dequantize(xq, xs) @ w.t()).to(out_dtype)
    return y.view(*lead, weight.shape[0])


class Fp8Linear(nn.Module):
    """A linear (plain, column- or row-parallel) running its GEMM in FP8; same parameter names
    (`weight` now float8_e4m3fn, plus the `weight_scale` buffer), same TP communication."""

    def __init__(self, source: nn.Module, *, recipe: Recipe, gemm: str) -> None:
        super().__init__()
        if not isinstance(source, (nn.Linear, ColumnParallelLinear, RowParallelLinear)):
            raise Fp8Error(f"fp8: cannot convert {type(source).__name__}")
        self.recipe = recipe
        self.gemm = gemm
        self.in_features = source.weight.shape[1]
        self.out_features = source.weight.shape[0]
        self.source_dtype = source.weight.dtype
        self.tp = source.tp if isinstance(source, RowParallelLinear) and tp_size(source.tp) > 1 else None
        q, scale = quantize(source.weight.data, recipe)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight.__dict__.update({k: v for k, v in source.weight.__dict__.items() if k != "weight_loader"})
        self.weight.weight_loader = self._quantizing_loader(weight_loader_of(source.weight))  # type: ignore[attr-defined]
        self.register_buffer("weight_scale", scale.view(-1) if recipe == "rowwise" else scale, persistent=False)
        self.bias = source.bias

    def _quantizing_loader(self, inner: Any):
        """The source layer's loader (same shard slice) into a temporary, then quantized in place:
        loading a checkpoint into the converted model equals converting the loaded model."""

        def load(param: nn.Parameter, source: Any) -> int:
            staging = nn.Parameter(torch.empty(param.shape, dtype=self.source_dtype, device=param.device),
                                   requires_grad=False)
            read = inner(staging, source)
            q, scale = quantize(staging.data, self.recipe)
            with torch.no_grad():
                param.data.copy_(q)
                self.weight_scale.copy_(scale.view(-1) if self.recipe == "rowwise" else scale)
            return read

        return load

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer effectively multiplies with."""
        scale = self.weight_scale.view(-1, 1) if self.recipe == "rowwise" else self.weight_scale
        return dequantize(self.weight, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._gemm(x)
        if self.tp is not None:
            y = reduce_from_tp_region(y, self.tp, "row_out")
        return y if self.bias is None else y + self.bias

    def forward_async(self, x: torch.Tensor) -> PendingReduce:
        """forward with the row-parallel all-reduce left in flight (see RowParallelLinear)."""
        return reduce_from_tp_region_async(self._gemm(x), self.tp, "row_out", self.bias)

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_matmul(x, self.weight, self.weight_scale, recipe=self.recipe, gemm=self.gemm, out_dtype=x.dtype)

    def extra_repr(self) -> str:
        tp = "" if self.tp is None else f", row-parallel tp={self.tp.world_size}"
        return f"in={self.in_features}, out={self.out_features}, {self.recipe}, gemm={self.gemm}{tp}"


@dataclass
class Fp8Report:
    """Which linears were converted and which were kept (by opt-out pattern), and the GEMM used."""

    gemm: str
    recipe: str
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def resolve_gemm(device: torch.device | str, requested: Gemm = "auto") -> str:
    """`scaled_mm` where torch._scaled_mm runs FP8 here (sm89+ GPU, or torch's CPU kernel),
    `emulated` only when asked or on CPU without that kernel; never a silent downgrade on GPU."""
    device = torch.device(device)
    if requested == "emulated":
        return "emulated"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise Fp8Error(f"fp8: FP8 GEMMs need compute capability >= 8.9 (Ada/Hopper), got {major}.{minor}")
        return "scaled_mm"
    works = _scaled_mm_runs(device)
    if requested == "scaled_mm" and not works:
        raise Fp8Error(f"fp8: torch._scaled_mm does not run on {device} in this torch build")
    return "scaled_mm" if works else "emulated"


def _scaled_mm_runs(device: torch.device) -> bool:
    """Probe torch._scaled_mm once with a 16x16 rowwise product on `device`."""
    a = torch.ones(16, 16, device=device).to(FP8_DTYPE)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1, device=device), scale_b=torch.ones(1, 16, device=device),
                         out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("torch._scaled_mm unavailable on %s: %s", device, exc)
        return False
    return True


def is_skipped(name: str, skip: tuple[str, ...] | list[str]) -> bool:
    """Whether module `name` (or one of its parents) matches an opt-out pattern."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for pat in (*skip, *ALWAYS_SKIP) for p in prefixes)


def convert_linears(model: nn.Module, *, skip: tuple[str, ...] | list[str] = DEFAULT_SKIP,
                    recipe: Recipe = "rowwise", gemm: Gemm = "auto") -> Fp8Report:
    """Replace every linear of `model` not matched by `skip` with an Fp8Linear (in place,
    after or before loading the weights); logs and returns what was converted."""
    if recipe not in ("rowwise", "tensorwise"):
        raise Fp8Error(f"fp8_recipe: expected 'rowwise' or 'tensorwise', got {recipe!r}")
    device = next(model.parameters()).device
    report = Fp8Report(gemm=resolve_gemm(device, gemm), recipe=recipe)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, ColumnParallelLinear, RowParallelLinear))]
    for name, module in targets:
        if is_skipped(name, skip):
            report.skipped.append(name)
            continue
        if module.weight.shape[-1] % 16 or module.weight.shape[0] % 16:
            report.skipped.append(name)  # FP8 tensor-core GEMMs need both dims divisible by 16
            logger.info("fp8: keeping %s %s in %s (dims not divisible by 16)", name, tuple(module.weight.shape),
                        module.weight.dtype)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(module, recipe=recipe, gemm=report.gemm))
        report.converted.append(name)
    logger.info("fp8: %d linears converted (%s, gemm %s), %d kept: %s", len(report.converted), recipe, report.gemm,
                len(report.skipped), ", ".join(report.skipped) or "none")
    return report
