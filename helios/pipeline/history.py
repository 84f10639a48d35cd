"""The multi-term memory: a fixed window of past latent frames plus the anchor frame.

The reference pipeline keeps concatenating every generated latent and slices the last 19;
an endless stream keeps only those 19 (a fixed-size buffer), so memory never grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HistoryViews:
    """What the transformer reads from memory for one chunk (all in the transformer dtype)."""

    short: torch.Tensor
    """Anchor frame + the latest `history_sizes[2]` frames (patchified 1x2x2)."""
    mid: torch.Tensor
    long: torch.Tensor
    indices_hidden: torch.Tensor
    indices_short: torch.Tensor
    indices_mid: torch.Tensor
    indices_long: torch.Tensor


class HistoryMemory:
    """Fixed window of the last sum(history_sizes) latent frames and the anchor (first) frame."""

    def __init__(self, *, channels: int, latent_hw: tuple[int, int], history_sizes: list[int], chunk_frames: int,
                 device: torch.device):
        self.history_sizes = list(history_sizes)
        self.window = sum(history_sizes)
        self.chunk_frames = chunk_frames
        self.shape = (1, channels, self.window, *latent_hw)
        self.device = device
        self.latents = torch.zeros(self.shape, device=device, dtype=torch.float32)
        self.anchor: torch.Tensor | None = None
        """(1, C, 1, h, w) kept-first-frame latent; None until chunk 0 (T2V) or an image sets it."""
        self._indices = self._build_indices()

    def clear(self) -> None:
        """Back to the empty memory of a fresh stream (zeros, no anchor)."""
        self.latents = torch.zeros(self.shape, device=self.device, dtype=torch.float32)
        self.anchor = None

    def push(self, chunk_latents: torch.Tensor) -> None:
        """Append a chunk's latents and drop the oldest frames beyond the window."""
        merged = torch.cat([self.latents, chunk_latents.to(self.latents.dtype)], dim=2)
        self.latents = merged[:, :, -self.window:].contiguous()

    def replace_tail(self, latents: torch.Tensor) -> None:
        """Put given latents (video or fake-image frames) at the newest end of the window."""
        n = latents.shape[2]
        if n >= self.window:
            self.latents = latents[:, :, -self.window:].to(self.latents.dtype).contiguous()
        else:
            self.latents = torch.cat([self.latents[:, :, : self.window - n], latents.to(self.latents.dtype)], dim=2)

    def views(self, dtype: torch.dtype) -> HistoryViews:
        """Split the window long/mid/short and prepend the anchor (zeros before there is one)."""
        long, mid, short_1x = self.latents.split(self.history_sizes, dim=2)
        anchor = self.anchor
        if anchor is None:
            anchor = torch.zeros_like(short_1x[:, :, :1])
        short = torch.cat([anchor.to(short_1x.dtype), short_1x], dim=2)
        return HistoryViews(short=short.to(dtype), mid=mid.to(dtype), long=long.to(dtype), **self._indices)

    def _build_indices(self) -> dict[str, torch.Tensor]:
        """Frame positions for RoPE: [anchor | long | mid | short | current chunk] along time."""
        sizes = [1, *self.history_sizes, self.chunk_frames]
        prefix, long, mid, short_1x, hidden = torch.arange(sum(sizes), device=self.device).split(sizes)
        return {
            "indices_hidden": hidden.unsqueeze(0),
            "indices_short": torch.cat([prefix, short_1x]).unsqueeze(0),
            "indices_mid": mid.unsqueeze(0),
            "indices_long": long.unsqueeze(0),
        }
