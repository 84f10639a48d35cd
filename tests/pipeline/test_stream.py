"""Stream semantics on the cheap 64x64 one-frame stream: prompts, seeds, resets, images, memory, bad input."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from helios.pipeline import HeliosStreamPipeline, StreamEngine
from tests.frame_checks import assert_differs_clearly


def _conditioning_recorder(pipe):
    """Record the encoder_hidden_states every transformer forward actually receives."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_implements_stream_engine(small_pipe):
    assert isinstance(small_pipe, StreamEngine)
    assert (small_pipe.height, small_pipe.width, small_pipe.frames_per_chunk) == (64, 64, 1)


def test_prompt_switch_changes_conditioning_from_that_chunk(small_pipe):
    pipe = small_pipe
    pipe.reset(0)
    pipe.set_prompt("a calm lake")
    lake = pipe.text.get("a calm lake")
    fox = pipe.text.get("a fox")
    seen, handle = _conditioning_recorder(pipe)
    try:
        per_chunk = []
        for k in range(4):
            if k == 2:
                pipe.set_prompt("a fox")
            before = len(seen)
            result = pipe.next_chunk()
            per_chunk.append((result.prompt, seen[before:]))
    finally:
        handle.remove()
    for k, (prompt, embeds) in enumerate(per_chunk):
        assert len(embeds) == 3  # one forward per pyramid stage with steps [1,1,1]
        expected = lake if k < 2 else fox
        assert prompt == ("a calm lake" if k < 2 else "a fox")
        assert all(torch.equal(e, expected) for e in embeds), f"chunk {k} got the wrong conditioning"


def test_prompt_blend_interpolates_over_k_chunks(small_pipe):
    pipe = small_pipe
    pipe.reset(0)
    pipe.set_prompt("sunrise")
    pipe.next_chunk()
    old, new = pipe.text.get("sunrise"), pipe.text.get("sunset")
    pipe.set_prompt("sunset", blend_chunks=2)
    seen, handle = _conditioning_recorder(pipe)
    try:
        pipe.next_chunk()
        pipe.next_chunk()
        pipe.next_chunk()
    finally:
        handle.remove()
    assert torch.allclose(seen[0], torch.lerp(old, new, 0.5))
    assert torch.equal(seen[3], new) and torch.equal(seen[6], new)


def test_known_prompts_are_not_re_encoded_and_cache_is_bounded(small_pipe):
    pipe = small_pipe
    pipe.reset(0)
    pipe.set_prompt("first")
    pipe.next_chunk()
    calls = pipe.text.encode_calls
    pipe.set_prompt("first")
    pipe.next_chunk()
    assert pipe.text.encode_calls == calls
    for i in range(10):
        pipe.text.get(f"prompt {i}")
    assert len(pipe.text) == pipe.config.text_cache_size == 4


def test_reset_restarts_exactly_and_set_seed_keeps_history(small_pipe):
    pipe = small_pipe

    def run(n):
        return [pipe.next_chunk().frames for _ in range(n)]

    pipe.reset(5)
    pipe.set_prompt("a bird")
    first = run(3)
    pipe.reset(5)
    again = run(3)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert pipe.chunk_index == 3
    # set_seed at chunk 3 differs from a reset with that seed: the history is kept.
    pipe.set_seed(9)
    cont = pipe.next_chunk()
    assert cont.chunk == 3 and cont.seed == 9
    pipe.reset(9)
    fresh = pipe.next_chunk()
    assert fresh.chunk == 0
    assert not np.array_equal(cont.frames, fresh.frames)
    assert_differs_clearly(fresh.frames, first[0], "another seed")  # so the exact-equality checks above can fail


def test_image_cut_and_blend_change_the_anchor(small_pipe):
    pipe = small_pipe
    pipe.reset(1)
    pipe.set_prompt("a road")
    pipe.next_chunk()
    generated_anchor = pipe.memory.anchor.clone()
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    pipe.set_image(image, transition="blend")
    pipe.next_chunk()
    blended = pipe.memory.anchor.clone()
    assert not torch.equal(blended, generated_anchor)
    pipe.next_chunk()
    pipe.next_chunk()  # image_blend_chunks = 3: the anchor has arrived at the image latent
    arrived = pipe.memory.anchor.clone()
    pipe.next_chunk()
    assert torch.equal(pipe.memory.anchor, arrived)
    pipe.set_image(image, transition="cut")
    pipe.next_chunk()
    assert not torch.equal(pipe.memory.anchor, arrived)  # re-encoded with fresh noise, history restarted
    pipe.set_image(None)
    pipe.next_chunk()
    assert pipe.memory.anchor is not None  # the next chunk's first frame became the anchor


def test_video_input_replaces_history(small_pipe):
    pipe = small_pipe
    pipe.reset(2)
    pipe.set_prompt("waves")
    pipe.next_chunk()
    clip = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    pipe.set_video(clip)
    pipe.next_chunk()
    assert pipe.memory.latents.shape[2] == sum(pipe.config.history_sizes)


def test_memory_bounded_over_200_chunks(small_pipe):
    pipe = small_pipe
    pipe.reset(3)
    pipe.set_prompt("endless")
    window_shape = tuple(pipe.memory.latents.shape)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    counts = []
    for k in range(200):
        if k % 50 == 0:
            pipe.set_prompt(f"endless {k}")
        result = pipe.next_chunk()
        assert result.chunk == k
        if k in (20, 199):
            counts.append(live_tensors())
        assert tuple(pipe.memory.latents.shape) == window_shape
    assert counts[1] <= counts[0], f"live tensors grew from {counts[0]} to {counts[1]}"
    assert len(pipe.text) <= pipe.config.text_cache_size


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda p: p.set_prompt(""), "prompt"),
        (lambda p: p.set_prompt("x", blend_chunks=-1), "blend_chunks"),
        (lambda p: p.reset(-1), "seed"),
        (lambda p: p.set_seed("7"), "seed"),
        (lambda p: p.set_image(np.zeros((64, 64, 3), np.float32)), "image"),
        (lambda p: p.set_image(np.zeros((64, 64), np.uint8)), "image"),
        (lambda p: p.set_image(np.zeros((64, 64, 3), np.uint8), transition="fade"), "transition"),
        (lambda p: p.set_video(np.zeros((64, 64, 3), np.uint8)), "video"),
    ],
)
def test_bad_input_names_the_field(small_pipe, call, field):
    with pytest.raises(ValueError, match=field):
        call(small_pipe)


def test_next_chunk_without_prompt_is_a_clear_error(tiny_pipeline_dir):
    pipe = HeliosStreamPipeline.from_pretrained(tiny_pipeline_dir, height=64, width=64, num_latent_frames_per_chunk=1)
    with pytest.raises(ValueError, match="prompt"):
        pipe.next_chunk()


def test_image_of_other_size_is_resized(small_pipe):
    small_pipe.set_image(np.zeros((100, 50, 3), np.uint8))
    image, transition = small_pipe._pending_image
    assert image.shape == (64, 64, 3) and transition == "cut"
    small_pipe.reset(0)
