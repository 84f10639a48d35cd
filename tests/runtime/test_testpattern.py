"""The test-pattern model: cheap frames that visibly follow the prompt, seed, image and time."""

from __future__ import annotations

import numpy as np
import pytest

from helios.models.testpattern import TestPatternEngine, TestPatternModel
from helios.pipeline.engine import StreamEngine
from helios.runtime import MemorySink, Session

from .runtime_support import session_threads


def chunk(engine: TestPatternEngine) -> np.ndarray:
    return engine.next_chunk().frames


def test_engine_protocol_and_shapes():
    eng = TestPatternEngine(64, 96, frames_per_chunk=5, fps=12)
    assert isinstance(eng, StreamEngine)
    eng.set_prompt("hello")
    r = eng.next_chunk()
    assert r.frames.shape == (5, 64, 96, 3) and r.frames.dtype == np.uint8
    assert (r.chunk, r.prompt, r.seed, eng.chunk_index) == (0, "hello", 0, 1)
    assert not np.array_equal(r.frames[0], r.frames[1])  # bars move and the counter runs


def test_frames_follow_prompt_seed_and_image():
    def first_frame(prompt="a", seed=0, image=None):
        eng = TestPatternEngine(64, 64, frames_per_chunk=2)
        eng.reset(seed)
        eng.set_prompt(prompt)
        if image is not None:
            eng.set_image(image)
        return chunk(eng)[0]

    base = first_frame()
    text_rows = slice(0, 12)
    assert not np.array_equal(first_frame("b")[text_rows], base[text_rows])
    assert not np.array_equal(first_frame(seed=3)[40:], base[40:])  # bar phase follows the seed
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[..., 0] = 200
    with_image = first_frame(image=red)
    assert (with_image[40:50, 40:60] == (200, 0, 0)).all()  # below the text, above the bar strip


def test_reset_restarts_chunk_and_frame_counters():
    eng = TestPatternEngine(32, 32, frames_per_chunk=3)
    eng.set_prompt("x")
    a = chunk(eng)
    chunk(eng)
    eng.reset(0)
    eng.set_prompt("x")
    assert np.array_equal(chunk(eng), a)  # deterministic from a reset


@pytest.mark.parametrize("kwargs, name", [({"height": 8}, "height"), ({"width": "64"}, "width"),
                                          ({"frames_per_chunk": 0}, "frames_per_chunk"), ({"fps": 0}, "fps")])
def test_bad_geometry_is_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TestPatternEngine(**kwargs)


def test_image_of_wrong_size_is_refused():
    with pytest.raises(ValueError, match="image"):
        TestPatternEngine(32, 32).set_image(np.zeros((16, 16, 3), dtype=np.uint8))


def test_model_streams_through_a_session():
    sink = MemorySink()
    session = Session(TestPatternModel(32, 48, frames_per_chunk=3, fps=24), sink, fps=1000.0).start()
    assert session.call({"command": "set_prompt", "args": {"prompt": "hi"}})["ok"]
    assert session.call({"command": "start"})["ok"]
    sink.wait_for_frames(9)
    assert session.model.state()["running"] is True  # readable from a thread outside the session
    session.stop()
    assert session.join(10) and session_threads(session) == []
    assert sink.blocks[0].frames.shape == (1, 32, 48, 3)
    assert [e["chunk"] for e in sink.events("chunk_complete")][:3] == [0, 1, 2]


def test_any_valid_seed_draws_frames():
    """Found by the protocol fuzzer: set_seed accepts up to 2**63-1, which overflowed numpy's int64
    in the bars' phase and ended the session with a generation error."""
    from helios.models.helios import MAX_SEED

    eng = TestPatternEngine(32, 48, frames_per_chunk=2)
    frames = {}
    for seed in (0, 7, 2**31, MAX_SEED):
        eng.reset(seed)
        frames[seed] = eng.next_chunk().frames
        assert frames[seed].shape == (2, 32, 48, 3)
    assert not np.array_equal(frames[0], frames[7])  # the seed still moves the bars
