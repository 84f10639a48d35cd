"""Filling a built model's parameters: each tensor goes to its parameter's own loader.

Lives with the model because it needs nothing but the parameters and their loaders; reading
a checkpoint folder and building the model for it is `helios.weights.from_pretrained`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from helios.model.layers import weight_loader_of

# Checkpoint keys diffusers itself ignores when loading this model.
IGNORED_UNEXPECTED = (re.compile(r"norm_added_q"),)


@dataclass
class LoadReport:
    """What one rank loaded: tensor names and the bytes it read from the checkpoint."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    bytes_read: int = 0


def materialize_(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Replace every meta parameter by uninitialised storage on `device` (same dtype/shape),
    keeping its loader attributes. One allocation per parameter, no full-model copy."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            new = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device), requires_grad=False)
            new.__dict__.update(param.__dict__)
            module._parameters[name] = new
    return model


def load_weights(model: nn.Module, tensors: Iterable[tuple[str, Any]], *, strict: bool = True) -> LoadReport:
    """Feed (name, tensor-or-slice) pairs to each parameter's own loader. With `strict`, any
    missing, unexpected or misshaped tensor raises a ValueError naming all of them."""
    params = dict(model.named_parameters())
    report = LoadReport()
    unexpected: list[str] = []
    misshaped: dict[str, str] = {}
    for name, source in tensors:
        param = params.get(name)
        if param is None:
            if any(p.search(name) for p in IGNORED_UNEXPECTED):
                report.ignored.append(name)
            else:
                unexpected.append(name)
            continue
        try:
            report.bytes_read += weight_loader_of(param)(param, source)
        except ValueError as exc:
            misshaped[name] = f"{name}: {exc}"
            continue
        report.loaded.append(name)
    missing = sorted(set(params) - set(report.loaded) - set(misshaped))
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {sorted(unexpected)}")
    if misshaped:
        problems.append(f"misshaped tensors {sorted(misshaped.values())}")
    if problems and (strict or misshaped):
        raise ValueError("checkpoint does not match the Helios transformer: " + "; ".join(problems))
    return report
