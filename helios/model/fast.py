"""The transformer's fast-path switches (config `fast:`) and applying them to a loaded model.

Everything here is opt-in except the attention backend, which is always chosen explicitly
(`auto`: the fastest the device runs, logged). The eager model with `fast: {}` on CPU is the
reference; each lever has a CPU test against it (tests/model/test_fast_*.py).

- compile: `torch.compile` of each transformer block (regional: the 40 identical blocks share
  one graph per input shape, `dynamic=False`, so each pyramid stage shape gets its own static
  graph). Compiling happens when the pipeline is built: `helios.pipeline.warmup` runs one dummy
  chunk through every stage shape, so a session's first chunk never compiles.
- cuda_graphs: inductor's CUDA graphs on top (mode reduce-overhead / max-autotune).
- attention: see helios.model.attention.
- fp8: see helios.model.fp8.
- comm_timing / tp_overlap: see helios.parallel.timing and HeliosTransformerBlock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from helios.model.attention import AttentionChoice, BackendRequest, select_backend, set_attention_backend
from helios.model.fp8 import DEFAULT_SKIP, Fp8Report, convert_linears

logger = logging.getLogger(__name__)

CompileMode = Literal["default", "max-autotune"]


class FastPathConfig(BaseModel):
    """Transformer speed levers; `StreamConfig.fast` (YAML `stream: {fast: {...}}` in a model
    preset, or `options: {fast: {...}}` in a serving model spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compile: bool = Field(False, description="torch.compile each transformer block per stage shape, warmed at load.")
    compile_backend: str = Field("inductor", description="torch.compile backend (tests use 'aot_eager').")
    compile_mode: CompileMode = Field("default", description="inductor mode: 'default' or 'max-autotune'.")
    cuda_graphs: bool = Field(False, description="Capture CUDA graphs of the compiled blocks (CUDA only).")
    attention: BackendRequest = Field("auto", description="Attention kernel: auto | sdpa | math | flash | efficient | cudnn | fa2 | fa3.")
    fp8: bool = Field(False, description="FP8 (e4m3) GEMMs for the transformer's linears.")
    fp8_recipe: Literal["rowwise", "tensorwise"] = Field("rowwise", description="Scale granularity: per row/token or per tensor.")
    fp8_gemm: Literal["auto", "scaled_mm", "emulated"] = Field("auto", description="torch._scaled_mm, or dequantize + fp32 matmul.")
    fp8_skip: list[str] = Field(list(DEFAULT_SKIP), description="Module-name patterns (fnmatch) kept in the model dtype.")
    tp_overlap: bool = Field(False, description="Overlap the self-attention all-reduce with the cross-attention K/V GEMMs.")
    comm_timing: bool = Field(False, description="Time every named TP collective (helios.parallel.timing).")

    @model_validator(mode="after")
    def _graphs_need_compile(self) -> "FastPathConfig":
        if self.cuda_graphs and not self.compile:
            raise ValueError("fast.cuda_graphs: needs fast.compile: true (graphs are captured by inductor)")
        return self

    @property
    def torch_compile_mode(self) -> str:
        """The torch.compile mode string for (compile_mode, cuda_graphs)."""
        if self.compile_mode == "max-autotune":
            return "max-autotune" if self.cuda_graphs else "max-autotune-no-cudagraphs"
        return "reduce-overhead" if self.cuda_graphs else "default"


@dataclass
class FastPathReport:
    """What `apply_fast_path` did to the model (logged, and returned for tests and benches)."""

    attention: AttentionChoice
    fp8: Fp8Report | None = None
    compiled_blocks: int = 0
    compile_mode: str | None = None
    notes: list[str] = field(default_factory=list)


def compile_blocks(model: nn.Module, *, backend: str | Callable = "inductor", mode: str | None = "default",
                   fullgraph: bool = True) -> int:
    """Regional compilation: `torch.compile` every block of `model.blocks` in place with static
    shapes (one graph per input shape, shared by all blocks); returns how many were compiled.
    Compilation itself happens at the first call per shape (see helios.pipeline.warmup)."""
    options: dict[str, Any] = {"backend": backend, "dynamic": False, "fullgraph": fullgraph}
    if backend == "inductor" and mode not in (None, "default"):
        options["mode"] = mode
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"fast.compile: {type(model).__name__} has no `blocks` to compile")
    # Each stage shape is one cache entry per block code object; leave room for 3 stages x CFG.
    dynamo_config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 16))
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def apply_fast_path(model: nn.Module, config: FastPathConfig, *, device: torch.device | str,
                    dtype: torch.dtype) -> FastPathReport:
    """Apply `config` to a loaded HeliosTransformer in place (attention, FP8, timing, overlap,
    compile); the caller warms the compiled graphs (helios.pipeline.warmup.warm_up)."""
    from helios.model.transformer import HeliosTransformer

    device = torch.device(device)
    if not isinstance(model, HeliosTransformer):
        raise ValueError(f"fast: the fast path needs helios.model.HeliosTransformer, got {type(model).__name__}")
    if config.cuda_graphs and device.type != "cuda":
        raise ValueError(f"fast.cuda_graphs: CUDA graphs need a CUDA device, this is {device.type}")
    choice = select_backend(device, dtype, config.attention)
    set_attention_backend(model, choice.backend)
    report = FastPathReport(attention=choice)
    if config.fp8:
        report.fp8 = convert_linears(model, skip=config.fp8_skip, recipe=config.fp8_recipe, gemm=config.fp8_gemm)
    if config.tp_overlap:
        for block in model.blocks:
            block.tp_overlap = True
    if config.comm_timing:
        from helios.parallel.timing import enable_comm_timing

        enable_comm_timing(device)
    if config.compile:
        tp = getattr(model, "tp_group", None)
        single = tp is None or tp.world_size == 1
        if not single:
            report.notes.append("TP collectives run between compiled graphs (graph breaks at each all-reduce)")
        report.compile_mode = config.torch_compile_mode
        report.compiled_blocks = compile_blocks(model, backend=config.compile_backend, mode=report.compile_mode,
                                                fullgraph=single and not config.tp_overlap)
        logger.info("fast: compiling %d blocks (backend %s, mode %s) per stage shape at warm-up",
                    report.compiled_blocks, config.compile_backend, report.compile_mode)
    return report
