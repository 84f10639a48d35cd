"""Session limits of the Helios protocol: each refused with an error naming it, the session
keeps running and nothing else changes; `state` messages stay small however much is scheduled."""

from __future__ import annotations

import base64
import json

import pytest
from PIL import Image
from pydantic import ValidationError

from helios.models.helios import HeliosModel
from helios.models.limits import SessionLimits
from helios.models.testpattern import TestPatternEngine
from helios.runtime import MemorySink, Session

from tests.crafted_images import encode, png_header_only, truncated_png

from .runtime_support import GatedEngine, session_threads

HW = 64


@pytest.fixture
def open_session():
    """Start sessions of the test-pattern Helios protocol with given limits; all stopped at teardown."""
    sessions: list[tuple[Session, GatedEngine]] = []

    def start(limits: SessionLimits | None = None) -> tuple[Session, MemorySink, GatedEngine]:
        sink = MemorySink()
        engine = GatedEngine(TestPatternEngine(HW, HW))  # the test decides when each chunk is made
        session = Session(HeliosModel(engine, limits=limits), sink, fps=2000.0).start()
        sessions.append((session, engine))
        return session, sink, engine

    yield start
    for session, engine in sessions:
        engine.allow(1000)
        session.stop("stopped")
        assert session.join(60) and session_threads(session) == []


def schedule(session: Session, chunk: int, prompt: str = "p", cmd_id: str | None = None) -> dict:
    return session.call({"command": "schedule_prompt", "args": {"prompt": prompt, "chunk": chunk}, "id": cmd_id})


def refused_with(session: Session, sink: MemorySink, ack: dict, *needles: str) -> None:
    """A failed ack and an `error` event, both naming every needle."""
    assert ack["ok"] is False, ack
    for needle in needles:
        assert needle in ack["error"], (needle, ack["error"])
    errors = [m["data"]["message"] for m in sink.snapshot() if m["data"].get("event") == "error"]
    assert errors and errors[-1] == ack["error"]


def assert_keeps_running(session: Session, sink: MemorySink, engine: GatedEngine) -> None:
    """The session still takes commands and generates: one more chunk completes."""
    before = len(sink.events("chunk_complete"))
    state = session.call({"command": "get_state"})["result"]
    if not state["running"]:
        if "0" not in state["scheduled_prompts"]:
            assert session.call({"command": "set_prompt", "args": {"prompt": "still here"}})["ok"]
        assert session.call({"command": "start"})["ok"]
    engine.allow(1)
    sink.wait_until(lambda: len(sink.events("chunk_complete")) > before, what="a chunk after the refusals")
    engine.wait_begun(engine.finished + 1)  # the next chunk is at the gate: state is still now
    assert not session.ended


def test_defaults():
    limits = SessionLimits()
    assert (limits.max_scheduled_prompts, limits.max_chunks_ahead, limits.max_prompt_chars) == (64, 10_000, 4000)
    assert (limits.max_image_bytes, limits.max_image_pixels) == (64 * 1024, 16_000_000)
    with pytest.raises(ValidationError, match="max_scheduled_prompts"):
        SessionLimits(max_scheduled_prompts=0)
    with pytest.raises(ValidationError, match="max_prompt_chars"):
        SessionLimits(max_prompt_chars=5000)  # over the published schema's ceiling
    with pytest.raises(ValidationError, match="typo"):
        SessionLimits(typo=1)


def test_pending_prompts_are_capped(open_session):
    session, sink, engine = open_session(SessionLimits(max_scheduled_prompts=5))
    for chunk in range(5):
        assert schedule(session, chunk)["ok"]
    n_messages = len(sink.snapshot())
    ack = schedule(session, 9, cmd_id="over")
    refused_with(session, sink, ack, "schedule_prompt:", "max_scheduled_prompts limit is 5", "5 prompts are already scheduled")
    assert ack["id"] == "over"
    assert [m["type"] for m in sink.snapshot()[n_messages:]] == ["event", "ack"]  # no state, no prompt_scheduled
    ack = session.call({"command": "set_prompt", "args": {"prompt": "q"}})  # chunk 0 is taken: replaces it
    assert ack["ok"], ack
    assert schedule(session, 3, "replaced")["ok"]  # replacing a scheduled chunk is always allowed
    state = session.call({"command": "get_state"})["result"]
    assert state["scheduled_count"] == 5
    assert state["scheduled_prompts"] == {"0": "q", "1": "p", "2": "p", "3": "replaced", "4": "p"}
    assert_keeps_running(session, sink, engine)
    # Chunk 0 is done and chunk 1 in generation: both entries were used, there is room for two.
    assert session.call({"command": "get_state"})["result"]["scheduled_count"] == 3
    assert schedule(session, 50)["ok"] and schedule(session, 51)["ok"]
    refused_with(session, sink, schedule(session, 52), "max_scheduled_prompts")


def test_set_prompt_counts_too(open_session):
    session, sink, engine = open_session(SessionLimits(max_scheduled_prompts=1))
    assert schedule(session, 7)["ok"]
    refused_with(session, sink, session.call({"command": "set_prompt", "args": {"prompt": "x"}}), "set_prompt:", "max_scheduled_prompts limit is 1")
    assert session.call({"command": "get_state"})["result"]["scheduled_prompts"] == {"7": "p"}


def test_chunks_ahead_are_capped(open_session):
    session, sink, engine = open_session()
    assert schedule(session, 10_000)["ok"]
    ack = schedule(session, 10_001)
    refused_with(session, sink, ack, "schedule_prompt: chunk: 10001 is 10001 chunks ahead", "max_chunks_ahead limit is 10000")
    assert session.call({"command": "get_state"})["result"]["scheduled_prompts"] == {"10000": "p"}
    assert_keeps_running(session, sink, engine)


def test_chunks_ahead_count_from_the_next_chunk_to_generate(open_session):
    session, sink, engine = open_session(SessionLimits(max_chunks_ahead=3))
    assert session.call({"command": "set_prompt", "args": {"prompt": "go"}})["ok"]
    assert session.call({"command": "start"})["ok"]
    engine.allow(2)
    engine.wait_begun(3)  # chunks 0 and 1 done, chunk 2 in flight: the next open chunk is 3
    assert schedule(session, 6)["ok"]
    refused_with(session, sink, schedule(session, 7), "7 is 4 chunks ahead of the next chunk to generate (3)", "max_chunks_ahead limit is 3")


def test_prompt_length_is_capped(open_session):
    session, sink, engine = open_session(SessionLimits(max_prompt_chars=100))
    assert session.call({"command": "set_prompt", "args": {"prompt": "x" * 100}})["ok"]
    assert session.call({"command": "set_prompt", "args": {"prompt": "  " + "y" * 100 + "  "}})["ok"]  # trimmed first
    refused_with(session, sink, session.call({"command": "set_prompt", "args": {"prompt": "x" * 101}}),
                 "set_prompt: prompt: 101 characters, over the max_prompt_chars limit of 100")
    refused_with(session, sink, schedule(session, 2, "z" * 101), "schedule_prompt: prompt: 101 characters", "max_prompt_chars")
    # The published ceiling (4000) is checked by the argument schema itself.
    refused_with(session, sink, session.call({"command": "set_prompt", "args": {"prompt": "x" * 4001}}),
                 "set_prompt: args.prompt", "at most 4000 characters")
    assert session.call({"command": "get_state"})["result"]["scheduled_prompts"] == {"0": "y" * 100}
    assert_keeps_running(session, sink, engine)


def test_state_shows_the_earliest_entries_shortened(open_session):
    session, sink, engine = open_session(SessionLimits(state_scheduled_entries=3, state_prompt_chars=20))
    long = "a long prompt that goes on and on"
    for chunk in (9, 4, 6, 1, 12):
        assert schedule(session, chunk, f"{chunk} {long}")["ok"]
    state = [m for m in sink.snapshot() if m["type"] == "state"][-1]["data"]
    assert state["scheduled_count"] == 5
    assert state["scheduled_prompts"] == {"1": "1 a long prompt tha\u2026", "4": "4 a long prompt tha\u2026", "6": "6 a long prompt tha\u2026"}
    assert all(len(p) == 20 for p in state["scheduled_prompts"].values())
    # The prompt_scheduled event carries the whole prompt; get_schedule pages through them all.
    assert sink.events("prompt_scheduled")[-1] == {"event": "prompt_scheduled", "chunk": 12, "prompt": f"12 {long}"}
    page = session.call({"command": "get_schedule", "args": {"limit": 2}})["result"]
    assert page == {"entries": [{"chunk": 1, "prompt": f"1 {long}"}, {"chunk": 4, "prompt": f"4 {long}"}], "total": 5, "next_chunk": 6}
    page = session.call({"command": "get_schedule", "args": {"from_chunk": page["next_chunk"], "limit": 16}})["result"]
    assert [e["chunk"] for e in page["entries"]] == [6, 9, 12] and page["next_chunk"] is None
    ack = session.call({"command": "get_schedule", "args": {"limit": 17}})
    refused_with(session, sink, ack, "get_schedule: args.limit")


def test_1500_scheduled_prompts_keep_state_small(open_session):
    """The hostile case from issue 11: 1,500 prompts of 3,900 characters at chunks 1..1500."""
    session, sink, engine = open_session()
    prompt = "x" * 3900
    assert session.call({"command": "set_prompt", "args": {"prompt": "p0"}})["ok"]
    acks = [schedule(session, chunk, prompt) for chunk in range(1, 1501)]
    accepted = sum(a["ok"] for a in acks)
    assert accepted == 63  # 64 pending with chunk 0
    assert all("max_scheduled_prompts" in a["error"] for a in acks if not a["ok"])
    sizes = [len(json.dumps(m)) for m in sink.snapshot() if m["type"] == "state"]
    get_state = len(json.dumps(session.call({"command": "get_state"})["result"]))
    # 8 entries of 200 characters: a few KB, never the 64 x 3,900 characters pending.
    assert max(sizes) < 3_000 and get_state < 3_000, (max(sizes), get_state)
    assert_keeps_running(session, sink, engine)
    sizes = [len(json.dumps(m)) for m in sink.snapshot() if m["type"] == "state"]
    assert max(sizes) < 3_000 + 3_900  # running: current_prompt may now be a full prompt


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _image(width: int, height: int, fmt: str = "PNG") -> str:
    return _b64(encode(Image.new("RGB", (width, height), (10, 120, 240)), fmt))


def test_image_limits_are_refused_by_name_and_the_session_keeps_its_image(open_session):
    session, sink, engine = open_session(SessionLimits(max_image_pixels=1_000_000))
    assert session.call({"command": "set_image", "args": {"image_b64": _image(1000, 1000)}})["ok"]
    images = len(sink.events("image_set"))
    for payload, needles in [
        (_image(1001, 1000), ["set_image: image_b64: image of 1001x1000 = 1001000 pixels", "max_image_pixels limit of 1000000"]),
        (_b64(png_header_only(40_000, 40_000)), ["set_image: image_b64:", "max_image_pixels"]),
        (_image(32, 32, "GIF"), ["set_image: image_b64: GIF images are not accepted; send PNG, JPEG or WebP"]),
        (_image(32, 32, "BMP"), ["set_image: image_b64: BMP images are not accepted"]),
        (_b64(truncated_png()), ["set_image: image_b64: the PNG image could not be decoded", "truncated or damaged"]),
    ]:
        refused_with(session, sink, session.call({"command": "set_image", "args": {"image_b64": payload}}), *needles)
    assert len(sink.events("image_set")) == images
    assert session.model._image is not None and session.model._image.shape == (HW, HW, 3)
    assert_keeps_running(session, sink, engine)


def test_limits_of_one_session_do_not_touch_another(open_session):
    tight, _, _ = open_session(SessionLimits(max_scheduled_prompts=1))
    roomy, _, _ = open_session()
    assert schedule(tight, 1)["ok"]
    assert not schedule(tight, 2)["ok"]
    assert all(schedule(roomy, c)["ok"] for c in range(1, 11))
    assert roomy.call({"command": "get_state"})["result"]["scheduled_count"] == 10
