"""Tiny random Helios transformer checkpoints for tests and demos (diffusers format, no download).

Every parameter is randomised (no zero-initialised layer survives), with scales that keep the
activations of a random network in a sane range, so parity tests exercise every weight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from helios.config import CONFIG_NAME, HeliosConfig

DEFAULT_SEED = 0


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = DEFAULT_SEED) -> nn.Module:
    """Overwrite every parameter with seeded random values (by name order, so any two models with
    the same parameter names and shapes get the same values)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if "scale_shift_table" in name:
            value = noise / math.sqrt(param.shape[-1])
        elif leaf == "bias":
            value = 0.1 * noise
        elif param.ndim == 1:  # norm weights, history key scale
            value = 1.0 + 0.1 * noise
        else:
            fan_in = param[0].numel()
            value = noise / math.sqrt(fan_in)
        param.copy_(value.to(param.dtype))
    return model


def make_tiny_transformer(
    path: str | Path,
    config: HeliosConfig | None = None,
    *,
    seed: int = DEFAULT_SEED,
    max_shard_size: str | int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a diffusers-format transformer folder (config.json + safetensors, sharded when
    `max_shard_size` is given) with random weights; returns the folder. Idempotent: an existing
    folder with the same config is left alone."""
    from diffusers import HeliosTransformer3DModel

    path = Path(path)
    config = config or HeliosConfig.tiny()
    config_file = path / CONFIG_NAME
    if config_file.is_file():
        existing = HeliosConfig.from_json(config_file)
        if existing == config:
            return path
    model = HeliosTransformer3DModel(**config.to_diffusers_dict())
    randomize_(model, seed)
    if dtype != torch.float32:
        model = model.to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    (path / "helios_tiny.json").write_text(json.dumps({"seed": seed, "dtype": str(dtype)}) + "\n")
    return path
