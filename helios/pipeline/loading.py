"""Find and load the components of a diffusers-format Helios pipeline folder (or a named preset)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from helios.model import HeliosTransformer
from helios.parallel import GroupLike
from helios.pipeline.config import ModelPreset, Variant, list_presets, load_preset, tiny_cache_dir
from helios.weights import from_pretrained

COMPONENT_FILES = {
    "transformer": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
}
"""Each required sub-folder and the files of which at least one must be there."""

SCHEDULERS = ("HeliosDMDScheduler", "HeliosScheduler")


@dataclass
class Source:
    """A resolved pipeline folder, the preset it came from (if any) and what the folder says about itself."""

    folder: Path
    preset: ModelPreset | None
    model_index: dict
    scheduler_class: str

    @property
    def variant(self) -> Variant:
        """distilled when the checkpoint says so (DMD scheduler or is_distilled), else mid (CFG)."""
        if self.model_index.get("is_distilled") or self.scheduler_class == "HeliosDMDScheduler":
            return "distilled"
        return "mid"


def resolve_source(path_or_preset: str | Path) -> Source:
    """A folder path, or a preset name from configs/models/ ('tiny' presets build their folder)."""
    preset = None
    candidate = Path(path_or_preset)
    if not candidate.exists() and isinstance(path_or_preset, str) and "/" not in path_or_preset:
        preset = load_preset(path_or_preset)  # raises naming the known presets
        if preset.path == "tiny":
            from helios.pipeline.tiny import make_tiny_pipeline

            candidate = make_tiny_pipeline(tiny_cache_dir(), seed=0)
        else:
            candidate = Path(preset.path).expanduser()
    folder = check_folder(candidate)
    index = json.loads((folder / "model_index.json").read_text())
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text()).get("_class_name", "")
    if sched not in SCHEDULERS:
        raise ValueError(f"{folder}/scheduler: unsupported scheduler {sched!r}; expected one of {', '.join(SCHEDULERS)}")
    return Source(folder=folder, preset=preset, model_index=index, scheduler_class=sched)


def check_folder(folder: Path) -> Path:
    """Fail early, naming the missing piece, before loading anything heavy."""
    if not folder.is_dir():
        hint = f"; known presets: {', '.join(list_presets())}" if list_presets() else ""
        raise ValueError(f"path: {folder} is not a pipeline folder or a known preset{hint}")
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"path: {folder} has no model_index.json; expected a diffusers-format Helios pipeline folder")
    for component, files in COMPONENT_FILES.items():
        sub = folder / component
        if not sub.is_dir():
            raise ValueError(f"{component}: component folder {sub} is missing")
        if not any((sub / f).is_file() for f in files):
            raise ValueError(f"{component}: {sub} has none of {', '.join(files)}")
    return folder


def load_transformer(
    folder: Path, *, tp_group: GroupLike = None, dtype: torch.dtype, device: torch.device
) -> HeliosTransformer:
    """Our TP-aware transformer (this rank's shard), in eval mode."""
    return from_pretrained(folder, tp_group=tp_group, dtype=dtype, device=device).eval()


def load_text_stack(folder: Path, *, dtype: torch.dtype, device: torch.device):
    """Tokenizer and UMT5 encoder (same dtype as the transformer, as the reference loads them)."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    # Local folders only: nothing is downloaded at run time (local_files_only also stops a hub lookup).
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype, local_files_only=True).to(device).eval()
    return tokenizer, encoder


def load_vae(folder: Path, *, device: torch.device, dtype: torch.dtype = torch.float32):
    """The Wan VAE: float32 as the published examples load it, or bfloat16 (the fast path).

    `from_pretrained(dtype=...)` keeps whatever modules the reference class keeps in float32.
    """
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(folder / "vae", dtype=dtype).to(device).eval()


def load_scheduler(folder: Path, class_name: str):
    import diffusers

    return getattr(diffusers, class_name).from_pretrained(folder / "scheduler")
