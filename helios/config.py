"""The Helios transformer configuration, with diffusers' field names so a checkpoint's
`config.json` reads as-is, plus the two presets everyone uses (the 14B model, the tiny test model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_NAME = "config.json"
DIFFUSERS_CLASS_NAME = "HeliosTransformer3DModel"
SUPPORTED_QK_NORM = "rms_norm_across_heads"


class HeliosConfig(BaseModel):
    """Hyper-parameters of HeliosTransformer3DModel (diffusers 0.42.1); defaults are the 14B model.

    Validated when built (never in `forward`): head/rope geometry, supported feature flags.
    Unknown diffusers bookkeeping keys (`_class_name`, `_diffusers_version`, ...) are ignored.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    patch_size: tuple[int, int, int] = Field((1, 2, 2), description="3D patch (t, h, w) of the current latents.")
    num_attention_heads: int = Field(40, gt=0, description="Attention heads; the TP size must divide it.")
    attention_head_dim: int = Field(128, gt=0, description="Channels per head; inner dim = heads * head dim.")
    in_channels: int = Field(16, gt=0, description="Latent channels in (Wan VAE z_dim).")
    out_channels: int | None = Field(16, description="Latent channels out; None means in_channels.")
    text_dim: int = Field(4096, gt=0, description="Width of the text-encoder states (UMT5-XXL: 4096).")
    freq_dim: int = Field(256, gt=0, description="Width of the sinusoidal timestep features.")
    ffn_dim: int = Field(13824, gt=0, description="Hidden width of the feed-forward network.")
    num_layers: int = Field(40, gt=0, description="Number of transformer blocks.")
    cross_attn_norm: bool = Field(True, description="Affine LayerNorm before the cross-attention.")
    qk_norm: str | None = Field(SUPPORTED_QK_NORM, description="Only 'rms_norm_across_heads' exists in Helios.")
    eps: float = Field(1e-6, gt=0, description="Epsilon of every norm.")
    added_kv_proj_dim: int | None = Field(None, description="Image-conditioning K/V width (unused by Helios).")
    rope_dim: tuple[int, int, int] = Field((44, 42, 42), description="Rotary channels for (t, y, x); sums to head dim.")
    rope_theta: float = Field(10000.0, gt=0, description="Rotary base frequency.")
    guidance_cross_attn: bool = Field(True, description="Cross-attention on current (not history) tokens only.")
    zero_history_timestep: bool = Field(True, description="History tokens are modulated with timestep 0.")
    has_multi_term_memory_patch: bool = Field(True, description="Short/mid/long history patch embeddings.")
    is_amplify_history: bool = Field(False, description="Learned scale on history keys in self-attention.")
    history_scale_mode: str = Field("per_head", description="'per_head' or 'scalar' history key scale.")

    @field_validator("patch_size", "rope_dim", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("qk_norm")
    @classmethod
    def _check_qk_norm(cls, value: str | None) -> str | None:
        if value != SUPPORTED_QK_NORM:
            raise ValueError(f"qk_norm={value!r} is not supported; Helios uses {SUPPORTED_QK_NORM!r}")
        return value

    @field_validator("added_kv_proj_dim")
    @classmethod
    def _check_added_kv(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(f"added_kv_proj_dim={value} is not supported (Helios has no image K/V branch)")
        return value

    @field_validator("history_scale_mode")
    @classmethod
    def _check_history_scale_mode(cls, value: str) -> str:
        if value not in ("per_head", "scalar"):
            raise ValueError(f"history_scale_mode={value!r} must be 'per_head' or 'scalar'")
        return value

    @model_validator(mode="after")
    def _check_geometry(self) -> "HeliosConfig":
        if any(p <= 0 for p in self.patch_size):
            raise ValueError(f"patch_size={self.patch_size} must be positive")
        if sum(self.rope_dim) != self.attention_head_dim:
            raise ValueError(
                f"rope_dim={self.rope_dim} sums to {sum(self.rope_dim)}, "
                f"but attention_head_dim={self.attention_head_dim}; they must be equal"
            )
        if any(d % 2 for d in self.rope_dim):
            raise ValueError(f"rope_dim={self.rope_dim}: every entry must be even (rotary pairs)")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even (sin/cos halves)")
        return self

    # -- derived sizes -------------------------------------------------------------------------

    @property
    def inner_dim(self) -> int:
        """Model width (5120 for 14B)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_dim(self) -> int:
        """Output latent channels."""
        return self.out_channels or self.in_channels

    def check_tp_size(self, tp_size: int) -> None:
        """Raise ValueError unless `tp_size` shards heads and FFN evenly."""
        if tp_size < 1:
            raise ValueError(f"tp_size={tp_size} must be >= 1")
        heads = self.num_attention_heads
        if heads % tp_size:
            choices = [n for n in range(1, heads + 1) if heads % n == 0]
            raise ValueError(f"tp_size={tp_size} does not divide num_attention_heads={heads}; choose one of {choices}")
        if self.ffn_dim % tp_size:
            raise ValueError(f"tp_size={tp_size} does not divide ffn_dim={self.ffn_dim}")

    # -- presets -------------------------------------------------------------------------------

    @classmethod
    def helios_14b(cls, **overrides: Any) -> "HeliosConfig":
        """The published 14B Helios transformer (14,312,427,584 parameters)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "HeliosConfig":
        """Test-sized model with every 14B feature flag on (DESIGN section 3)."""
        values: dict[str, Any] = dict(
            num_attention_heads=2,
            attention_head_dim=32,
            rope_dim=(12, 10, 10),
            num_layers=2,
            text_dim=32,
            ffn_dim=128,
            freq_dim=256,
        )
        values.update(overrides)
        return cls(**values)

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeliosConfig":
        """Build from a diffusers config dict; a bad field gives ValueError naming it."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid Helios transformer config: {exc}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "HeliosConfig":
        """Read a diffusers `config.json` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "HeliosConfig":
        """Read the config of a transformer folder (or of a pipeline folder's `transformer/`)."""
        return cls.from_json(resolve_transformer_dir(path) / CONFIG_NAME)

    def to_diffusers_dict(self) -> dict[str, Any]:
        """The dict diffusers' `HeliosTransformer3DModel(**d)` and its config.json accept."""
        data = self.model_dump()
        data["patch_size"] = list(self.patch_size)
        data["rope_dim"] = list(self.rope_dim)
        return data

    def save_json(self, path: str | Path) -> None:
        """Write a diffusers-style config.json."""
        data = {"_class_name": DIFFUSERS_CLASS_NAME, "_diffusers_version": "0.42.1", **self.to_diffusers_dict()}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def resolve_transformer_dir(path: str | Path) -> Path:
    """The folder holding the transformer's config.json: `path` itself or `path/transformer`."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "transformer" / CONFIG_NAME).is_file():
        return path / "transformer"
    raise ValueError(f"no transformer {CONFIG_NAME} in {path} (nor in {path / 'transformer'})")
