"""The tiny random pipeline folder: complete, loadable by diffusers, random everywhere, reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helios.pipeline.tiny import MARKER, make_tiny_pipeline


def test_folder_has_every_component(tiny_pipeline_dir):
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "HeliosPyramidPipeline"
    for component in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert component in index, component
        assert (tiny_pipeline_dir / component).is_dir(), component
    assert index["scheduler"][1] == "HeliosDMDScheduler"


def test_diffusers_loads_it(tiny_pipeline_dir):
    from diffusers import HeliosPyramidPipeline

    pipe = HeliosPyramidPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    cfg = pipe.transformer.config
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.num_layers) == (2, 32, 2)
    assert tuple(cfg.rope_dim) == (12, 10, 10)
    assert pipe.config.is_distilled
    assert pipe.text_encoder.config.d_model == cfg.text_dim == 32
    ids = pipe.tokenizer(["a red fox", "a blue fox"], padding="max_length", max_length=16).input_ids
    assert ids[0] != ids[1]
    assert ids[0][9] == pipe.tokenizer.eos_token_id  # 9 characters then </s>


def test_every_transformer_parameter_is_random(tiny_pipeline_dir):
    tensors = load_file(tiny_pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert len(tensors) > 50
    for name, value in tensors.items():
        flat = value.flatten()
        assert flat.numel() == 1 or not bool((flat == flat[0]).all()), f"{name} is constant"


def test_idempotent_and_deterministic(tiny_pipeline_dir, tmp_path):
    marker_mtime = (tiny_pipeline_dir / MARKER).stat().st_mtime_ns
    assert make_tiny_pipeline(tiny_pipeline_dir, seed=0) == tiny_pipeline_dir
    assert (tiny_pipeline_dir / MARKER).stat().st_mtime_ns == marker_mtime  # reused, not rewritten

    again = make_tiny_pipeline(tmp_path / "again", seed=0)
    for sub, fname in (("transformer", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")):
        a = load_file(tiny_pipeline_dir / sub / fname)
        b = load_file(again / sub / fname)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{sub}/{key} differs between two builds with seed 0"


def test_bad_variant_and_occupied_path(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        make_tiny_pipeline(tmp_path / "x", variant="huge")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        make_tiny_pipeline(occupied)
    assert (occupied / "precious.txt").read_text() == "keep me"
