"""Memory and FLOPs accounting of the Helios transformer per tensor-parallel rank.

Parameters are counted on the meta device (nothing allocated, so the 14B model is instant);
FLOPs are the matmul/attention FLOPs of one forward (2 per multiply-add), split into what every
rank computes (replicated) and what is divided by the TP size.

    python -m helios.accounting --preset 14b --tp 4 --dtype bf16 --tokens 11040
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import torch

from helios.config import HeliosConfig
from helios.dtypes import DTYPE_NAMES, resolve_dtype
from helios.model.transformer import HeliosTransformer
from helios.parallel.group import TPGroup

PRESETS = {"14b": HeliosConfig.helios_14b, "tiny": HeliosConfig.tiny}
# Full resolution (DESIGN section 3): history short 1,920 + mid 240 + long 240 tokens.
FULL_RES_HISTORY_TOKENS = 2400
TEXT_TOKENS = 512


@dataclass(frozen=True)
class ParamReport:
    """Parameter counts and bytes for one rank of a TP group."""

    tp: int
    dtype: str
    params_total: int
    params_per_rank: int
    params_replicated: int
    bytes_per_rank: int


@dataclass(frozen=True)
class FlopReport:
    """FLOPs (2 per multiply-add) of one forward and the share of one rank."""

    tokens: int
    current_tokens: int
    history_tokens: int
    text_tokens: int
    flops_per_forward: float
    flops_per_rank: float
    allreduce_payload_bytes: int
    sp: int = 1
    alltoall_payload_bytes: int = 0


def count_params(config: HeliosConfig, tp: int = 1, dtype: torch.dtype = torch.bfloat16) -> ParamReport:
    """Build rank 0 of a TP group of `tp` on the meta device and count (never allocates)."""
    config.check_tp_size(tp)
    with torch.device("meta"):
        full = HeliosTransformer(config)
        shard = HeliosTransformer(config, tp_group=TPGroup(0, tp) if tp > 1 else None)
    shard.cast_(dtype)
    params = list(shard.parameters())
    return ParamReport(
        tp=tp,
        dtype=str(dtype).removeprefix("torch."),
        params_total=sum(p.numel() for p in full.parameters()),
        params_per_rank=sum(p.numel() for p in params),
        params_replicated=sum(p.numel() for p in params if p.shard_dim is None),
        bytes_per_rank=sum(p.numel() * p.element_size() for p in params),
    )


def forward_flops(
    config: HeliosConfig,
    tokens: int,
    *,
    history_tokens: int | None = None,
    text_tokens: int = TEXT_TOKENS,
    tp: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    sp: int = 1,
) -> FlopReport:
    """FLOPs of one forward over `tokens` (current + history) tokens attending to `text_tokens`,
    per rank under tensor parallelism `tp` or Ulysses sequence parallelism `sp` (not both)."""
    if tokens <= 0:
        raise ValueError(f"tokens={tokens} must be positive")
    if history_tokens is None:
        history_tokens = min(FULL_RES_HISTORY_TOKENS, tokens - 1)
    if not 0 <= history_tokens < tokens:
        raise ValueError(f"history_tokens={history_tokens} must be in [0, tokens={tokens})")
    config.check_tp_size(tp)
    if sp < 1 or config.num_attention_heads % sp:
        raise ValueError(f"sp={sp} must be >= 1 and divide num_attention_heads={config.num_attention_heads}")
    if sp > 1 and tp > 1:
        raise ValueError(f"tp={tp} and sp={sp}: combining tensor and sequence parallelism is not supported")
    d, f, n = config.inner_dim, config.ffn_dim, tokens
    cur = n - history_tokens
    cross = cur if config.guidance_cross_attn else n  # tokens that attend to the text
    patch_volume = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]

    self_attn = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # qkv, QK^T + AV, out
    cross_attn = 2 * cross * d * d + 2 * text_tokens * d * 2 * d + 2 * 2 * cross * text_tokens * d + 2 * cross * d * d
    ffn = 2 * 2 * n * d * f
    sharded = config.num_layers * (self_attn + cross_attn + ffn)
    # text projection, patch embedding (history counted at the fine patch: a lower bound), proj_out
    replicated = (
        2 * text_tokens * (config.text_dim * d + d * d)
        + 2 * n * config.in_channels * patch_volume * d
        + 2 * cur * d * config.out_dim * patch_volume
    )
    element = torch.empty((), dtype=dtype).element_size()
    # payload per block: all-reduce after attn1 out (all tokens), attn2 out (current), FFN down (all tokens)
    allreduce = 0 if tp == 1 else config.num_layers * (2 * n + cross) * d * element
    # Ulysses: q, k, v to heads and the output back, (sp-1)/sp of a rank's tokens leave it each time
    alltoall = 0 if sp == 1 else config.num_layers * 4 * -(-n // sp) * d * element * (sp - 1) // sp
    text_kv = config.num_layers * 2 * text_tokens * d * 2 * d  # every SP rank projects the whole text
    per_rank = sharded / tp + replicated if sp == 1 else (sharded - text_kv) / sp + text_kv + replicated
    return FlopReport(
        tokens=n,
        current_tokens=cur,
        history_tokens=history_tokens,
        text_tokens=text_tokens,
        flops_per_forward=float(sharded + replicated),
        flops_per_rank=float(per_rank),
        allreduce_payload_bytes=allreduce,
        sp=sp,
        alltoall_payload_bytes=alltoall,
    )


def report(
    preset: str, tp: int, dtype: str, tokens: int, history_tokens: int | None, text_tokens: int, sp: int = 1
) -> dict:
    """Both reports as one JSON-ready dict."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} must be one of {sorted(PRESETS)}")
    torch_dtype = resolve_dtype(dtype)
    config = PRESETS[preset]()
    params = count_params(config, tp, torch_dtype)
    flops = forward_flops(
        config, tokens, history_tokens=history_tokens, text_tokens=text_tokens, tp=tp, dtype=torch_dtype, sp=sp
    )
    out = {"preset": preset, **asdict(params), **asdict(flops)}
    out["gib_per_rank"] = round(params.bytes_per_rank / 2**30, 3)
    out["tflops_per_forward"] = round(flops.flops_per_forward / 1e12, 2)
    out["tflops_per_rank"] = round(flops.flops_per_rank / 1e12, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="14b", choices=sorted(PRESETS))
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--sp", type=int, default=1, help="Ulysses sequence-parallel size (weights replicated)")
    parser.add_argument("--dtype", default="bf16", choices=DTYPE_NAMES)
    parser.add_argument("--tokens", type=int, default=11040, help="current + history tokens per forward")
    parser.add_argument("--history-tokens", type=int, default=None, help=f"default {FULL_RES_HISTORY_TOKENS}")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS)
    args = parser.parse_args(argv)
    try:
        out = report(args.preset, args.tp, args.dtype, args.tokens, args.history_tokens, args.text_tokens, args.sp)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
