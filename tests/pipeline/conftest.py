"""Pipeline test fixtures: the diffusers oracle (block noise patched as DESIGN 9 says) and shared streams."""

from __future__ import annotations

import pytest
import torch

from helios.pipeline import HeliosStreamPipeline

from parity_support import PARITY_STEPS, float64_block_noise


@pytest.fixture(scope="session")
def reference_pipe(tiny_pipeline_dir):
    """diffusers' HeliosPyramidPipeline on the tiny folder: the numerical oracle."""
    from diffusers import HeliosPyramidPipeline

    original = HeliosPyramidPipeline.sample_block_noise
    HeliosPyramidPipeline.sample_block_noise = float64_block_noise
    pipe = HeliosPyramidPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    HeliosPyramidPipeline.sample_block_noise = original


@pytest.fixture(scope="session")
def stream_pipe(tiny_pipeline_dir) -> HeliosStreamPipeline:
    """The tiny stream at the parity geometry (128x128, 33 frames, DMD [1,1,1]); tests reset it."""
    return HeliosStreamPipeline.from_pretrained(tiny_pipeline_dir, height=128, width=128, pyramid_steps=PARITY_STEPS)


@pytest.fixture(scope="session")
def small_pipe(tiny_pipeline_dir) -> HeliosStreamPipeline:
    """A cheap stream for behaviour tests: 64x64, one latent frame (one video frame) per chunk."""
    return HeliosStreamPipeline.from_pretrained(tiny_pipeline_dir, height=64, width=64, num_latent_frames_per_chunk=1,
                                                pyramid_steps=[1, 1, 1], text_cache_size=4)
