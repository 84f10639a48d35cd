"""The benchmark-only `pacing: off` really is unpaced and the default stays paced (a frozen fake clock: no timing).

With the clock never moving, a paced session can release only its first chunk; an unpaced one
releases chunk after chunk. The config field and its plumbing into the session actor are checked too.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from helios.models.helios import HeliosModel
from helios.runtime import FakeClock, MemorySink, MonotonicClock, Session, UnpacedClock, pacing_options

from .runtime_support import FastEngine

N = 4  # frames per chunk


def _session(pacing: str, clock: FakeClock, sink: MemorySink) -> Session:
    session = Session(HeliosModel(FastEngine(frames_per_chunk=N)), sink, release="chunk", **pacing_options(pacing, clock))
    session.start()
    session.call({"command": "set_prompt", "args": {"prompt": "p"}})
    session.call({"command": "start"})
    return session


def test_pacing_off_runs_ahead_of_a_clock_that_never_moves():
    clock, sink = FakeClock(0.0), MemorySink()
    session = _session("off", clock, sink)
    try:
        sink.wait_for_frames(6 * N)  # six chunks with the clock frozen
        assert clock.now() == 0.0  # 6 chunks played in zero time: nothing waited on the clock
    finally:
        session.stop()
        assert session.join(30)


def test_default_realtime_pacing_waits_for_the_clock():
    clock, sink = FakeClock(0.0), MemorySink()
    session = _session("realtime", clock, sink)
    try:
        # Chunk 0 goes out at once; the release thread then sleeps until chunk 0 has played.
        clock.wait_for(lambda: sink.frame_count >= N and N / 24.0 in clock.sleepers())
        assert sink.frame_count == N  # frozen clock: no second chunk
        clock.advance_to(N / 24.0)
        sink.wait_for_frames(2 * N)  # chunk 1 once its time came
    finally:
        session.stop()
        assert session.join(30)


def test_pacing_options_and_the_config_field():
    from deployments.config import ModelSpec

    real = pacing_options()
    assert isinstance(real["clock"], MonotonicClock) and real["just_in_time"] is True
    base = FakeClock(5.0)
    off = pacing_options("off", base)
    assert isinstance(off["clock"], UnpacedClock) and off["clock"].now() == 5.0 and off["just_in_time"] is False
    with pytest.raises(ValueError, match="pacing"):
        pacing_options("fast")
    assert ModelSpec(kind="test-pattern").pacing == "realtime"
    assert ModelSpec(kind="test-pattern", pacing="off").pacing == "off"
    with pytest.raises(ValidationError, match="pacing"):
        ModelSpec(kind="test-pattern", pacing="fast")


@pytest.mark.parametrize("pacing, clock_type", [("realtime", MonotonicClock), ("off", UnpacedClock)])
def test_session_actor_builds_its_session_with_the_specs_pacing(pacing, clock_type):
    from deployments.config import ModelSpec
    from deployments.model_factory import TestPatternFactory
    from deployments.protocol import SessionActorArgs, SessionAssignment
    from deployments.session_actor import SessionActor

    spec = ModelSpec(kind="test-pattern", pacing=pacing, options={"height": 16, "width": 16})
    assignment = SessionAssignment("t", None, 1, 60.0, 60.0, None, None)
    actor = SessionActor(SessionActorArgs("s1", "test-pattern", spec, "reg", 4, 16, 0.0, assignment),
                         model_factory=TestPatternFactory({"height": 16, "width": 16}))
    actor._build()  # the plain class, no Ray: only how its Session is made
    try:
        assert isinstance(actor.session.clock, clock_type)
        assert actor.session.just_in_time is (pacing == "realtime")
    finally:
        actor.session.stop()
        assert actor.session.join(30)
