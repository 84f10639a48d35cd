"""Stream settings (validated once at load) and the named model presets in configs/models/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from helios.dtypes import DTYPE_NAMES, dtype_name
from helios.model.fast import FastPathConfig

Variant = Literal["distilled", "mid", "base"]

VARIANT_DEFAULTS: dict[str, dict] = {
    "distilled": {"pyramid_steps": [2, 2, 2], "guidance_scale": 1.0},
    "mid": {"pyramid_steps": [20, 20, 20], "guidance_scale": 5.0},
    "base": {"pyramid_steps": [17, 17, 16], "guidance_scale": 5.0},
}
"""What each published checkpoint family samples with unless the caller overrides it."""


class StreamConfig(BaseModel):
    """How one stream samples: geometry, memory, pyramid schedule, guidance and noise levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Variant = Field("distilled", description="Checkpoint family: DMD distilled (no CFG) or Mid/Base (CFG).")
    height: int = Field(384, description="Frame height in pixels; divisible by 64 (8x VAE, 2 pyramid halvings, 2x2 patch, 4x long patch).")
    width: int = Field(640, description="Frame width in pixels; divisible by 64.")
    num_latent_frames_per_chunk: int = Field(9, ge=1, description="Latent frames per chunk; 9 -> 33 video frames.")
    fps: int = Field(24, ge=1, le=240, description="Playback rate of the generated frames.")
    history_sizes: list[int] = Field([16, 2, 1], description="Long/mid/short history latent frames (big to small).")
    pyramid_steps: list[int] = Field([2, 2, 2], description="Denoising steps per pyramid stage (low to full resolution).")
    guidance_scale: float = Field(1.0, ge=0.0, description="CFG scale; > 1 runs the negative prompt too (Mid/Base).")
    negative_prompt: str = Field("", description="Negative prompt for CFG.")
    is_cfg_zero_star: bool = Field(False, description="CFG-Zero* guidance (optimised scale, zero-init first steps).")
    use_zero_init: bool = Field(True, description="CFG-Zero*: zero the prediction for the first `zero_steps` of stage 0.")
    zero_steps: int = Field(1, ge=0, description="CFG-Zero*: number of zero-init steps.")
    is_amplify_first_chunk: bool = Field(False, description="DMD: double the steps of chunk 0.")
    max_sequence_length: int = Field(512, ge=1, le=4096, description="Text tokens per prompt (UMT5).")
    text_cache_size: int = Field(64, ge=1, description="Prompt embeddings kept (LRU); a known prompt is never re-encoded.")
    image_noise_sigma: tuple[float, float] = Field((0.111, 0.135), description="Noise level range for the reference image latents.")
    video_noise_sigma: tuple[float, float] = Field((0.111, 0.135), description="Noise level range for video / fake-image latents.")
    image_blend_chunks: int = Field(3, ge=1, description="Chunks over which a 'blend' image transition interpolates the anchor.")
    decode_overlap: Literal["auto", "on", "off"] = Field(
        "auto", description="Decode chunk n while chunk n+1 denoises (worker thread; own CUDA stream on GPU); "
                            "auto: on for CUDA, off on CPU (measured: no gain there).")
    vae_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="VAE weights dtype; float32 is the reference, bfloat16 the fast path "
                               "(normalisation and pixel conversion stay float32).")
    text_prefetch: bool = Field(
        True, description="Encode a scheduled prompt in the background as soon as it is scheduled "
                          "(one worker thread, bounded), so the chunk that uses it finds it cached.")
    fast: FastPathConfig = Field(default_factory=FastPathConfig, description="Transformer fast path: compile, "
                                 "cuda_graphs, attention backend, fp8, tp_overlap, comm_timing (helios.model.fast).")

    @field_validator("height", "width")
    @classmethod
    def _divisible(cls, value: int, info) -> int:
        if value <= 0 or value % 64:
            raise ValueError(f"{info.field_name}: must be a positive multiple of 64, got {value}")
        return value

    @field_validator("history_sizes")
    @classmethod
    def _history(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or any(v < 1 for v in value):
            raise ValueError(f"history_sizes: expected three positive sizes [long, mid, short], got {value}")
        return sorted(value, reverse=True)

    @field_validator("pyramid_steps")
    @classmethod
    def _steps(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"pyramid_steps: expected one positive step count per stage, got {value}")
        return value

    @model_validator(mode="after")
    def _sigmas(self) -> "StreamConfig":
        for name in ("image_noise_sigma", "video_noise_sigma"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name}: expected 0 <= min <= max <= 1, got {(lo, hi)}")
        return self

    @property
    def frames_per_chunk(self) -> int:
        """Video frames per chunk (Wan VAE: 4x temporal, first frame alone)."""
        return (self.num_latent_frames_per_chunk - 1) * 4 + 1

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0 and self.variant != "distilled"


def build_stream_config(variant: Variant, base: dict | None = None, overrides: dict | None = None) -> StreamConfig:
    """Variant defaults < preset/base values < explicit overrides; errors name the bad field."""
    values: dict = {"variant": variant, **VARIANT_DEFAULTS[variant]}
    values.update(base or {})
    values.update(overrides or {})
    try:
        return StreamConfig(**values)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"]
        parts.append(f"{loc}: {msg}" if not msg.startswith(f"Value error, {loc}") else msg.removeprefix("Value error, "))
    return "; ".join(parts)


class ModelPreset(BaseModel):
    """A named way to load a model: where the weights are and how the stream samples."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Preset name, the file stem in configs/models/.")
    description: str = Field("", description="One line for humans.")
    path: str = Field(description="Pipeline folder; 'tiny' builds the tiny random pipeline in a cache folder.")
    dtype: str = Field("float32", description=f"Transformer dtype, one of {list(DTYPE_NAMES)} (stored canonical).")
    tp_size: int = Field(1, ge=1, description="Tensor-parallel ranks this preset is meant for.")
    stream: dict = Field(default_factory=dict, description="StreamConfig overrides (height, width, pyramid_steps, ...).")

    @field_validator("dtype")
    @classmethod
    def _canonical_dtype(cls, value: str) -> str:
        return dtype_name(value)


def presets_dir() -> Path:
    """configs/models of this checkout, or $HELIOS_MODEL_PRESETS."""
    env = os.environ.get("HELIOS_MODEL_PRESETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs" / "models"


def list_presets() -> list[str]:
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_preset(name: str) -> ModelPreset:
    """Read configs/models/<name>.yaml; unknown names list the known ones."""
    known = list_presets()
    if name not in known:
        raise ValueError(f"preset: unknown model preset {name!r}; known presets: {', '.join(known) or '(none)'}")
    data = yaml.safe_load((presets_dir() / f"{name}.yaml").read_text()) or {}
    data.setdefault("name", name)
    try:
        return ModelPreset(**data)
    except ValidationError as exc:
        raise ValueError(f"preset {name!r}: {_describe(exc)}") from None


def tiny_cache_dir() -> Path:
    """Where the 'tiny' preset builds its random pipeline folder (reused across runs)."""
    root = os.environ.get("HELIOS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "helios")
    return Path(root) / "tiny-pipeline"
