"""`helios check`: will a preset fit, and how is it split? Device, TP plan, memory per rank.

Uses `helios.accounting` (the model area's exact numbers) when it is installed; otherwise
counts parameters from the config fields with the Megatron split of DESIGN section 4.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, is_dataclass
from typing import Any

log = logging.getLogger(__name__)

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# Fallback presets (diffusers field names) used only when helios.config is unavailable.
_PRESETS: dict[str, dict[str, Any]] = {
    "14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                cross_attn_norm=True, has_multi_term_memory_patch=True, height=384, width=640),
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16,
                 out_channels=16, text_dim=32, freq_dim=256, ffn_dim=128, num_layers=2,
                 cross_attn_norm=True, has_multi_term_memory_patch=True, height=128, width=128),
}


def preset_config(preset: str) -> dict[str, Any]:
    """The transformer config of a preset as a dict (from helios.config when present)."""
    name = preset.lower().replace("-", "").replace("_", "")
    if name in ("14b", "helios14b"):
        key, factory = "14b", "helios_14b"
    elif name in ("tiny", "heliostiny"):
        key, factory = "tiny", "tiny"
    else:
        raise ValueError(f"preset: unknown preset {preset!r}; choose '14b' or 'tiny'")
    cfg = dict(_PRESETS[key])
    try:
        from helios.config import HeliosConfig  # the model area's typed config

        obj = getattr(HeliosConfig, factory)()
        fields = obj.model_dump() if hasattr(obj, "model_dump") else asdict(obj) if is_dataclass(obj) else vars(obj)
        cfg.update({k: v for k, v in fields.items() if k in cfg})
    except Exception as exc:  # noqa: BLE001 - optional dependency on another area's module
        log.debug("helios.config unavailable (%s); using built-in preset", exc)
    return cfg


def count_parameters(cfg: dict[str, Any], tp: int = 1) -> dict[str, int]:
    """Parameters held by one rank: {'replicated', 'sharded', 'per_rank', 'total'}."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    f, t, fq, c = cfg["ffn_dim"], cfg["text_dim"], cfg["freq_dim"], cfg["in_channels"]
    pt, ph, pw = cfg["patch_size"]
    patch = pt * ph * pw
    rep = d * c * patch + d  # patch_embedding
    if cfg.get("has_multi_term_memory_patch", True):
        rep += d * c * patch + d  # short (same patch)
        rep += d * c * patch * 8 + d  # mid (2x each axis)
        rep += d * c * patch * 64 + d  # long (4x each axis)
    rep += fq * d + d + d * d + d  # time embedder
    rep += 6 * d * d + 6 * d  # time projection (adaLN)
    rep += t * d + d + d * d + d  # text embedder
    rep += 2 * d  # norm_out table
    rep += cfg["out_channels"] * patch * d + cfg["out_channels"] * patch  # proj_out
    per_block_rep = 6 * d + (2 * d if cfg.get("cross_attn_norm", True) else 0)  # adaLN table, norm2
    per_block_rep += 2 * d + d  # out-proj biases (attn1, attn2) and ffn down bias: added after all-reduce
    attn_sharded = 3 * (d * d + d) + d * d + 2 * d  # q, k, v (+bias), out weight, q/k norm weights
    per_block_sharded = 2 * attn_sharded + (f * d + f) + d * f
    layers = cfg["num_layers"]
    sharded = layers * per_block_sharded
    replicated = rep + layers * per_block_rep
    if sharded % tp:
        raise ValueError(f"tp: {tp} does not divide the sharded weights evenly")
    return {"replicated": replicated, "sharded": sharded, "per_rank": replicated + sharded // tp,
            "total": replicated + sharded}


def tp_plan(cfg: dict[str, Any], tp: int, dtype: str = "bf16", params: dict[str, int] | None = None) -> dict[str, Any]:
    """The TP split and memory per rank of `cfg` over `tp` ranks (`params`: exact counts, if known)."""
    heads = cfg["num_attention_heads"]
    if tp < 1 or heads % tp or cfg["ffn_dim"] % tp:
        valid = [n for n in range(1, heads + 1) if heads % n == 0 and cfg["ffn_dim"] % n == 0]
        raise ValueError(f"tp: {tp} must divide num_attention_heads={heads} and ffn_dim={cfg['ffn_dim']}; "
                         f"valid sizes: {valid}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    nbytes = DTYPE_BYTES[dtype]
    source = "helios.accounting" if params else "built-in count"
    params = params or count_parameters(cfg, tp)
    d = heads * cfg["attention_head_dim"]
    pt, ph, pw = cfg["patch_size"]
    lat_t, lat_h, lat_w = 9, cfg["height"] // 8, cfg["width"] // 8
    current = (lat_t // pt) * (lat_h // ph) * (lat_w // pw)
    # History 16 long / 2 mid / 1 short (+ the anchor frame), each with its own patch size.
    short = 2 * (lat_h // ph) * (lat_w // pw)
    mid = (2 // (2 * pt)) * (lat_h // (2 * ph)) * (lat_w // (2 * pw))
    long = (16 // (4 * pt)) * (lat_h // (4 * ph)) * (lat_w // (4 * pw))
    history = short + mid + long
    tokens = current + history
    allreduce_bytes = tokens * d * nbytes
    # Peak activations of one block at a time (inference, no autograd): hidden + residual,
    # the local q/k/v and the local FFN hidden, each tokens-long.
    activations = tokens * nbytes * (3 * d + 3 * d // tp + cfg["ffn_dim"] // tp)
    weights = params["per_rank"] * nbytes
    return {
        "tp": tp,
        "dtype": dtype,
        "params_source": source,
        "heads_per_rank": heads // tp,
        "ffn_per_rank": cfg["ffn_dim"] // tp,
        "params_total": params["total"],
        "params_per_rank": params["per_rank"],
        "params_replicated": params["replicated"],
        "weights_gib_per_rank": round(weights / GIB, 2),
        "tokens_per_forward": tokens,
        "allreduces_per_forward": 3 * cfg["num_layers"] if tp > 1 else 0,
        "allreduce_mb": round(allreduce_bytes / 1e6, 1),
        "activations_gib_per_rank": round(activations / GIB, 2),
        "total_gib_per_rank": round((weights + activations) / GIB, 2),
    }


def accounting_params(preset: str, tp: int, dtype: str = "bf16") -> dict[str, int] | None:
    """Exact per-rank counts from the model area's `helios.accounting` (None when unavailable)."""
    try:
        import torch

        from helios.accounting import count_params
        from helios.config import HeliosConfig

        name = preset.lower().replace("-", "").replace("_", "")
        config = HeliosConfig.tiny() if name in ("tiny", "heliostiny") else HeliosConfig.helios_14b()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        report = count_params(config, tp, torch_dtype)
    except Exception as exc:  # noqa: BLE001 - optional: fall back to our own count
        log.debug("helios.accounting unavailable (%s); using the built-in count", exc)
        return None
    sharded = (report.params_per_rank - report.params_replicated) * tp
    return {"replicated": report.params_replicated, "sharded": sharded,
            "per_rank": report.params_per_rank, "total": report.params_total}


def device_info() -> dict[str, Any]:
    """What this machine offers: CUDA GPUs with their memory, else CPU cores and RAM."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpus"] = [
                {"index": i, "name": torch.cuda.get_device_name(i),
                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / GIB, 1)}
                for i in range(torch.cuda.device_count())
            ]
            return info
    except Exception as exc:  # noqa: BLE001 - torch missing or broken CUDA: report CPU
        log.debug("no CUDA (%s)", exc)
    info["device"] = "cpu"
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def check(preset: str, tp: int, dtype: str = "bf16") -> dict[str, Any]:
    """Device + plan + a verdict on whether each rank fits its GPU."""
    cfg = preset_config(preset)
    tp_plan(cfg, tp, dtype)  # validates tp and dtype before the (slower) exact count
    plan = tp_plan(cfg, tp, dtype, accounting_params(preset, tp, dtype))
    dev = device_info()
    verdict = "no GPU here: plan only (CPU serves the tiny preset)"
    gpus = dev.get("gpus") or []
    if gpus:
        if len(gpus) < tp:
            verdict = f"needs {tp} GPUs per session, this machine has {len(gpus)}"
        else:
            free = min(g["memory_gib"] for g in gpus[:tp])
            fits = plan["total_gib_per_rank"] <= free * 0.9
            verdict = ("fits" if fits else "does not fit") + f": {plan['total_gib_per_rank']} GiB per rank of {free} GiB"
    return {"preset": preset, "device": dev, "plan": plan, "verdict": verdict}
