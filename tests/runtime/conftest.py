"""Runtime test fixtures: the tiny Helios stream engine (loaded once) and the engines the protocol suite runs on."""

from __future__ import annotations

import pytest

PROTOCOL_HW = 64
"""Protocol tests run the tiny model at 64x64 with real 33-frame chunks: chunk cost is VAE-decode bound."""


@pytest.fixture(scope="session")
def tiny_helios_engine(tiny_pipeline_dir):
    """The real tiny HeliosStreamPipeline (DMD [1,1,1]) shared by the runtime tests; HeliosModel resets it at chunk 0."""
    from helios.pipeline import HeliosStreamPipeline

    return HeliosStreamPipeline.from_pretrained(
        tiny_pipeline_dir, height=PROTOCOL_HW, width=PROTOCOL_HW, pyramid_steps=[1, 1, 1]
    )


@pytest.fixture
def one_torch_thread():
    """One intra-op thread while a test generates: on a shared 2-core box, oversubscribed
    OpenMP makes the tiny VAE decode ~15x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["test-pattern", "helios-tiny"])
def protocol_engine(request):
    """Every protocol test runs on the drawn test pattern and on the real tiny Helios pipeline."""
    if request.param == "test-pattern":
        from helios.models.testpattern import TestPatternEngine

        return TestPatternEngine(PROTOCOL_HW, PROTOCOL_HW)
    request.getfixturevalue("one_torch_thread")
    return request.getfixturevalue("tiny_helios_engine")
