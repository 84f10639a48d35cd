"""The Helios video DiT, tensor-parallel (Megatron layout, DESIGN section 4).

Module and parameter names equal diffusers' `HeliosTransformer3DModel`, so a diffusers state
dict or checkpoint loads with no conversion. Per rank: attention q/k/v and FFN up are
column-parallel (by heads / hidden units), attention out and FFN down are row-parallel (one
all-reduce each), q/k RMSNorm spans the full width (one all-reduce of the sum of squares);
embedders, adaLN tables, output norm and projection are replicated.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from helios.config import HeliosConfig
from helios.model.attention import attend
from helios.model.inputs import check_forward_inputs
from helios.model.layers import ColumnParallelLinear, DistributedRMSNorm, RowParallelLinear, set_weight_attrs
from helios.model.load import load_weights
from helios.model.rope import HeliosRotaryEmbedding, apply_rope, pad_replicate_3d
from helios.parallel.comm import PendingReduce, gather_uneven, heads_to_seq, seq_to_heads, split_sizes, tp_rank, tp_size
from helios.parallel.group import GroupLike, TPGroup, as_tp_group

logger = logging.getLogger(__name__)

# Sub-module names diffusers keeps in float32 when the model runs in bf16/fp16.
KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3", "history_key_scale")
HISTORY_MAX_SCALE = 10.0


def keeps_fp32(name: str) -> bool:
    """Whether parameter `name` stays float32 under reduced precision (diffusers' rule)."""
    return any(part in KEEP_IN_FP32 for part in name.split("."))


def timestep_features(timestep: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of a (B,) timestep, float32 (DDPM style, no frequency shift)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=timestep.device) / half
    angles = timestep[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class HeliosTwoLinear(nn.Module):
    """in_dim -> model width: linear_1, `activation`, linear_2 (diffusers' parameter names)."""

    def __init__(self, in_dim: int, dim: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.activation = activation
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.activation(self.linear_1(x)))


class HeliosConditionEmbedder(nn.Module):
    """Timestep -> (temb for the output norm, 6 adaLN rows per block); text -> model width."""

    def __init__(self, dim: int, freq_dim: int, text_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embedder = HeliosTwoLinear(freq_dim, dim, F.silu)  # kept in float32
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = HeliosTwoLinear(text_dim, dim, partial(F.gelu, approximate="tanh"))

    def embed_time(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) timestep -> temb (B, dim), adaLN rows (B, 6, dim), both in the model dtype."""
        feats = timestep_features(timestep, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(feats).to(self.time_proj.weight.dtype)
        rows = self.time_proj(F.silu(temb))
        return temb, rows.unflatten(-1, (6, -1))


class HeliosAttention(nn.Module):
    """Self- or cross-attention over this rank's heads, through scaled_dot_product_attention."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        *,
        eps: float,
        tp: TPGroup | None,
        amplify_history: bool = False,
        history_scale_mode: str = "per_head",
        sp: TPGroup | None = None,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.sp = sp if tp_size(sp) > 1 else None
        self.head_dim = head_dim
        self.heads_per_rank = heads // tp_size(tp)
        self.to_q = ColumnParallelLinear(dim, inner, tp=tp)
        self.to_k = ColumnParallelLinear(dim, inner, tp=tp)
        self.to_v = ColumnParallelLinear(dim, inner, tp=tp)
        self.to_out = nn.ModuleList([RowParallelLinear(inner, dim, tp=tp), nn.Identity()])
        self.norm_q = DistributedRMSNorm(inner, eps=eps, tp=tp)
        self.norm_k = DistributedRMSNorm(inner, eps=eps, tp=tp)
        self.attn_backend = "sdpa"
        """helios.model.attention backend name; set_attention_backend() changes it."""
        self.amplify_history = amplify_history
        if amplify_history:
            per_head = history_scale_mode == "per_head"
            self.history_key_scale = nn.Parameter(
                torch.empty(self.heads_per_rank if per_head else 1), requires_grad=False
            )
            set_weight_attrs(self.history_key_scale, shard_dim=0 if per_head else None, tp=tp)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        history_len: int = 0,
        seq_sizes: list[int] | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        defer_reduce: bool = False,
    ) -> torch.Tensor | PendingReduce:
        """Under sequence parallelism (self-attention only) x holds this rank's tokens and
        `seq_sizes` every rank's token count: all-to-all to all tokens x my heads and back.
        `kv`: this rank's to_k/to_v outputs computed earlier (`project_kv`); `defer_reduce`:
        return the output projection's all-reduce in flight (PendingReduce) instead of waiting."""
        kv_source = x if context is None else context
        k_proj, v_proj = kv if kv is not None else self.project_kv(kv_source)
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.heads_per_rank, self.head_dim))
        k = self.norm_k(k_proj).unflatten(-1, (self.heads_per_rank, self.head_dim))
        v = v_proj.unflatten(-1, (self.heads_per_rank, self.head_dim))
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope)
        if self.amplify_history and context is None and history_len > 0:
            scale = 1.0 + torch.sigmoid(self.history_key_scale) * (HISTORY_MAX_SCALE - 1.0)
            k = torch.cat([k[:, :history_len] * scale.view(1, 1, -1, 1).to(k.dtype), k[:, history_len:]], dim=1)
        ulysses = self.sp is not None and context is None
        if ulysses:
            q, k, v = (seq_to_heads(t, self.sp, seq_sizes) for t in (q, k, v))
        out = attend(q, k, v, self.attn_backend)
        if ulysses:
            out = heads_to_seq(out.contiguous(), self.sp, seq_sizes)
        out = out.flatten(2).to(q.dtype)
        if defer_reduce:  # to_out[1] is nn.Identity (diffusers' dropout slot)
            return self.to_out[0].forward_async(out)
        return self.to_out[1](self.to_out[0](out))

    def project_kv(self, kv_source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's to_k and to_v GEMMs (no communication: they can overlap a collective)."""
        return self.to_k(kv_source), self.to_v(kv_source)


class HeliosGELUProjection(nn.Module):
    """FFN up-projection (column-parallel) with tanh-GELU."""

    def __init__(self, dim: int, hidden: int, *, tp: TPGroup | None) -> None:
        super().__init__()
        self.proj = ColumnParallelLinear(dim, hidden, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class HeliosFeedForward(nn.Module):
    """up (column) -> GELU -> down (row, all-reduce); `net.0.proj` / `net.2` as in diffusers."""

    def __init__(self, dim: int, hidden: int, *, tp: TPGroup | None) -> None:
        super().__init__()
        self.net = nn.ModuleList(
            [HeliosGELUProjection(dim, hidden, tp=tp), nn.Identity(), RowParallelLinear(hidden, dim, tp=tp)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class HeliosLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, history_len: int) -> torch.Tensor:
    """adaLN `x * (1 + scale) + shift` with row 0 of shift/scale (B, 2, D) for the first
    `history_len` tokens and row 1 for the rest (no per-token table is materialised)."""
    if history_len == 0:
        return x * (1 + scale[:, 1:]) + shift[:, 1:]
    head = x[:, :history_len] * (1 + scale[:, :1]) + shift[:, :1]
    tail = x[:, history_len:] * (1 + scale[:, 1:]) + shift[:, 1:]
    return torch.cat([head, tail], dim=1)


def gated_residual(x: torch.Tensor, update: torch.Tensor, gate: torch.Tensor, history_len: int) -> torch.Tensor:
    """`x + update * gate` in float32, per segment like `modulate`, returned in x's dtype."""
    xf = x.float()
    if history_len == 0:
        return (xf + update * gate[:, 1:]).to(x.dtype)
    head = xf[:, :history_len] + update[:, :history_len] * gate[:, :1]
    tail = xf[:, history_len:] + update[:, history_len:] * gate[:, 1:]
    return torch.cat([head, tail], dim=1).to(x.dtype)


class HeliosTransformerBlock(nn.Module):
    """Self-attention (all tokens, rope) -> cross-attention to text (current tokens only under
    guidance_cross_attn) -> FFN, each pre-normed; attention and FFN adaLN-modulated and gated."""

    def __init__(self, config: HeliosConfig, *, tp: TPGroup | None, sp: TPGroup | None = None) -> None:
        super().__init__()
        dim, eps = config.inner_dim, config.eps
        heads, head_dim = config.num_attention_heads, config.attention_head_dim
        self.guidance_cross_attn = config.guidance_cross_attn
        self.norm1 = HeliosLayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = HeliosAttention(
            dim,
            heads,
            head_dim,
            eps=eps,
            tp=tp,
            amplify_history=config.is_amplify_history,
            history_scale_mode=config.history_scale_mode,
            sp=sp,
        )
        self.attn2 = HeliosAttention(dim, heads, head_dim, eps=eps, tp=tp)
        self.norm2 = HeliosLayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.ffn = HeliosFeedForward(dim, config.ffn_dim, tp=tp)
        self.norm3 = HeliosLayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, dim), requires_grad=False)
        self.tp_overlap = False
        """Overlap the self-attention output all-reduce with the cross-attention K/V GEMMs on the
        text (independent of it); same operations in the same order, so the same numbers."""

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        time_rows: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        history_len: int,
        mod_history_len: int,
        seq_sizes: list[int] | None = None,
    ) -> torch.Tensor:
        """x (B, history+current, D); time_rows (B, 2, 6, D): adaLN rows for [history, current]
        tokens; `mod_history_len` is history_len when history has its own (zero) timestep, else 0."""
        mods = (self.scale_shift_table[:, None] + time_rows.float()).unbind(2)
        shift, scale, gate, c_shift, c_scale, c_gate = mods  # each (B, 2, D), float32
        h = mod_history_len

        # 1. Self-attention over history + current tokens
        normed = modulate(self.norm1(x.float()), shift, scale, h).to(x.dtype)
        kv = None
        if self.tp_overlap:
            pending = self.attn1(normed, rope=rope, history_len=history_len, seq_sizes=seq_sizes, defer_reduce=True)
            kv = self.attn2.project_kv(context)
            attn = pending.wait()
        else:
            attn = self.attn1(normed, rope=rope, history_len=history_len, seq_sizes=seq_sizes)
        x = gated_residual(x, attn, gate, h)

        # 2. Cross-attention to the text
        start = history_len if self.guidance_cross_attn else 0
        current = x[:, start:]
        current = current + self.attn2(self.norm2(current.float()).to(x.dtype), context=context, kv=kv)
        x = torch.cat([x[:, :start], current], dim=1) if start else current

        # 3. Feed-forward
        normed = modulate(self.norm3(x.float()), c_shift, c_scale, h).to(x.dtype)
        return gated_residual(x, self.ffn(normed).float(), c_gate, h)


class HeliosOutputNorm(nn.Module):
    """Final adaLN (shift, scale from temb) on the current tokens."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.empty(1, 2, dim), requires_grad=False)
        self.norm = HeliosLayerNorm(dim, eps, elementwise_affine=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table + temb[:, None, :]).unbind(1)
        return (self.norm(x.float()) * (1 + scale[:, None]) + shift[:, None]).to(x.dtype)


@dataclass
class HeliosTransformerOutput:
    """diffusers-compatible output (`.sample`) for callers passing return_dict=True."""

    sample: torch.Tensor


@dataclass
class _Stream:
    """One token stream entering the blocks: embedded tokens and their rope tables."""

    tokens: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


class HeliosTransformer(nn.Module):
    """Helios DiT for one rank of a TP group (`tp_group=None`: the whole model, no communication).

    Constructing it allocates uninitialised parameters (build under `torch.device("meta")` to
    allocate nothing); fill them with `load_weights` or `load_state_dict`, or build and fill one
    from a checkpoint folder with `helios.weights.from_pretrained`.
    """

    def __init__(
        self, config: HeliosConfig, *, tp_group: GroupLike = None, sp_group: GroupLike = None
    ) -> None:
        super().__init__()
        tp_group, sp_group = as_tp_group(tp_group), as_tp_group(sp_group, "sp_group")
        config.check_tp_size(tp_size(tp_group))
        if tp_size(sp_group) > 1:
            if tp_size(tp_group) > 1:
                raise ValueError("tp_group and sp_group: combining tensor and sequence parallelism is not supported")
            if config.num_attention_heads % tp_size(sp_group):
                raise ValueError(
                    f"sp_size={tp_size(sp_group)} does not divide num_attention_heads={config.num_attention_heads}"
                )
        self.config = config
        self.tp_group = tp_group
        self.sp_group = sp_group if tp_size(sp_group) > 1 else None
        dim, patch = config.inner_dim, config.patch_size
        cin = config.in_channels

        # 1. Patch & position embedding
        self.rope = HeliosRotaryEmbedding(config.rope_dim, config.rope_theta)
        self.patch_embedding = nn.Conv3d(cin, dim, kernel_size=patch, stride=patch)

        # 2. Multi-term memory patch embeddings (short: 1x, mid: 2x, long: 4x the patch)
        if config.has_multi_term_memory_patch:
            self.patch_short = nn.Conv3d(cin, dim, kernel_size=patch, stride=patch)
            mid = tuple(2 * p for p in patch)
            long = tuple(4 * p for p in patch)
            self.patch_mid = nn.Conv3d(cin, dim, kernel_size=mid, stride=mid)
            self.patch_long = nn.Conv3d(cin, dim, kernel_size=long, stride=long)

        # 3. Condition embeddings
        self.condition_embedder = HeliosConditionEmbedder(dim, config.freq_dim, config.text_dim)

        # 4. Transformer blocks
        self.blocks = nn.ModuleList(
            [HeliosTransformerBlock(config, tp=tp_group, sp=self.sp_group) for _ in range(config.num_layers)]
        )

        # 5. Output norm & projection
        self.norm_out = HeliosOutputNorm(dim, config.eps)
        self.proj_out = nn.Linear(dim, config.out_dim * math.prod(patch))
        for param in self.parameters():
            param.requires_grad_(False)
            if not hasattr(param, "shard_dim"):  # plain torch modules: replicated on every rank
                set_weight_attrs(param, shard_dim=None, tp=tp_group)

    # -- construction helpers ------------------------------------------------------------------

    def load_weights(self, tensors: Iterable[tuple[str, Any]], *, strict: bool = True) -> list[str]:
        """Load (name, full tensor or safetensors slice) pairs, e.g. a diffusers state dict's
        `.items()`; each rank keeps only its slice. Returns the loaded names."""
        return load_weights(self, tensors, strict=strict).loaded

    def cast_(self, dtype: torch.dtype) -> "HeliosTransformer":
        """Cast to `dtype`, keeping diffusers' float32 modules in float32 (works on meta too)."""
        self.to(dtype)
        if dtype != torch.float32:
            for name, param in self.named_parameters():
                if keeps_fp32(name):
                    param.data = param.data.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        """No-op stand-in for diffusers' CacheMixin context (lets diffusers pipelines call us)."""
        yield

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        indices_hidden_states: torch.Tensor | None = None,
        indices_latents_history_short: torch.Tensor | None = None,
        indices_latents_history_mid: torch.Tensor | None = None,
        indices_latents_history_long: torch.Tensor | None = None,
        latents_history_short: torch.Tensor | None = None,
        latents_history_mid: torch.Tensor | None = None,
        latents_history_long: torch.Tensor | None = None,
        return_dict: bool | None = None,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor] | HeliosTransformerOutput:
        """Predict the flow for the current latents `hidden_states` (B, C, T, H, W) given the
        history latents. Same keywords as diffusers; returns the tensor (B, C_out, T, H, W), or
        diffusers' `(tensor,)` / `.sample` object when `return_dict` is passed explicitly."""
        cfg = self.config
        timestep = check_forward_inputs(
            cfg,
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            indices_hidden_states=indices_hidden_states,
            history={
                "short": (latents_history_short, indices_latents_history_short),
                "mid": (latents_history_mid, indices_latents_history_mid),
                "long": (latents_history_long, indices_latents_history_long),
            },
        )
        dtype = self.dtype
        batch = hidden_states.shape[0]
        p_t, p_h, p_w = cfg.patch_size

        # 1. Current latents: patchify, rope on their frame indices
        x = self.patch_embedding(hidden_states.to(dtype))
        _, _, frames, height, width = x.shape
        if indices_hidden_states is None:
            indices_hidden_states = torch.arange(frames, device=x.device).unsqueeze(0).expand(batch, -1)
        streams = [self._stream(x, indices_hidden_states, height, width, pool=1)]
        current_len = streams[0].tokens.shape[1]

        # 2.-4. History: short (fine), mid (2x coarser), long (4x coarser); prepended in reverse order
        grid = None
        if latents_history_short is not None:
            short = self.patch_short(latents_history_short.to(dtype))
            grid = short.shape[-2:]
            streams.insert(0, self._stream(short, indices_latents_history_short, *grid, pool=1))
        for name, latents, indices, pool in (
            ("mid", latents_history_mid, indices_latents_history_mid, 2),
            ("long", latents_history_long, indices_latents_history_long, 4),
        ):
            if latents is None:
                continue
            conv = getattr(self, f"patch_{name}")
            rope_grid = grid or (latents.shape[-2] // p_h, latents.shape[-1] // p_w)
            tokens = conv(pad_replicate_3d(latents.to(dtype), conv.kernel_size))
            streams.insert(0, self._stream(tokens, indices, *rope_grid, pool=pool))

        x = torch.cat([s.tokens for s in streams], dim=1).contiguous()
        rope = (torch.cat([s.cos for s in streams], dim=1), torch.cat([s.sin for s in streams], dim=1))
        history_len = x.shape[1] - current_len
        seq_sizes, current_sizes = None, None
        if self.sp_group is not None:  # Ulysses: this rank keeps a contiguous run of the tokens
            x, rope, history_len, seq_sizes, current_sizes = self._split_sequence(x, rope, history_len)

        # 5. Timestep conditioning: current tokens get `timestep`, history tokens timestep 0
        context = self.condition_embedder.text_embedder(encoder_hidden_states.to(dtype)).contiguous()
        temb, rows = self.condition_embedder.embed_time(timestep)
        if cfg.zero_history_timestep:
            _, rows_t0 = self.condition_embedder.embed_time(torch.zeros_like(timestep[:1]))
            time_rows = torch.stack([rows_t0.expand(batch, -1, -1), rows], dim=1)
            mod_history_len = history_len
        else:
            time_rows = torch.stack([rows, rows], dim=1)
            mod_history_len = 0

        # 6. Transformer blocks
        for block in self.blocks:
            x = block(x, context, time_rows, rope, history_len, mod_history_len, seq_sizes)

        # 7. Output norm & projection on the current tokens
        x = self.proj_out(self.norm_out(x[:, history_len:], temb))
        if current_sizes is not None:
            x = gather_uneven(x, self.sp_group, current_sizes, dim=1)

        # 8. Unpatchify
        x = x.reshape(batch, frames, height, width, p_t, p_h, p_w, -1)
        out = x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if return_dict is None:
            return out
        return HeliosTransformerOutput(sample=out) if return_dict else (out,)

    def _split_sequence(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], history_len: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int, list[int], list[int]]:
        """This rank's slice of the tokens (history first, then current), its local history
        length, every rank's token count and every rank's count of current tokens."""
        sp = self.sp_group
        total = x.shape[1]
        if total < sp.world_size:
            raise ValueError(f"hidden_states: {total} tokens cannot be split over sp_size={sp.world_size}")
        sizes = split_sizes(total, sp.world_size)
        starts = [sum(sizes[:r]) for r in range(sp.world_size)]
        local_history = [min(max(history_len - s, 0), n) for s, n in zip(starts, sizes)]
        current = [n - h for n, h in zip(sizes, local_history)]
        start, size = starts[tp_rank(sp)], sizes[tp_rank(sp)]
        rope = (rope[0][:, start : start + size], rope[1][:, start : start + size])
        return x[:, start : start + size], rope, local_history[tp_rank(sp)], sizes, current

    def _stream(self, tokens: torch.Tensor, indices: torch.Tensor, height: int, width: int, pool: int) -> _Stream:
        cos, sin = self.rope.grid(indices, height, width, tokens.device, pool=pool)
        batch = tokens.shape[0]  # indices may have batch 1 for a whole batch
        tokens = tokens.flatten(2).transpose(1, 2)
        return _Stream(tokens=tokens, cos=cos.expand(batch, -1, -1), sin=sin.expand(batch, -1, -1))

    def extra_repr(self) -> str:
        return f"tp={tp_size(self.tp_group)}, layers={self.config.num_layers}, dim={self.config.inner_dim}"
