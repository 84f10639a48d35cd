"""Attention backend: which kernel runs softmax(q k^T / sqrt(d)) v, chosen once at start-up.

The choice is explicit and logged: `select_backend(device, dtype)` ranks what the device can
run (FlashAttention-3 > cuDNN SDPA > flash SDPA > memory-efficient SDPA on Hopper; the
`flash-attn` package's FA2 first on Ampere/Ada; torch's SDPA dispatch on CPU, whose fused
CPU kernel beats `math`), and a forced backend that the
device cannot run raises instead of silently using another one. `attend` runs the chosen one.

Backends (config key `fast.attention`):
- `sdpa`: torch's own dispatcher (whatever F.scaled_dot_product_attention picks; the eager
  reference the parity tests were written against);
- `math`, `flash`, `efficient`, `cudnn`: that SDPA kernel only (`torch.nn.attention.sdpa_kernel`);
- `fa3`: `flash_attn_interface.flash_attn_func` (FlashAttention-3, Hopper build of flash-attn);
- `fa2`: `flash_attn.flash_attn_func` (the `flash-attn` PyPI package, a CUDA build).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)

Backend = Literal["sdpa", "math", "flash", "efficient", "cudnn", "fa2", "fa3"]
BackendRequest = Literal["auto", "sdpa", "math", "flash", "efficient", "cudnn", "fa2", "fa3"]
BACKENDS: tuple[str, ...] = ("sdpa", "math", "flash", "efficient", "cudnn", "fa2", "fa3")

_SDPA_KERNELS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
_HALF = (torch.float16, torch.bfloat16)

# Fastest first, by GPU generation (compute capability major). FA3 kernels exist for sm90 only;
# on Hopper cuDNN's fused attention beats torch's bundled FA2 ("flash").
_RANKING_HOPPER = ("fa3", "cudnn", "flash", "fa2", "efficient", "math")
_RANKING_AMPERE = ("fa2", "flash", "cudnn", "efficient", "math")
_RANKING_OLDER = ("efficient", "math")
# math is the unfused reference kernel: always available, slowest.


class AttentionBackendError(ValueError):
    """The requested attention backend cannot run on this device / dtype."""


@dataclass(frozen=True)
class DeviceCapabilities:
    """What the selection looks at; `probe(device)` fills it, tests construct it directly."""

    device_type: str
    """'cpu' or 'cuda'."""
    compute_capability: tuple[int, int] | None = None
    """(major, minor) of the GPU; None on CPU."""
    has_fa3: bool = False
    """`flash_attn_interface` (FlashAttention-3 Hopper build) is importable."""
    has_fa2: bool = False
    """`flash_attn` (the flash-attn package, CUDA build) is importable."""
    sdpa_flash: bool = False
    """torch was built with its flash SDPA kernels (CUDA)."""
    sdpa_cudnn: bool = False
    """torch's cuDNN SDPA can run (cuDNN >= 9 with a CUDA build)."""

    @classmethod
    def probe(cls, device: torch.device | str) -> "DeviceCapabilities":
        """Inspect the real device and the installed kernels (no import of the kernels themselves)."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(device_type=device.type)
        cudnn_version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return cls(
            device_type="cuda",
            compute_capability=torch.cuda.get_device_capability(device),
            has_fa3=importlib.util.find_spec("flash_attn_interface") is not None,
            has_fa2=importlib.util.find_spec("flash_attn") is not None,
            sdpa_flash=bool(torch.backends.cuda.is_flash_attention_available()),
            sdpa_cudnn=cudnn_version is not None and cudnn_version >= 90000,
        )


@dataclass(frozen=True)
class AttentionChoice:
    """The backend in force and why (the start-up log line)."""

    backend: Backend
    reason: str


def supports(backend: str, caps: DeviceCapabilities, dtype: torch.dtype) -> str | None:
    """None when `backend` can run here with `dtype`, else why not (a sentence fragment)."""
    if backend not in BACKENDS:
        return f"unknown backend (known: auto, {', '.join(BACKENDS)})"
    if backend in ("sdpa", "math"):
        return None
    if caps.device_type != "cuda":
        return f"needs a CUDA device, this is {caps.device_type}"
    major = (caps.compute_capability or (0, 0))[0]
    if backend == "efficient":
        return None if major >= 5 else f"needs compute capability >= 5.0, got {caps.compute_capability}"
    if dtype not in _HALF:
        return f"needs float16/bfloat16 inputs, got {dtype}"
    if backend == "fa3":
        if major != 9:
            return f"FlashAttention-3 runs on Hopper (sm90) only, got {caps.compute_capability}"
        return None if caps.has_fa3 else "flash_attn_interface (FlashAttention-3) is not installed"
    if major < 8:
        return f"needs compute capability >= 8.0, got {caps.compute_capability}"
    if backend == "fa2":
        return None if caps.has_fa2 else "the flash-attn package is not installed"
    if backend == "flash":
        return None if caps.sdpa_flash else "this torch build has no flash SDPA kernels"
    return None if caps.sdpa_cudnn else "cuDNN >= 9 is not available to torch"


def select_backend(
    device: torch.device | str,
    dtype: torch.dtype,
    requested: BackendRequest = "auto",
    caps: DeviceCapabilities | None = None,
) -> AttentionChoice:
    """The backend to run: `requested` if the device can run it (else AttentionBackendError),
    or for 'auto' the fastest one it can; logs the choice once."""
    caps = caps or DeviceCapabilities.probe(device)
    if requested != "auto":
        why_not = supports(requested, caps, dtype)
        if why_not is not None:
            raise AttentionBackendError(f"attention: backend {requested!r} cannot run here: {why_not}")
        choice = AttentionChoice(backend=requested, reason="forced by config")  # type: ignore[arg-type]
    else:
        choice = _auto(caps, dtype)
    logger.info(
        "attention backend %s on %s%s %s (%s)",
        choice.backend,
        caps.device_type,
        "" if caps.compute_capability is None else f" sm{caps.compute_capability[0]}{caps.compute_capability[1]}",
        str(dtype).removeprefix("torch."),
        choice.reason,
    )
    return choice


def _auto(caps: DeviceCapabilities, dtype: torch.dtype) -> AttentionChoice:
    if caps.device_type != "cuda":
        # torch's own dispatch picks its fused CPU kernel: 1.9-2.7x faster than `math` on the tiny
        # model here (bench/bench_fast.py --parts attention), same numbers within 2e-6
        return AttentionChoice(backend="sdpa", reason=f"torch SDPA dispatch (fused CPU kernel) on {caps.device_type}")
    major = (caps.compute_capability or (0, 0))[0]
    ranking = _RANKING_HOPPER if major >= 9 else _RANKING_AMPERE if major >= 8 else _RANKING_OLDER
    skipped = []
    for backend in ranking:
        why_not = supports(backend, caps, dtype)
        if why_not is None:
            reason = "fastest available" + (f"; skipped {'; '.join(skipped)}" if skipped else "")
            return AttentionChoice(backend=backend, reason=reason)  # type: ignore[arg-type]
        skipped.append(f"{backend}: {why_not}")
    raise AttentionBackendError(f"attention: no backend can run on {caps}")  # math always can: unreachable


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, L, H, D) tensors -> (B, Lq, H, D), no mask, no dropout."""
    if backend == "fa3":
        from flash_attn_interface import flash_attn_func as fa3_func

        out = fa3_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    if backend == "fa2":
        from flash_attn import flash_attn_func as fa2_func

        return fa2_func(q, k, v)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    with sdpa_kernel(_SDPA_KERNELS[backend]):
        return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


def set_attention_backend(model: torch.nn.Module, backend: str) -> int:
    """Point every attention module of `model` (those with an `attn_backend` attribute) at
    `backend`; returns how many were set."""
    if backend not in BACKENDS:
        raise AttentionBackendError(f"attention: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    count = 0
    for module in model.modules():
        if hasattr(module, "attn_backend"):
            module.attn_backend = backend
            count += 1
    return count
