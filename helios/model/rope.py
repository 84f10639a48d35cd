"""3D rotary position embedding with per-frame indices (Helios).

The head's channels are split into (t, y, x) groups; each rotary pair i turns by
`position * theta^(-2i/d)`. Time positions are the caller's frame indices (history frames keep
their place in the stream); y/x are the token's grid row/column. Mid/long history tokens are
coarser patches: their cos/sin are the average over the fine-grid cells they cover, exactly as
the reference does (average of cos/sin values, not of angles).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_replicate_3d(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """Pad (B, C, T, H, W) at the end of T/H/W, repeating the edge, up to multiples of `kernel`."""
    _, _, t, h, w = x.shape
    kt, kh, kw = kernel
    pad_t, pad_h, pad_w = (-t) % kt, (-h) % kh, (-w) % kw
    if pad_t == pad_h == pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t), mode="replicate")


def rope_inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/dim) for i < dim/2, float32."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))


class HeliosRotaryEmbedding:
    """Computes (cos, sin) tables of shape (B, tokens, head_dim/2) for a token grid. Stateless (no
    buffers), so a meta-device build needs no re-initialisation after materialisation."""

    def __init__(self, rope_dim: tuple[int, int, int], theta: float) -> None:
        self.rope_dim = rope_dim
        self.theta = theta

    def grid(
        self, frame_indices: torch.Tensor, height: int, width: int, device: torch.device, pool: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for frames `frame_indices` (B, T) on a height x width grid, averaged over
        `pool`^3 cells when `pool` > 1 (mid: 2, long: 4), flattened to (B, T'*H'*W', head_dim/2)."""
        pos_t = frame_indices.to(device=device, dtype=torch.float32)
        batch, frames = pos_t.shape
        pos_y = torch.arange(height, device=device, dtype=torch.float32)
        pos_x = torch.arange(width, device=device, dtype=torch.float32)
        shape = (batch, frames, height, width)
        positions = (
            pos_t[:, :, None, None].expand(shape),
            pos_y[None, None, :, None].expand(shape),
            pos_x[None, None, None, :].expand(shape),
        )
        angles = torch.cat(
            [
                rope_inverse_frequencies(dim, self.theta).to(device)[None, :, None, None, None] * pos[:, None]
                for dim, pos in zip(self.rope_dim, positions)
            ],
            dim=1,
        )  # (B, D/2, T, H, W)
        cos, sin = angles.cos(), angles.sin()
        if pool > 1:
            kernel = (pool, pool, pool)
            cos = F.avg_pool3d(pad_replicate_3d(cos, kernel), kernel, stride=kernel)
            sin = F.avg_pool3d(pad_replicate_3d(sin, kernel), kernel, stride=kernel)
        return cos.flatten(2).transpose(1, 2), sin.flatten(2).transpose(1, 2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, S, heads, D) by the angles of cos/sin
    (B, S, D/2); computed in float32 and returned in x's dtype."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
