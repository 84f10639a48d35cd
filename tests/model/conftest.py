"""Shared, session-scoped fixtures of the model tests: tiny random checkpoints and seeded inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helios.config import HeliosConfig
from helios.weights.tiny import make_tiny_transformer
from model_inputs import TP_CONFIG


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The DESIGN test config (2 heads), single safetensors file."""
    return make_tiny_transformer(tmp_path_factory.mktemp("tiny-transformer"), HeliosConfig.tiny(), seed=0)


@pytest.fixture(scope="session")
def tp_ckpt(tmp_path_factory) -> Path:
    """4-head tiny checkpoint saved by diffusers' save_pretrained in several shards."""
    return make_tiny_transformer(tmp_path_factory.mktemp("tp-transformer"), TP_CONFIG, seed=3, max_shard_size="300KB")


@pytest.fixture(scope="session")
def diffusers_ref():
    """Load a checkpoint with diffusers (the numerical oracle)."""
    from diffusers import HeliosTransformer3DModel

    def load(path: Path, dtype: torch.dtype = torch.float32):
        return HeliosTransformer3DModel.from_pretrained(path, torch_dtype=dtype).eval()

    return load
