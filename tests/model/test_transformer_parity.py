"""Our transformer against diffusers' HeliosTransformer3DModel on the same random weights."""

from __future__ import annotations

import pytest
import torch
from model_inputs import make_inputs

from helios.config import HeliosConfig
from helios.model import HeliosTransformer, HeliosTransformerOutput
from helios.weights import from_pretrained

FP32_TOL = 1e-5


def _ref(model, kwargs):
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


def _ours(model, kwargs, **extra):
    with torch.no_grad():
        return model(**kwargs, **extra)


@pytest.mark.parametrize("history", [True, False], ids=["with-history", "no-history"])
def test_fp32_parity_tp1(tiny_ckpt, diffusers_ref, history):
    ref = diffusers_ref(tiny_ckpt)
    ours = from_pretrained(tiny_ckpt)
    kwargs = make_inputs(batch=2, history=history)
    expected = _ref(ref, kwargs)
    got = _ours(ours, kwargs)
    assert got.shape == expected.shape == kwargs["hidden_states"].shape
    assert expected.abs().max() > 0.5  # a dead network would make parity meaningless
    assert (got - expected).abs().max().item() <= FP32_TOL


def test_fp32_parity_sharded_checkpoint_with_amplified_history(tp_ckpt, diffusers_ref):
    ref = diffusers_ref(tp_ckpt)
    ours = from_pretrained(tp_ckpt)
    kwargs = make_inputs(batch=1)
    assert (_ours(ours, kwargs) - _ref(ref, kwargs)).abs().max().item() <= FP32_TOL


def test_bf16_keeps_fp32_modules_and_matches_diffusers(tiny_ckpt, diffusers_ref):
    ref = diffusers_ref(tiny_ckpt, torch.bfloat16)
    ours = from_pretrained(tiny_ckpt, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in ours.named_parameters()}
    assert dtypes == {name: p.dtype for name, p in ref.named_parameters()}
    assert dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    kwargs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in make_inputs().items()}
    got, expected = _ours(ours, kwargs), _ref(ref, kwargs)
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max().item() <= 1e-2


def test_diffusers_state_dict_loads_with_same_names(tiny_ckpt, diffusers_ref):
    ref = diffusers_ref(tiny_ckpt)
    ours = HeliosTransformer(HeliosConfig.from_pretrained(tiny_ckpt))
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(ref.state_dict())
    kwargs = make_inputs(seed=5)
    assert (_ours(ours, kwargs) - _ref(ref, kwargs)).abs().max().item() <= FP32_TOL


def test_return_dict_compat(tiny_ckpt):
    model = from_pretrained(tiny_ckpt)
    kwargs = make_inputs(history=False)
    plain = _ours(model, kwargs)
    as_tuple = _ours(model, kwargs, return_dict=False)
    as_obj = _ours(model, kwargs, return_dict=True)
    assert isinstance(plain, torch.Tensor)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain)
    assert isinstance(as_obj, HeliosTransformerOutput) and torch.equal(as_obj.sample, plain)
    with model.cache_context("cond"):
        assert torch.equal(_ours(model, kwargs), plain)


@pytest.mark.parametrize(
    "flags",
    [
        dict(zero_history_timestep=False),
        dict(guidance_cross_attn=False),
        dict(cross_attn_norm=False),
        dict(is_amplify_history=True, history_scale_mode="scalar"),
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_feature_flags_match_diffusers(flags):
    from diffusers import HeliosTransformer3DModel

    from helios.weights.tiny import randomize_

    cfg = HeliosConfig.tiny(num_layers=1, **flags)
    ref = randomize_(HeliosTransformer3DModel(**cfg.to_diffusers_dict()), seed=7).eval()
    ours = HeliosTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    kwargs = make_inputs(batch=2, seed=3)
    assert (_ours(ours, kwargs) - _ref(ref, kwargs)).abs().max().item() <= FP32_TOL


def test_without_memory_patch_matches_diffusers():
    from diffusers import HeliosTransformer3DModel

    from helios.weights.tiny import randomize_

    cfg = HeliosConfig.tiny(num_layers=1, has_multi_term_memory_patch=False)
    ref = randomize_(HeliosTransformer3DModel(**cfg.to_diffusers_dict()), seed=7).eval()
    ours = HeliosTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    kwargs = make_inputs(batch=1, history=False)
    assert (_ours(ours, kwargs) - _ref(ref, kwargs)).abs().max().item() <= FP32_TOL
    with pytest.raises(ValueError, match="latents_history_short: this model has no multi-term memory patch"):
        ours(**make_inputs(batch=1))
