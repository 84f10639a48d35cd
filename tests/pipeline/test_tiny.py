"""The tiny random pipeline folder: complete, loadable by diffusers, random everywhere, reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helios.pipeline.tiny import MARKER, make_tiny_pipeline


def test_folder_has_every_component(tiny_pipeline_dir):
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "HeliosPyramidPipeline"
    for component in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert component in index, component
        assert (tiny_pipeline_dir / component).is_dir(), component
    assert index["scheduler"][1] == "HeliosDMDScheduler"


def test_diffusers_loads_it(tiny_pipeline_dir):
    from diffusers import HeliosPyramidPipeline

    pipe = HeliosPyramidPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    cfg = pipe.transformer.config
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.num_layers) == (2, 32, 2)
    assert tuple(cfg.rope_dim) == (12, 10, 10)
    assert pipe.config.is_distilled
    assert pipe.text_encoder.config.d_model == cfg.text_dim == 32
    ids = pipe.tokenizer(["a red fox", "a blue fox"], padding="max_length", max_length=16).input_ids
    assert ids[0] != ids[1]
    assert ids[0][9] == pipe.tokenizer.eos_token_id  # 9 characters then </s>


def test_every_transformer_parameter_is_random(tiny_pipeline_dir):
    tensors = load_file(tiny_pipeline_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    assert len(tensors) > 50
    for name, value in tensors.items():
        flat = value.flatten()
        assert flat.numel() == 1 or not bool((flat == flat[0]).all()), f"{name} is constant"


def test_idempotent_and_deterministic(tiny_pipeline_dir, tmp_path):
    marker_mtime = (tiny_pipeline_dir / MARKER).stat().st_mtime_ns
    assert make_tiny_pipeline(tiny_pipeline_dir, seed=0) == tiny_pipeline_dir
    assert (tiny_pipeline_dir / MARKER).stat().st_mtime_ns == marker_mtime  # reused, not rewritten

    again = make_tiny_pipeline(tmp_path / "again", seed=0)
    for sub, fname in (("transformer", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                       ("text_encoder", "model.safetensors")):
        a = load_file(tiny_pipeline_dir / sub / fname)
        b = load_file(again / sub / fname)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{sub}/{key} differs between two builds with seed 0"


def test_bad_variant_and_occupied_path(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        make_tiny_pipeline(tmp_path / "x", variant="huge")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing"):
        make_tiny_pipeline(occupied)
    assert (occupied / "precious.txt").read_text() == "keep me"


def test_frames_respond_to_seed_prompt_and_time(stream_pipe):
    """The tiny model's pictures respond: frame-level tests of it can fail (DESIGN section 9)."""
    from parity_support import OTHER_PROMPT, PARITY_PROMPT

    from tests.frame_checks import assert_differs_clearly, mean_level_diff

    def first_chunk(seed: int, prompt: str):
        stream_pipe.reset(seed)
        stream_pipe.set_prompt(prompt)
        return stream_pipe.next_chunk().frames

    base = first_chunk(0, PARITY_PROMPT)
    assert_differs_clearly(base, first_chunk(1, PARITY_PROMPT), "another seed")
    assert_differs_clearly(base, first_chunk(0, OTHER_PROMPT), "another prompt")
    assert mean_level_diff(base[1:], base[:-1]) > 5.0  # frames vary over time, not one still image
    assert base.std() > 20.0 and ((base == 0) | (base == 255)).mean() < 0.1  # contrast without clipping


def test_vae_decoder_is_well_conditioned(stream_pipe):
    """A float-rounding-sized latent change moves pixels by well under a level, so 1-level frame parity means something."""
    stream_pipe.reset(0)
    stream_pipe.set_prompt("a lighthouse in a storm")
    stream_pipe.next_chunk()
    latents = stream_pipe.last_latents.float()
    codec = stream_pipe.codec

    @torch.no_grad()
    def levels(z: torch.Tensor) -> torch.Tensor:
        video = codec.vae.decode(z / codec.inv_std + codec.mean, return_dict=False)[0]
        return (video.clamp(-1, 1) + 1) * 127.5

    base = levels(latents)
    gen = torch.Generator().manual_seed(0)
    nudged = levels(latents + 1e-5 * torch.randn(latents.shape, generator=gen))
    assert (nudged - base).abs().max().item() < 0.5
