"""The one table of dtype names a user may write (loader, pipeline presets, accounting, CLI).

Every spelling maps to a canonical torch name, so `"bf16"`, `"bfloat16"` and `torch.bfloat16`
mean the same thing wherever a dtype is accepted, and a bad one gets the same ValueError
naming the valid names. Importing this module does not import torch (the CLI stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DTYPE_ALIASES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""Accepted spelling -> canonical name (also `torch.<name>`)."""

DTYPE_NAMES: tuple[str, ...] = tuple(sorted(DTYPE_ALIASES))
"""Every accepted spelling, e.g. for argparse `choices`."""

ITEMSIZE: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per element of each canonical dtype."""


def dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype given as any accepted spelling or a `torch.dtype`."""
    key = (dtype if isinstance(dtype, str) else str(dtype)).removeprefix("torch.").lower()
    if key not in DTYPE_ALIASES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(DTYPE_NAMES)}")
    return DTYPE_ALIASES[key]


def resolve_dtype(dtype: Any, default: str = "float32") -> "torch.dtype":
    """The `torch.dtype` for `dtype` (None -> `default`)."""
    import torch  # here, not at module level: name-only users (CLI, configs) skip the torch import

    return getattr(torch, dtype_name(default if dtype is None else dtype))


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of `dtype`."""
    return ITEMSIZE[dtype_name(dtype)]
