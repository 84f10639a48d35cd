"""Attention backend: the selection given device capabilities, forced choices that cannot run,
and the CPU backend (SDPA math) against the eager reference."""

from __future__ import annotations

import logging

import pytest
import torch
from model_inputs import make_inputs

from helios.model.attention import (
    AttentionBackendError,
    DeviceCapabilities,
    attend,
    select_backend,
    set_attention_backend,
)
from helios.weights import from_pretrained

H100 = dict(device_type="cuda", compute_capability=(9, 0), sdpa_flash=True, sdpa_cudnn=True)
A100 = dict(device_type="cuda", compute_capability=(8, 0), sdpa_flash=True, sdpa_cudnn=True)
BF16 = torch.bfloat16


@pytest.mark.parametrize(
    ("caps", "dtype", "expected"),
    [
        (dict(H100, has_fa3=True, has_fa2=True), BF16, "fa3"),
        (dict(H100, has_fa2=True), BF16, "cudnn"),  # no FA3 build: cuDNN beats FA2 on Hopper
        (dict(H100, sdpa_cudnn=False), BF16, "flash"),
        (dict(A100, has_fa3=True, has_fa2=True), BF16, "fa2"),  # FA3 kernels are sm90-only
        (dict(A100), BF16, "flash"),
        (dict(H100, has_fa3=True), torch.float32, "efficient"),  # fused fp32 kernels: mem-efficient only
        (dict(device_type="cuda", compute_capability=(7, 5), sdpa_flash=True), torch.float16, "efficient"),
        (dict(device_type="cpu"), torch.float32, "sdpa"),  # torch's fused CPU kernel beats math
        (dict(device_type="cpu"), BF16, "sdpa"),
    ],
)
def test_auto_picks_the_fastest_backend_the_device_runs(caps, dtype, expected):
    assert select_backend("cuda" if caps["device_type"] == "cuda" else "cpu", dtype, "auto",
                          DeviceCapabilities(**caps)).backend == expected


@pytest.mark.parametrize(
    ("caps", "dtype", "forced", "why"),
    [
        (dict(device_type="cpu"), torch.float32, "flash", "needs a CUDA device"),
        (dict(A100, has_fa3=True), BF16, "fa3", "Hopper"),
        (dict(H100), BF16, "fa3", "not installed"),
        (dict(H100), BF16, "fa2", "not installed"),
        (dict(H100, sdpa_cudnn=False), BF16, "cudnn", "cuDNN"),
        (dict(H100), torch.float32, "flash", "float16/bfloat16"),
        (dict(device_type="cpu"), torch.float32, "xformers", "unknown backend"),
    ],
)
def test_forced_backend_that_cannot_run_raises_naming_the_key(caps, dtype, forced, why):
    with pytest.raises(AttentionBackendError, match=f"attention: backend '{forced}'.*{why}"):
        select_backend("cpu", dtype, forced, DeviceCapabilities(**caps))


def test_forced_backend_that_runs_is_used_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="helios.model.attention"):
        choice = select_backend("cuda", BF16, "flash", DeviceCapabilities(**H100))
    assert choice.backend == "flash" and choice.reason == "forced by config"
    assert "attention backend flash on cuda sm90 bfloat16 (forced by config)" in caplog.text


def test_probe_on_this_cpu_selects_torch_dispatch(caplog):
    with caplog.at_level(logging.INFO, logger="helios.model.attention"):
        choice = select_backend("cpu", torch.float32)
    assert choice.backend == "sdpa"
    assert "attention backend sdpa on cpu float32 (torch SDPA dispatch" in caplog.text


def test_math_backend_equals_reference_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 37, 3, 16, generator=g) for _ in range(3))
    k = k[:, :29]
    v = v[:, :29]
    weights = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / 4.0, dim=-1)
    expected = torch.einsum("bhlm,bmhd->blhd", weights, v.double())
    for backend in ("math", "sdpa"):
        got = attend(q, k, v, backend)
        assert got.shape == (2, 37, 3, 16)
        assert (got.double() - expected).abs().max().item() <= 1e-5, backend
    assert (attend(q, k, v, "math") - attend(q, k.flip(1), v, "math")).abs().max().item() > 1e-2  # can fail


def test_model_with_math_backend_matches_eager_sdpa(tiny_ckpt):
    model = from_pretrained(tiny_ckpt)
    with torch.no_grad():
        reference = model(**make_inputs())
        assert set_attention_backend(model, "math") == 2 * model.config.num_layers
        got = model(**make_inputs())
        other = model(**make_inputs(seed=2))
    assert (got - reference).abs().max().item() <= 1e-5
    assert (other - reference).abs().max().item() > 1e-1
