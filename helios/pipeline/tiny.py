"""A complete tiny random-weight Helios pipeline folder, for tests and the embedded CPU default.

The folder has the published diffusers layout (model_index.json, transformer/, vae/,
text_encoder/, tokenizer/, scheduler/), so every loader that reads a real Helios checkpoint
reads this one too. Nothing is downloaded: the tokenizer is built with the `tokenizers`
library from a fixed character vocabulary and every weight is drawn from a seeded generator.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

logger = logging.getLogger(__name__)

Variant = Literal["distilled", "mid", "base"]

MARKER = ".helios-tiny-complete"
"""Written last; its presence (with matching parameters) means the folder is complete and reusable."""

TINY_TRANSFORMER = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 32,
    "ffn_dim": 128,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_dim": [12, 10, 10],
    "rope_theta": 10000.0,
    "guidance_cross_attn": True,
    "zero_history_timestep": True,
    "has_multi_term_memory_patch": True,
    "is_amplify_history": False,
    "history_scale_mode": "per_head",
}
"""DESIGN section 3 test config: every 14B feature flag on, 2 heads x 32 dims, 2 layers."""

TINY_VAE = {
    "base_dim": 3,
    "decoder_base_dim": 4,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}
"""Wan 2.1 VAE layout, as small as stays well-conditioned.

The Wan 2.1 decoder halves the channels after every upsample, so a decoder base of 3 leaves
1-channel features whose RMS norm is sign(x): a 1e-5 latent change flips pixels by 100+ levels.
Decoder base 4 with dim_mult [1, 2, 2, 2] keeps every normalised feature at >= 4 channels
(decoder widths 8, 8, 8, 8, 4) for about 1.6x the decode time of the 3-wide one; the encoder
(images only) stays 3 wide.
"""

CROSS_ATTENTION_GAIN = 3.0
"""Multiplies the tiny transformer's cross-attention q/k norm gains and output projection.

With unit gains the few prompt tokens get a small share of the softmax next to hundreds of
identical padding tokens and another prompt moves the latents by 3% of their spread; x3 makes
the attention pick tokens and another prompt moves them by about half their spread."""

TINY_TEXT_ENCODER = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
}

SCHEDULER_COMMON = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "stages": 3,
    "stage_range": [0, 1 / 3, 2 / 3, 1],
    "gamma": 1 / 3,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "use_dynamic_shifting": True,
    "time_shift_type": "linear",
}

_CHARS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&"
_SPECIALS = ["<pad>", "</s>", "<unk>"]


def make_tiny_pipeline(path: str | os.PathLike, seed: int = 0, *, variant: Variant = "distilled") -> Path:
    """Write (or reuse) a tiny random Helios pipeline folder at `path` and return it.

    Idempotent: a folder already holding a complete tiny pipeline of the same seed and variant
    is returned as is. Writing goes to a sibling temporary folder that is renamed into place,
    so a crash never leaves a half-written folder that looks complete.
    """
    if variant not in ("distilled", "mid", "base"):
        raise ValueError(f"variant: expected 'distilled', 'mid' or 'base', got {variant!r}")
    path = Path(path)
    stamp = {"seed": int(seed), "variant": variant, "version": 3}
    marker = path / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return path
        except (OSError, json.JSONDecodeError):
            pass
        logger.info("tiny pipeline at %s has another seed/variant; rebuilding", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        _write_pipeline(staging, int(seed), variant)
        (staging / MARKER).write_text(json.dumps(stamp))
        if path.exists():
            # Only ever replace something that is empty or a previous tiny folder.
            if any(path.iterdir()) and not marker.exists():
                raise ValueError(f"path: {path} exists and is not a tiny Helios pipeline folder; refusing to overwrite")
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _write_pipeline(folder: Path, seed: int, variant: Variant) -> None:
    """Build every component with seeded random weights and save them in diffusers layout."""
    from diffusers import AutoencoderKLWan, HeliosPyramidPipeline, HeliosTransformer3DModel

    transformer = HeliosTransformer3DModel(**TINY_TRANSFORMER)
    randomize_parameters(transformer, seed)
    amplify_cross_attention(transformer, CROSS_ATTENTION_GAIN)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(**TINY_VAE)
    randomize_parameters(vae, seed + 1, keep_default=True)
    scale_decoder(vae, seed + 3)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), seed + 2)
    scheduler = build_scheduler(variant)
    pipe = HeliosPyramidPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        is_cfg_zero_star=variant != "distilled",
        is_distilled=variant == "distilled",
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # A note for humans who open the folder; loaders ignore it.
    (folder / "README.md").write_text(
        f"Tiny random-weight Helios pipeline ({variant}, seed {seed}) written by helios.pipeline.tiny.\n"
        "Random weights: its videos are noise-like; it exists for tests and CPU demos.\n"
    )


def randomize_parameters(module: torch.nn.Module, seed: int, *, keep_default: bool = False) -> None:
    """Give every parameter a seeded random value, so no zero-initialised path hides a bug.

    Matrices get N(0, 1/fan_in); 1-D tensors that start at one (norm gains) get 1 + N(0, 0.1);
    every other 1-D tensor (biases, scale tables, gates) gets N(0, 0.05). With `keep_default`,
    only parameters that are constant (all zeros or all ones) are redrawn.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            flat = param.detach().flatten()
            constant = bool((flat == flat[0]).all()) if flat.numel() > 1 else True
            if keep_default and not constant:
                continue
            was_one = bool(flat.numel() > 0 and (flat == 1).all())
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim >= 2 and not name.endswith("scale_shift_table"):
                fan_in = max(1, math.prod(param.shape[1:]))
                value = noise / math.sqrt(fan_in)
            elif was_one:
                value = 1.0 + 0.1 * noise
            elif name.endswith("scale_shift_table"):
                value = noise / math.sqrt(param.shape[-1])
            else:
                value = 0.05 * noise
            param.copy_(value.to(param.dtype))


def amplify_cross_attention(transformer: torch.nn.Module, gain: float) -> None:
    """Scale every block's cross-attention q/k norm gains and output projection by `gain`, so prompts matter."""
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if ".attn2." in name and name.endswith(("norm_q.weight", "norm_k.weight", "to_out.0.weight")):
                param.mul_(gain)


def scale_decoder(vae: torch.nn.Module, seed: int) -> None:
    """Give the tiny VAE decoder unit-gain convolutions and small biases, so latent differences reach the pixels.

    Every decoder convolution gets N(0, 1/fan_in) weights and N(0, 0.05) biases; norm gains keep
    1 + N(0, 0.1). Large biases (an earlier choice) kept the norms away from zero but swamped the
    signal: another seed moved frames by 1 level of 255. With unit gain another latent moves
    them by about 50 levels, and a 1e-5 latent change by about 0.02 (measured).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(vae.named_parameters(), key=lambda kv: kv[0]):
            if not name.startswith("decoder.") or name.endswith("gamma"):
                continue
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim >= 2:
                param.copy_(noise / math.sqrt(math.prod(param.shape[1:])))
            else:
                param.copy_(0.05 * noise)


def build_tokenizer():
    """A character-level fast tokenizer (T5 conventions: pad 0, eos 1, unk 2, eos appended)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        padding_side="right",
    )


def build_text_encoder(vocab_size: int, seed: int):
    """A tiny random UMT5 encoder (d_model 32) with the published architecture."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **TINY_TEXT_ENCODER)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    randomize_parameters(model, seed, keep_default=True)
    return model


def build_scheduler(variant: Variant):
    """Distilled: the DMD pyramid scheduler; Mid/Base: the UniPC pyramid scheduler (CFG)."""
    from diffusers import HeliosDMDScheduler, HeliosScheduler

    if variant == "distilled":
        return HeliosDMDScheduler(**SCHEDULER_COMMON)
    return HeliosScheduler(**SCHEDULER_COMMON, scheduler_type="unipc")
