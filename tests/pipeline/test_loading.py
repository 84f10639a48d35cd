"""Loading by folder or preset name, and the clear errors for bad folders, presets and overrides."""

from __future__ import annotations

import os
import shutil

import pytest

from helios.pipeline import HeliosStreamPipeline
from helios.pipeline.config import build_stream_config, list_presets, load_preset
from helios.pipeline.image import ImageInputError, decode_image_b64, encode_image_b64
from helios.pipeline.loading import resolve_source


def test_presets_exist_and_parse():
    names = list_presets()
    assert {"tiny-cpu", "14b-distilled", "14b-mid", "14b-base"} <= set(names)
    distilled = load_preset("14b-distilled")
    assert distilled.dtype == "bfloat16" and distilled.stream["pyramid_steps"] == [2, 2, 2]
    cfg = build_stream_config("mid", load_preset("14b-mid").stream)
    assert cfg.do_cfg and cfg.frames_per_chunk == 33 and (cfg.height, cfg.width) == (384, 640)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'helios-huge'.*tiny-cpu"):
        resolve_source("helios-huge")


def test_tiny_preset_loads(tmp_path, monkeypatch, tiny_pipeline_dir):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_pipeline_dir, cache / "tiny-pipeline")  # reuse the session folder (idempotent maker)
    monkeypatch.setenv("HELIOS_CACHE_DIR", str(cache))
    pipe = HeliosStreamPipeline.from_pretrained("tiny-cpu", num_latent_frames_per_chunk=1)
    assert (pipe.height, pipe.width) == (128, 128)
    assert pipe.config.variant == "distilled" and pipe.config.pyramid_steps == [1, 1, 1]


@pytest.mark.parametrize("component", ["vae", "tokenizer", "scheduler", "transformer", "text_encoder"])
def test_missing_component_is_named(tiny_pipeline_dir, tmp_path, component):
    broken = tmp_path / "broken"
    broken.mkdir()
    for entry in os.listdir(tiny_pipeline_dir):
        if entry != component:
            os.symlink(tiny_pipeline_dir / entry, broken / entry)
    with pytest.raises(ValueError, match=component):
        HeliosStreamPipeline.from_pretrained(broken)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        HeliosStreamPipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"height": 100}, "height"), ({"pyramid_steps": [0, 1, 1]}, "pyramid_steps"), ({"warp": 9}, "warp"),
     ({"image_noise_sigma": (0.5, 0.1)}, "image_noise_sigma"), ({"history_sizes": [16, 2]}, "history_sizes")],
)
def test_bad_override_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        build_stream_config("distilled", {}, overrides)


def test_image_payload_errors():
    import numpy as np

    with pytest.raises(ImageInputError, match="not a recognisable image"):
        decode_image_b64("aGVsbG8gd29ybGQ=")
    noisy = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    with pytest.raises(ImageInputError, match="limit"):
        decode_image_b64(encode_image_b64(noisy, fmt="PNG"))
