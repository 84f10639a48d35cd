"""Shape checks of the transformer's forward inputs: a wrong shape is a ValueError naming the
argument and what was expected, never an obscure error deep inside a conv or matmul."""

from __future__ import annotations

import torch

from helios.config import HeliosConfig


def _fail(name: str, message: str) -> None:
    raise ValueError(f"{name}: {message}")


def _check_latents(name: str, latents: torch.Tensor, cfg: HeliosConfig, batch: int | None) -> None:
    if not isinstance(latents, torch.Tensor):
        _fail(name, f"expected a tensor, got {type(latents).__name__}")
    if latents.ndim != 5:
        _fail(name, f"expected 5 dims (batch, channels, frames, height, width), got shape {list(latents.shape)}")
    if latents.shape[1] != cfg.in_channels:
        _fail(name, f"expected {cfg.in_channels} channels, got shape {list(latents.shape)}")
    if batch is not None and latents.shape[0] != batch:
        _fail(name, f"batch size {latents.shape[0]} differs from hidden_states' {batch}")
    if min(latents.shape[2:]) == 0:
        _fail(name, f"empty frames/height/width in shape {list(latents.shape)}")


def _check_indices(name: str, indices: torch.Tensor, frames: int, batch: int) -> None:
    if not isinstance(indices, torch.Tensor):
        _fail(name, f"expected a tensor, got {type(indices).__name__}")
    if indices.ndim != 2 or indices.shape[0] not in (1, batch) or indices.shape[1] != frames:
        _fail(name, f"expected shape [{batch} or 1, {frames}] (one index per frame), got {list(indices.shape)}")


def check_forward_inputs(
    cfg: HeliosConfig,
    *,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    indices_hidden_states: torch.Tensor | None,
    history: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
) -> torch.Tensor:
    """Validate every input; returns the timestep as a (batch,) tensor."""
    _check_latents("hidden_states", hidden_states, cfg, None)
    batch, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = cfg.patch_size
    if frames % p_t or height % p_h or width % p_w:
        dims = [frames, height, width]
        _fail("hidden_states", f"frames/height/width {dims} must divide by patch_size {list(cfg.patch_size)}")

    if not isinstance(timestep, torch.Tensor):
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
            _fail("timestep", f"expected a tensor or a number, got {type(timestep).__name__}")
        timestep = torch.tensor([timestep], device=hidden_states.device)
    timestep = timestep.reshape(-1) if timestep.ndim == 0 else timestep
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
        _fail("timestep", f"expected a scalar or shape [{batch}], got shape {list(timestep.shape)}")
    timestep = timestep.expand(batch)

    if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.ndim != 3:
        shape = list(getattr(encoder_hidden_states, "shape", []))
        _fail("encoder_hidden_states", f"expected shape [batch, tokens, {cfg.text_dim}], got {shape}")
    if encoder_hidden_states.shape[0] != batch or encoder_hidden_states.shape[2] != cfg.text_dim:
        _fail(
            "encoder_hidden_states",
            f"expected shape [{batch}, tokens, {cfg.text_dim}], got {list(encoder_hidden_states.shape)}",
        )
    if indices_hidden_states is not None:
        _check_indices("indices_hidden_states", indices_hidden_states, frames // p_t, batch)

    for term, (latents, indices) in history.items():
        lname, iname = f"latents_history_{term}", f"indices_latents_history_{term}"
        if (latents is None) != (indices is None):
            given, missing = (lname, iname) if indices is None else (iname, lname)
            _fail(missing, f"required when {given} is given")
        if latents is None:
            continue
        if not cfg.has_multi_term_memory_patch:
            _fail(lname, "this model has no multi-term memory patch (has_multi_term_memory_patch=False)")
        _check_latents(lname, latents, cfg, batch)
        if term == "short" and (latents.shape[3] % p_h or latents.shape[4] % p_w or latents.shape[2] % p_t):
            dims = list(latents.shape[2:])
            _fail(lname, f"frames/height/width {dims} must divide by patch_size {list(cfg.patch_size)}")
        _check_indices(iname, indices, latents.shape[2], batch)  # one index per latent frame
    short = history["short"][0]
    for term in ("mid", "long"):
        latents = history[term][0]
        if latents is not None and short is not None and latents.shape[3:] != short.shape[3:]:
            _fail(
                f"latents_history_{term}",
                f"height/width {list(latents.shape[3:])} differ from latents_history_short's {list(short.shape[3:])}",
            )
    return timestep
