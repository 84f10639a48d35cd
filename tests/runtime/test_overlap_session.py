"""A session over the overlapped pipeline: chunk n decodes while chunk n+1 denoises.

Checks, through the real Session and HeliosModel: chunks are reported and released in
order with none lost or repeated across a reset, their frames equal the synchronous
pipeline's, nothing is left decoding after stop, and a scheduled prompt is encoded in the
background from the moment it is scheduled (never by the chunk loop), equal to a
synchronous encode.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from helios.models.helios import HeliosModel
from helios.pipeline import HeliosStreamPipeline
from tests.overlap_support import GEOMETRY, sensitive_pipe
from helios.pipeline.text import PromptEncoder
from helios.runtime import MemorySink, Session

PROMPT = "a red fox running through snow"
TIMEOUT = 300


def _cmd(session: Session, name: str, **args) -> None:
    ack = session.call({"command": name, "args": args}, TIMEOUT)
    assert ack["ok"], ack


def _completed(sink: MemorySink, start: int = 0) -> list[int]:
    return [e["chunk"] for e in sink.events("chunk_complete")[start:]]


def _released_after_restart(sink: MemorySink, chunk: int) -> int:
    """Frames of `chunk` released after the stream restarted at chunk 0 (sink lock held by wait_until)."""
    order = [b.info["chunk"] for b in sink.blocks]
    cut = next((i for i in range(1, len(order)) if order[i] < order[i - 1]), None)
    return 0 if cut is None else sum(len(b.frames) for b in sink.blocks[cut:] if b.info["chunk"] == chunk)


def test_overlapped_session_keeps_order_and_frames_across_reset(tiny_pipeline_dir, one_torch_thread, sensitive_vae):
    pipe = sensitive_pipe(tiny_pipeline_dir, "on", sensitive_vae())
    reference = sensitive_pipe(tiny_pipeline_dir, "off", sensitive_vae())
    reference.reset(0)
    reference.set_prompt(PROMPT)
    expected = [reference.next_chunk().frames for _ in range(6)]
    assert np.abs(expected[0].astype(int) - expected[1].astype(int)).max() > 30  # frames follow the latents

    begun: list[int] = []
    begin = pipe.begin_chunk

    def counting_begin():
        handle = begin()
        begun.append(handle.chunk)
        return handle

    pipe.begin_chunk = counting_begin
    sink = MemorySink()
    session = Session(HeliosModel(pipe), sink, fps=2000.0).start()
    try:
        f = pipe.frames_per_chunk
        _cmd(session, "set_prompt", prompt=PROMPT)
        _cmd(session, "start")
        sink.wait_until(lambda: 2 in _completed(sink), TIMEOUT, "chunk 2 complete")
        _cmd(session, "reset")
        after_reset = len(sink.events("chunk_complete"))
        _cmd(session, "set_prompt", prompt=PROMPT)
        _cmd(session, "start")
        sink.wait_until(lambda: 3 in _completed(sink, after_reset), TIMEOUT, "chunk 3 of the new stream complete")
        sink.wait_until(lambda: _released_after_restart(sink, 3) == f, TIMEOUT, "chunk 3 of the new stream released")
    finally:
        session.stop("stopped")
        assert session.join(TIMEOUT)
    first, second = _completed(sink)[:after_reset], _completed(sink)[after_reset:]
    assert first == list(range(len(first))) and len(first) >= 3
    assert second[:4] == [0, 1, 2, 3] and second == list(range(len(second)))
    # Released frames: per stream, chunk by chunk in order, each chunk once and equal to the synchronous frames.
    order = [b.info["chunk"] for b in sink.blocks]
    cut = next(i for i in range(1, len(order)) if order[i] < order[i - 1])  # where the stream restarted
    for blocks, at_least in ((sink.blocks[:cut], 1), (sink.blocks[cut:], 4)):
        chunks = [b.info["chunk"] for b in blocks]
        assert chunks == sorted(chunks) and chunks[0] == 0
        whole = [c for c in sorted(set(chunks)) if sum(len(b.frames) for b in blocks if b.info["chunk"] == c) == f]
        assert whole[:at_least] == list(range(at_least))
        for chunk in whole:
            frames = np.concatenate([b.frames for b in blocks if b.info["chunk"] == chunk])
            assert np.array_equal(frames, expected[chunk]), f"chunk {chunk} differs from the synchronous pipeline"
    # Nothing left decoding, every begun chunk decoded exactly once.
    assert pipe.decoder.idle
    assert pipe.decoder.decoded == len(begun)
    pipe.close()
    reference.close()


def test_scheduled_prompt_is_encoded_in_the_background_when_scheduled(tiny_pipeline_dir, one_torch_thread):
    pipe = HeliosStreamPipeline.from_pretrained(tiny_pipeline_dir, decode_overlap="on", text_prefetch=True,
                                                **GEOMETRY)
    later = "a lighthouse on a cliff at dusk"
    events: list[tuple[str, str]] = []  # (what, thread name)
    encode, begin = pipe.text._encode, pipe.begin_chunk
    lock = threading.Lock()

    def recording_encode(prompt):
        with lock:
            events.append((f"encode {prompt}", threading.current_thread().name))
        return encode(prompt)

    def recording_begin():
        with lock:
            events.append((f"begin {pipe.chunk_index}", threading.current_thread().name))
        return begin()

    pipe.text._encode, pipe.begin_chunk = recording_encode, recording_begin
    sink = MemorySink()
    session = Session(HeliosModel(pipe), sink, fps=2000.0).start()
    try:
        _cmd(session, "schedule_prompt", prompt=later, chunk=2)
        assert pipe.text.queued(later)  # queued (or already encoded) by the command itself
        _cmd(session, "set_prompt", prompt=PROMPT)
        assert pipe.text.queued(PROMPT)
        _cmd(session, "start")
        sink.wait_until(lambda: 2 in _completed(sink), TIMEOUT, "chunk 2 complete")
    finally:
        session.stop("stopped")
        assert session.join(TIMEOUT)
    names = [what for what, _ in events]
    assert names.index(f"encode {later}") < names.index("begin 2")
    assert names.count(f"encode {later}") == names.count(f"encode {PROMPT}") == 1
    assert {thread for what, thread in events if what.startswith("encode")} == {"helios-text"}
    assert [e["chunk"] for e in sink.events("chunk_complete")][:3] == [0, 1, 2]
    assert sink.events("chunk_complete")[2]["prompt"] == later
    # The background encodes equal a synchronous encoder's, and differ between prompts.
    sync = PromptEncoder(pipe.text.tokenizer, pipe.text.text_encoder, max_length=pipe.text.max_length,
                         cache_size=4, device="cpu", dtype=pipe.dtype)
    for prompt in (PROMPT, later):
        assert torch.equal(pipe.text.get(prompt), sync.get(prompt))
    assert not torch.equal(sync.get(PROMPT), sync.get(later))
    pipe.close()
