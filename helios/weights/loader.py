"""`from_pretrained`: build the transformer on the meta device, allocate this rank's parameters
once in the target dtype and device, then fill each from its own slice of the checkpoint.

The model side (`load_weights`, `materialize_`) lives in `helios.model.load`; this module adds
what needs a checkpoint folder, so `helios.model` never imports `helios.weights`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from helios.config import HeliosConfig, resolve_transformer_dir
from helios.dtypes import resolve_dtype
from helios.model.load import LoadReport, load_weights, materialize_
from helios.model.transformer import HeliosTransformer
from helios.parallel.comm import tp_rank, tp_size
from helios.parallel.group import GroupLike, as_tp_group
from helios.weights.checkpoint import CheckpointIndex

logger = logging.getLogger(__name__)

def resolve_device(device: torch.device | str | None) -> torch.device:
    """None -> CPU; a CUDA device needs CUDA to be available."""
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    return device


def from_pretrained(
    path: str | Path,
    *,
    tp_group: GroupLike = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    return_report: bool = False,
    sp_group: GroupLike = None,
) -> HeliosTransformer | tuple[HeliosTransformer, LoadReport]:
    """Load a diffusers-format transformer folder (or a pipeline folder's `transformer/`) as this
    rank's shard. dtype defaults to float32 (diffusers' default), device to CPU. With `sp_group`
    (Ulysses sequence parallelism) the weights are replicated and the tokens split instead."""
    tp_group, sp_group = as_tp_group(tp_group), as_tp_group(sp_group, "sp_group")
    folder = resolve_transformer_dir(path)
    config = HeliosConfig.from_pretrained(folder)
    config.check_tp_size(tp_size(tp_group))
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    index = CheckpointIndex(folder)

    with torch.device("meta"):
        model = HeliosTransformer(config, tp_group=tp_group, sp_group=sp_group)
    model.cast_(dtype)
    materialize_(model, device)
    report = load_weights(model, index.slices())
    model.eval()
    logger.info(
        "loaded %s rank %d/%d: %d tensors, %.1f MiB read, dtype %s on %s",
        folder, tp_rank(tp_group), tp_size(tp_group), len(report.loaded), report.bytes_read / 2**20, dtype, device,
    )
    return (model, report) if return_report else model
