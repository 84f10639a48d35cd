"""`helios check`: will a preset fit, and how is it split? Device, TP plan, memory per rank.

Parameter counts come from `helios.accounting` (the model built on the meta device), the
model configs from `helios.config`; this module only adds the token count of a chunk at the
preset's frame size, the memory per rank and the verdict for this machine.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from helios.accounting import PRESETS, count_params
from helios.config import HeliosConfig
from helios.dtypes import dtype_bytes

log = logging.getLogger(__name__)

GIB = 1024**3
FRAME_SIZE = {"14b": (384, 640), "tiny": (128, 128)}
"""(height, width) each preset streams at (configs/models/14b-*.yaml, tiny-cpu.yaml)."""

_PRESET_NAMES = {"14b": "14b", "helios14b": "14b", "tiny": "tiny", "heliostiny": "tiny"}


def _preset_key(preset: str) -> str:
    key = _PRESET_NAMES.get(preset.lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ValueError(f"preset: unknown preset {preset!r}; choose '14b' or 'tiny'")
    return key


def preset_config(preset: str) -> dict[str, Any]:
    """The preset's transformer config (diffusers field names) plus its frame `height`/`width`."""
    key = _preset_key(preset)
    height, width = FRAME_SIZE[key]
    return {**PRESETS[key]().model_dump(), "height": height, "width": width}


def count_parameters(cfg: dict[str, Any], tp: int = 1) -> dict[str, int]:
    """Parameters held by one rank: {'replicated', 'sharded', 'per_rank', 'total'}."""
    report = count_params(HeliosConfig(**cfg), tp)
    sharded = (report.params_per_rank - report.params_replicated) * tp
    return {"replicated": report.params_replicated, "sharded": sharded,
            "per_rank": report.params_per_rank, "total": report.params_total}


def tp_plan(cfg: dict[str, Any], tp: int, dtype: str = "bf16") -> dict[str, Any]:
    """The TP split and memory per rank of `cfg` (from `preset_config`) over `tp` ranks."""
    heads = cfg["num_attention_heads"]
    if tp < 1 or heads % tp or cfg["ffn_dim"] % tp:
        valid = [n for n in range(1, heads + 1) if heads % n == 0 and cfg["ffn_dim"] % n == 0]
        raise ValueError(f"tp: {tp} must divide num_attention_heads={heads} and ffn_dim={cfg['ffn_dim']}; "
                         f"valid sizes: {valid}")
    nbytes = dtype_bytes(dtype)
    params = count_parameters(cfg, tp)
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
        "params_source": "helios.accounting",
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


def device_info() -> dict[str, Any]:
    """What this machine offers: CUDA GPUs with their memory, else CPU cores and RAM."""
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        if torch.cuda.is_available():
            info["device"] = "cuda"
            info["gpus"] = [
                {"index": i, "name": torch.cuda.get_device_name(i),
                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / GIB, 1)}
                for i in range(torch.cuda.device_count())
            ]
            return info
    except RuntimeError as exc:  # a CUDA build on a machine whose driver cannot be queried
        log.warning("CUDA is present but unusable (%s); reporting the CPU", exc)
    info["device"] = "cpu"
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def check(preset: str, tp: int, dtype: str = "bf16") -> dict[str, Any]:
    """Device + plan + a verdict on whether each rank fits its GPU."""
    cfg = preset_config(preset)
    plan = tp_plan(cfg, tp, dtype)
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
