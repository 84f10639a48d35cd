"""Config and forward-input validation: every bad value gives a ValueError naming it."""

from __future__ import annotations

import json

import pytest
import torch
from model_inputs import make_inputs

from helios.config import HeliosConfig
from helios.weights import from_pretrained


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return from_pretrained(tiny_ckpt)


def test_tiny_preset_matches_design():
    cfg = HeliosConfig.tiny()
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.rope_dim) == (2, 32, (12, 10, 10))
    assert (cfg.num_layers, cfg.text_dim, cfg.ffn_dim, cfg.patch_size) == (2, 32, 128, (1, 2, 2))
    assert (cfg.in_channels, cfg.out_dim) == (16, 16)
    assert cfg.guidance_cross_attn and cfg.zero_history_timestep and cfg.has_multi_term_memory_patch
    assert cfg.cross_attn_norm and cfg.qk_norm == "rms_norm_across_heads"


def test_14b_preset_and_json_roundtrip(tmp_path):
    cfg = HeliosConfig.helios_14b()
    assert cfg.inner_dim == 5120 and cfg.num_layers == 40 and cfg.rope_dim == (44, 42, 42)
    cfg.save_json(tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["_class_name"] == "HeliosTransformer3DModel"
    assert HeliosConfig.from_pretrained(tmp_path) == cfg


def test_reads_diffusers_config(tiny_ckpt):
    assert HeliosConfig.from_pretrained(tiny_ckpt) == HeliosConfig.tiny()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(rope_dim=(12, 10, 12)), r"rope_dim=\(12, 10, 12\) sums to 34, but attention_head_dim=32"),
        (dict(rope_dim=(11, 11, 10)), r"rope_dim=\(11, 11, 10\): every entry must be even"),
        (dict(qk_norm="layer_norm"), r"qk_norm='layer_norm' is not supported"),
        (dict(num_layers=0), r"num_layers"),
        (dict(history_scale_mode="x"), r"history_scale_mode='x'"),
    ],
)
def test_bad_config_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        HeliosConfig.tiny(**overrides)


def test_bad_config_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HeliosConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": "many"}))
    with pytest.raises(ValueError, match="num_attention_heads"):
        HeliosConfig.from_pretrained(tmp_path)


def _with(**changes):
    kwargs = make_inputs(batch=1)
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(hidden_states=torch.randn(1, 8, 3, 8, 8)), r"hidden_states: expected 16 channels"),
        (dict(hidden_states=torch.randn(16, 3, 8, 8)), r"hidden_states: expected 5 dims"),
        (dict(hidden_states=torch.randn(1, 16, 3, 7, 8)), r"hidden_states: .* must divide by patch_size"),
        (dict(encoder_hidden_states=torch.randn(1, 7, 33)), r"encoder_hidden_states: expected shape \[1, tokens, 32\]"),
        (dict(timestep=torch.tensor([1, 2, 3])), r"timestep: expected a scalar or shape \[1\]"),
        (dict(timestep="late"), r"timestep: expected a tensor or a number, got str"),
        (dict(indices_hidden_states=torch.tensor([[0, 1]])), r"indices_hidden_states: expected shape \[1 or 1, 3\]"),
        (dict(indices_latents_history_mid=None), r"indices_latents_history_mid: required when latents_history_mid"),
        (dict(latents_history_long=torch.randn(2, 16, 16, 16, 16)), r"latents_history_long: batch size 2"),
        (dict(latents_history_mid=torch.randn(1, 16, 2, 8, 8)), r"latents_history_mid: height/width \[8, 8\] differ"),
    ],
)
def test_bad_forward_inputs(model, changes, message):
    with pytest.raises(ValueError, match=message):
        model(**_with(**changes))


def test_scalar_timestep_broadcasts(model):
    kwargs = make_inputs(batch=2, history=False)
    with torch.no_grad():
        a = model(**{**kwargs, "timestep": torch.tensor(500)})
        b = model(**{**kwargs, "timestep": torch.tensor([500, 500])})
        c = model(**{**kwargs, "timestep": 500})
    assert torch.equal(a, b) and torch.equal(a, c)
