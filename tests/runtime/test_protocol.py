"""The Helios session protocol (DESIGN section 6), walked command by command in every state.

Each test drives a HeliosModel through a GatedEngine so it knows exactly which chunk is in
flight when a command arrives, and asserts the exact messages (order and fields) each step
produces. Runs on the test-pattern engine and on the real tiny Helios pipeline (64x64,
33-frame chunks).
"""

from __future__ import annotations

import base64
import io
import json
from unittest.mock import ANY

import numpy as np
import pytest
from PIL import Image

from helios.models.helios import HeliosModel
from helios.runtime import MemorySink, Session

from .runtime_support import GatedEngine, Recorder, ack, event, failed, png_b64, session_threads, state

HW = 64
F = 33


@pytest.fixture
def walk(protocol_engine):
    """A started session over a gated engine, with a Recorder; stopped and checked at teardown."""
    engine = GatedEngine(protocol_engine)
    sink = MemorySink()
    session = Session(HeliosModel(engine), sink, fps=2000.0).start()
    rec = Recorder(session, sink)
    yield rec, engine, sink
    session.stop("stopped")
    assert session.join(60), "session threads still alive"
    assert session_threads(session) == []
    assert sink.messages[-1] == event("session_ended", reason="stopped")
    assert sum(1 for m in sink.messages if m["data"].get("event") == "session_ended") == 1
    json.dumps(sink.messages)  # every message is JSON-safe as sent


def since(sink: MemorySink, start: int) -> list[dict]:
    return sink.snapshot()[start:]


def wait_chunk_state(sink: MemorySink, chunk: int, start: int) -> None:
    """Until the `state` that follows chunk `chunk`'s chunk_complete has been sent."""
    sink.wait_for_message(lambda m: m["type"] == "state" and m["data"]["current_chunk"] == chunk + 1
                          and any(x["data"].get("event") == "chunk_complete" and x["data"]["chunk"] == chunk
                                  for x in sink.messages[start:]), start=start, timeout=300)


def test_not_started(walk):
    rec, engine, sink = walk
    run = rec.run
    assert run({"command": "get_state", "id": "s0"}) == [ack("s0", result=state()["data"])]
    assert run({"command": "start", "id": "a"}) == failed("a", "start: no prompt at chunk 0", "set_prompt")
    assert run({"command": "pause", "id": "b"}) == failed("b", "pause: generation has not started")
    assert run({"command": "resume", "id": "c"}) == failed("c", "resume: generation has not started")

    assert run({"command": "set_prompt", "args": {"prompt": "a fox"}, "id": "p0"}) == [
        event("prompt_scheduled", chunk=0, prompt="a fox"),
        state(scheduled_prompts={"0": "a fox"}),
        ack("p0"),
    ]
    assert run({"command": "set_prompt", "args": {"prompt": "  a red fox "}, "id": "p1"}) == [
        event("prompt_scheduled", chunk=0, prompt="a red fox"),
        state(scheduled_prompts={"0": "a red fox"}),
        ack("p1"),
    ]
    assert run({"command": "schedule_prompt", "args": {"prompt": "a bird", "chunk": 2}}) == [
        event("prompt_scheduled", chunk=2, prompt="a bird"),
        state(scheduled_prompts={"0": "a red fox", "2": "a bird"}),
        ack(),
    ]
    assert run({"command": "set_seed", "args": {"seed": 7}, "id": 9}) == [event("seed_set", seed=7), ack(9)]
    assert run({"command": "set_image", "args": {"image_b64": png_b64(), "transition": "blend"}, "id": "i"}) == [
        event("image_set", width=HW, height=HW),
        ack("i"),
    ]
    assert run({"command": "set_image", "args": {"image_b64": png_b64(data_url=False)}, "id": "i2"}) == [
        event("image_set", width=HW, height=HW),
        ack("i2"),
    ]

    # Bad input: an error event and a failed ack naming the problem; nothing else changes.
    too_big = base64.b64encode(np.random.default_rng(0).bytes(70_000)).decode()
    bad = [
        ({"command": "explode"}, ["unknown command 'explode'", "set_prompt"]),
        ({"command": "set_prompt", "args": {}}, ["set_prompt: args.prompt: missing"]),
        ({"command": "set_prompt", "args": {"prompt": 5}}, ["set_prompt: args.prompt", "valid string"]),
        ({"command": "set_prompt", "args": {"prompt": "   "}}, ["set_prompt: prompt: must not be blank"]),
        ({"command": "set_prompt", "args": {"prompt": "x", "chunk": 1}}, ["args.chunk: unknown argument"]),
        ({"command": "schedule_prompt", "args": {"prompt": "x", "chunk": "3"}}, ["schedule_prompt: args.chunk", "integer"]),
        ({"command": "schedule_prompt", "args": {"prompt": "x", "chunk": -1}}, ["args.chunk", "greater than or equal to 0"]),
        ({"command": "schedule_prompt", "args": {"prompt": "x"}}, ["args.chunk: missing"]),
        ({"command": "set_seed", "args": {"seed": -1}}, ["set_seed: args.seed"]),
        ({"command": "set_seed", "args": {"seed": 1.5}}, ["set_seed: args.seed"]),
        ({"command": "set_image", "args": {"image_b64": too_big}}, ["set_image: image_b64", "max_image_bytes limit of 65536"]),
        ({"command": "set_image", "args": {"image_b64": base64.b64encode(b"hello world").decode()}},
         ["set_image: image_b64: not a recognisable image", "PNG, JPEG or WebP"]),
        ({"command": "set_image", "args": {"image_b64": "%%%not base64"}}, ["set_image: image_b64: not valid base64"]),
        ({"command": "set_image", "args": {"image_b64": "data:image/png;base64"}}, ["set_image: image_b64: data URL"]),
        ({"command": "set_image", "args": {"image_b64": png_b64(), "transition": "wipe"}}, ["args.transition", "'cut' or 'blend'"]),
    ]
    for i, (cmd, needles) in enumerate(bad):
        cmd = {**cmd, "id": f"bad{i}"}
        assert run(cmd) == failed(f"bad{i}", *needles), cmd

    expected = state(scheduled_prompts={"0": "a red fox", "2": "a bird"}, seed=7)["data"]
    assert run({"command": "get_state", "id": "s1"}) == [ack("s1", result=expected)]
    schemas = run({"command": "list_commands", "id": "l"})[0]["data"]["result"]
    assert [s["name"] for s in schemas] == sorted(HeliosModel.commands())

    assert run({"command": "reset", "id": "r"}) == [
        event("generation_reset", frame=0, chunk=0),
        state(seed=7),
        ack("r"),
    ]
    assert [c for c in engine.calls if c[0] == "next_chunk"] == []


def test_running_and_paused(walk):
    rec, engine, sink = walk
    run = rec.run
    run({"command": "set_prompt", "args": {"prompt": "p0"}})
    run({"command": "schedule_prompt", "args": {"prompt": "p2", "chunk": 2}})
    assert run({"command": "start", "id": "st"}) == [
        event("generation_started", prompt="p0"),
        state(running=True, current_prompt="p0", scheduled_prompts={"2": "p2"}),
        ack("st"),
    ]
    engine.wait_begun(1)  # chunk 0 in flight
    assert engine.calls == [("reset", 0), ("set_prompt", "p0"), ("next_chunk", 0)]
    running0 = dict(running=True, current_prompt="p0")
    assert run({"command": "set_prompt", "args": {"prompt": "p1"}, "id": "n"}) == [
        event("prompt_scheduled", chunk=1, prompt="p1"),
        state(**running0, scheduled_prompts={"1": "p1", "2": "p2"}),
        ack("n"),
    ]
    assert run({"command": "schedule_prompt", "args": {"prompt": "late", "chunk": 0}, "id": "x"}) == failed(
        "x", "schedule_prompt: chunk: 0 is in the past; the next chunk to generate is 1")
    assert run({"command": "start", "id": "y"}) == failed("y", "start: already started")
    assert run({"command": "resume", "id": "z"}) == failed("z", "resume: not paused")
    assert run({"command": "set_seed", "args": {"seed": 5}}) == [event("seed_set", seed=5), ack()]

    mark = len(sink.snapshot())
    engine.allow(1)
    engine.wait_begun(2)  # chunk 1 in flight: its prompt switch was announced before it began
    assert since(sink, mark) == [
        event("chunk_complete", chunk=0, frames=F, prompt="p0", gen_ms=ANY),
        state(**running0, current_chunk=1, current_frame=F, scheduled_prompts={"1": "p1", "2": "p2"}, seed=5),
        event("prompt_switched", new_prompt="p1"),
        state(running=True, current_prompt="p1", current_chunk=1, current_frame=F, scheduled_prompts={"2": "p2"}, seed=5),
    ]
    assert engine.calls[3:] == [("set_seed", 5), ("set_prompt", "p1"), ("next_chunk", 1)]
    running1 = dict(running=True, current_prompt="p1", current_chunk=1, current_frame=F, seed=5)
    assert run({"command": "pause", "id": "pa"}) == [state(**running1, paused=True, scheduled_prompts={"2": "p2"}), ack("pa")]
    assert run({"command": "pause", "id": "pb"}) == failed("pb", "pause: already paused")

    mark = len(sink.snapshot())
    engine.allow(1)  # the chunk in flight completes, then the stream holds
    wait_chunk_state(sink, 1, mark)
    paused = dict(running=True, current_prompt="p1", current_chunk=2, current_frame=2 * F, seed=5, paused=True)
    assert since(sink, mark) == [
        event("chunk_complete", chunk=1, frames=F, prompt="p1", gen_ms=ANY),
        state(**paused, scheduled_prompts={"2": "p2"}),
    ]
    # Paused: set_prompt targets the current chunk (2), replacing the entry scheduled there.
    assert run({"command": "set_prompt", "args": {"prompt": "p3"}, "id": "pp"}) == [
        event("prompt_scheduled", chunk=2, prompt="p3"),
        state(**paused, scheduled_prompts={"2": "p3"}),
        ack("pp"),
    ]
    assert run({"command": "schedule_prompt", "args": {"prompt": "x", "chunk": 1}, "id": "old"}) == failed(
        "old", "chunk: 1 is in the past; the next chunk to generate is 2")
    assert run({"command": "set_image", "args": {"image_b64": png_b64(), "transition": "cut"}}) == [
        event("image_set", width=HW, height=HW), ack()]
    assert run({"command": "get_state", "id": "g"}) == [ack("g", result=state(**paused, scheduled_prompts={"2": "p3"})["data"])]
    assert [c for c in engine.calls if c[0] == "next_chunk"] == [("next_chunk", 0), ("next_chunk", 1)]

    mark = len(sink.snapshot())
    assert run({"command": "resume", "id": "re"}) == [
        state(**{**paused, "paused": False}, scheduled_prompts={"2": "p3"}),
        ack("re"),
    ]
    engine.wait_begun(3)
    running2 = dict(running=True, current_prompt="p3", current_chunk=2, current_frame=2 * F, seed=5)
    assert since(sink, mark)[2:] == [event("prompt_switched", new_prompt="p3"), state(**running2)]
    assert engine.calls[6:] == [("set_image", (HW, HW, 3), "cut"), ("set_prompt", "p3"), ("next_chunk", 2)]
    mark = len(sink.snapshot())
    engine.allow(1)
    wait_chunk_state(sink, 2, mark)
    assert since(sink, mark)[:2] == [
        event("chunk_complete", chunk=2, frames=F, prompt="p3", gen_ms=ANY),
        state(**{**running2, "current_chunk": 3, "current_frame": 3 * F}),
    ]
    # Frames reach the sink as uint8 (N, H, W, 3) with their chunk and prompt.
    sink.wait_for_frames(2 * F)
    first = sink.blocks[0]
    assert first.frames.dtype == np.uint8 and first.frames.shape == (1, HW, HW, 3)
    assert first.info["chunk"] == 0 and first.info["prompt"] == "p0" and first.info["first_frame"] == 0
    assert [b.info["prompt"] for b in sink.blocks[F : 2 * F]] == ["p1"] * F


def test_reset_while_running_and_after(walk):
    rec, engine, sink = walk
    run = rec.run
    run({"command": "set_seed", "args": {"seed": 3}})
    run({"command": "set_prompt", "args": {"prompt": "q0"}})
    run({"command": "set_image", "args": {"image_b64": png_b64()}})
    run({"command": "start"})
    engine.wait_begun(1)
    assert engine.calls == [("reset", 3), ("set_image", (HW, HW, 3), "cut"), ("set_prompt", "q0"), ("next_chunk", 0)]
    mark = len(sink.snapshot())
    engine.allow(1)
    engine.wait_begun(2)  # chunk 1 in flight
    wait_chunk_state(sink, 0, mark)
    run({"command": "schedule_prompt", "args": {"prompt": "never", "chunk": 5}})

    mark = len(sink.snapshot())
    assert run({"command": "reset", "id": "r"}) == [
        event("generation_reset", frame=F, chunk=1),
        state(seed=3),
        ack("r"),
    ]
    # After the reset (the old chunk still in flight): back to "not started".
    assert run({"command": "start", "id": "a"}) == failed("a", "start: no prompt at chunk 0")
    assert run({"command": "pause", "id": "b"}) == failed("b", "pause: generation has not started")
    assert run({"command": "set_prompt", "args": {"prompt": "q1"}, "id": "p"}) == [
        event("prompt_scheduled", chunk=0, prompt="q1"),
        state(seed=3, scheduled_prompts={"0": "q1"}),
        ack("p"),
    ]
    assert run({"command": "start", "id": "s"}) == [
        event("generation_started", prompt="q1"),
        state(running=True, current_prompt="q1", seed=3),
        ack("s"),
    ]
    engine.allow(1)  # the discarded chunk finishes; the new stream's chunk 0 begins
    engine.wait_begun(3)
    assert engine.calls[4:] == [("next_chunk", 1), ("reset", 3), ("set_prompt", "q1"), ("next_chunk", 0)]
    assert not any(m["data"].get("event") == "chunk_complete" for m in since(sink, mark))
    mark = len(sink.snapshot())
    engine.allow(1)
    wait_chunk_state(sink, 0, mark)
    assert since(sink, mark) == [
        event("chunk_complete", chunk=0, frames=F, prompt="q1", gen_ms=ANY),
        state(running=True, current_prompt="q1", current_chunk=1, current_frame=F, seed=3),
    ]
