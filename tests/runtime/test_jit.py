"""Just-in-time chunk starts with an injected clock: when each chunk begins, what it uses.

Each test is a script over a FakeClock: it waits until the session's threads sleep on the
deadlines the schedule predicts (so the schedule itself is what is asserted), then moves
time to the earliest. Only the test moves time, and only while every session thread is
parked, so every time below is exact.
"""

from __future__ import annotations

import threading

import pytest

from helios.models.helios import HeliosModel
from helios.pipeline.engine import ChunkResult, SynchronousEngine
from helios.runtime import FakeClock, JustInTime, MemorySink, Session

from .runtime_support import FastEngine, GatedEngine, event

FPS = 24.0
N = 4  # frames per chunk
C = N / FPS  # one chunk on screen
MARGIN = 0.05


class ClockedEngine(SynchronousEngine):
    """Wraps an engine: records the (fake) time and playback queue when each chunk begins,
    then spends `seconds` of fake time generating it."""

    def __init__(self, inner, clock: FakeClock, seconds: float = 0.0) -> None:
        self.inner, self.clock, self.seconds = inner, clock, seconds
        self.height, self.width = inner.height, inner.width
        self.frames_per_chunk, self.fps = inner.frames_per_chunk, inner.fps
        self.starts: list[float] = []
        self.pending_at_start: list[int] = []
        self.session: Session | None = None
        self.abort = threading.Event()

    @property
    def chunk_index(self) -> int:
        return self.inner.chunk_index

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)

    def set_seed(self, seed: int) -> None:
        self.inner.set_seed(seed)

    def set_prompt(self, prompt: str, blend_chunks: int = 0) -> None:
        self.inner.set_prompt(prompt, blend_chunks)

    def set_image(self, image, transition="cut") -> None:
        self.inner.set_image(image, transition)

    def next_chunk(self) -> ChunkResult:
        self.starts.append(self.clock.now())
        self.pending_at_start.append(self.session.chunks_pending)
        if self.seconds:
            self.clock.sleep_until(self.clock.now() + self.seconds, self.abort)
        return self.inner.next_chunk()


def wait_sleepers(clock: FakeClock, expected: list[float], timeout: float = 30.0) -> None:
    """Until exactly the threads the schedule predicts sleep on the clock, at those deadlines."""
    want = sorted(expected)

    def match() -> bool:
        got = clock.sleepers()
        return len(got) == len(want) and all(abs(a - b) < 1e-9 for a, b in zip(got, want))

    try:
        clock.wait_for(match, timeout)
    except TimeoutError:
        raise AssertionError(f"expected sleepers at {want}, got {clock.sleepers()} (now {clock.now()})") from None


def advance_to(clock: FakeClock, t: float) -> None:
    """Move time to `t`, or to the sleeper deadline `t` stands for (the same time up to float rounding)."""
    near = [d for d in clock.sleepers() if abs(d - t) < 1e-9]
    clock.advance_to(max([t, *near]))


def started_session(engine: ClockedEngine, clock: FakeClock, sink: MemorySink, **jit) -> Session:
    session = Session(HeliosModel(engine), sink, clock=clock, release="chunk",
                      jit=JustInTime(margin_s=MARGIN, **jit))
    engine.session = session
    session.start()
    assert session.call({"command": "set_prompt", "args": {"prompt": "first"}})["ok"]
    assert session.call({"command": "start"})["ok"]
    return session


def stop(session: Session, engine: ClockedEngine) -> None:
    engine.abort.set()
    session.stop()
    assert session.join(30)


def completed(sink: MemorySink, chunk: int) -> dict:
    return sink.wait_for_message(lambda m: m["data"].get("event") == "chunk_complete" and m["data"]["chunk"] == chunk)["data"]


def test_a_fast_generator_begins_each_chunk_one_lead_before_it_is_shown_and_never_queues():
    clock = FakeClock()
    sink = MemorySink(clock)
    engine = ClockedEngine(FastEngine(frames_per_chunk=N), clock)  # no fake time: lead = the margin
    session = started_session(engine, clock, sink)
    try:
        for k in range(1, 6):
            # Chunk k-1 is on screen until k*C; chunk k waits to begin at k*C - lead.
            wait_sleepers(clock, [k * C - MARGIN, k * C])
            assert len(engine.starts) == k  # nothing generated ahead
            advance_to(clock, k * C - MARGIN)
            clock.wait_for(lambda: len(engine.starts) == k + 1 and session.chunks_pending == 2)
            advance_to(clock, k * C)
        wait_sleepers(clock, [6 * C - MARGIN, 6 * C])
    finally:
        stop(session, engine)
    assert session.jit.lead_s() == pytest.approx(MARGIN)  # never late: no extra margin
    assert engine.starts == pytest.approx([0.0] + [k * C - MARGIN for k in range(1, 6)], abs=1e-9)
    assert sink.release_times == pytest.approx([k * C for k in range(6)], abs=1e-9)
    # When a chunk begins, at most the chunk on screen is in playback: none is queued ahead.
    assert engine.pending_at_start == [0] + [1] * 5


def test_a_slow_generator_runs_back_to_back():
    gen_s = 0.25  # > C: slower than real time
    clock = FakeClock()
    sink = MemorySink(clock)
    engine = ClockedEngine(FastEngine(frames_per_chunk=N), clock, seconds=gen_s)
    session = started_session(engine, clock, sink)
    try:
        wait_sleepers(clock, [gen_s])  # chunk 0 generating; nothing to play yet
        advance_to(clock, gen_s)
        for k in range(1, 5):
            # Chunk k-1 was shown the moment it was ready; chunk k began at once.
            wait_sleepers(clock, [k * gen_s + C, (k + 1) * gen_s])
            advance_to(clock, k * gen_s + C)  # chunk k-1 has played out; the screen waits
            clock.wait_for(lambda: session.chunks_pending == 0)
            wait_sleepers(clock, [(k + 1) * gen_s])
            advance_to(clock, (k + 1) * gen_s)
        sink.wait_until(lambda: len(sink.blocks) == 5, what="chunk 4 shown")
    finally:
        stop(session, engine)
    assert session.jit.estimate_s == pytest.approx(gen_s)
    assert engine.starts[:5] == pytest.approx([k * gen_s for k in range(5)], abs=1e-9)  # no idle time
    assert sink.release_times[:5] == pytest.approx([(k + 1) * gen_s for k in range(5)], abs=1e-9)


def test_start_times_follow_the_measured_generation_time():
    gen_s = 0.05  # faster than real time: lead = 0.05 * 1.2 + margin once measured
    lead = gen_s * 1.2 + MARGIN
    clock = FakeClock()
    sink = MemorySink(clock)
    engine = ClockedEngine(FastEngine(frames_per_chunk=N), clock, seconds=gen_s)
    session = started_session(engine, clock, sink, margin_frac=0.2)
    try:
        wait_sleepers(clock, [gen_s])
        advance_to(clock, gen_s)  # chunk 0 ready and shown at gen_s
        for k in range(1, 4):
            shown = gen_s + k * C  # chunk k is needed when chunk k-1 has played out
            wait_sleepers(clock, [shown - lead, shown])
            advance_to(clock, shown - lead)
            wait_sleepers(clock, [shown - lead + gen_s, shown])
            advance_to(clock, shown - lead + gen_s)
            clock.wait_for(lambda: session.chunks_pending == 2)  # ready, waiting for the screen
            advance_to(clock, shown)
        sink.wait_until(lambda: len(sink.blocks) == 4, what="chunk 3 shown")
    finally:
        stop(session, engine)
    assert engine.starts[:4] == pytest.approx([0.0] + [gen_s + k * C - lead for k in range(1, 4)], abs=1e-9)
    assert sink.release_times[:4] == pytest.approx([gen_s + k * C for k in range(4)], abs=1e-9)  # never late


def test_set_prompt_applies_to_the_next_chunk_not_yet_begun():
    clock = FakeClock()
    sink = MemorySink(clock)
    gate = GatedEngine(FastEngine(frames_per_chunk=N))
    engine = ClockedEngine(gate, clock)
    session = started_session(engine, clock, sink)
    try:
        gate.allow(2)  # chunks 0 and 1 pass the gate
        wait_sleepers(clock, [C - MARGIN, C])
        advance_to(clock, C - MARGIN)
        clock.wait_for(lambda: session.chunks_pending == 2)
        advance_to(clock, C)  # chunk 1 on screen; chunk 2 not begun (it begins at 2C - lead)
        wait_sleepers(clock, [2 * C - MARGIN, 2 * C])
        advance_to(clock, 2 * C - MARGIN - 0.01)  # late in chunk 1's time on screen
        start = len(sink.snapshot())
        assert session.call({"command": "set_prompt", "args": {"prompt": "second"}})["ok"]
        assert sink.snapshot()[start] == event("prompt_scheduled", chunk=2, prompt="second")
        acked = clock.now()
        advance_to(clock, 2 * C - MARGIN)
        gate.wait_begun(3)  # chunk 2 in flight (held at the gate): a prompt now is for chunk 3
        start = len(sink.snapshot())
        assert session.call({"command": "set_prompt", "args": {"prompt": "third"}})["ok"]
        assert sink.snapshot()[start] == event("prompt_scheduled", chunk=3, prompt="third")
        gate.allow(2)
        assert completed(sink, 2)["prompt"] == "second"
        clock.wait_for(lambda: session.chunks_pending == 2)
        advance_to(clock, 2 * C)
        wait_sleepers(clock, [3 * C - MARGIN, 3 * C])
        advance_to(clock, 3 * C - MARGIN)
        assert completed(sink, 3)["prompt"] == "third"
        clock.wait_for(lambda: session.chunks_pending == 2)
        advance_to(clock, 3 * C)
        sink.wait_until(lambda: len(sink.blocks) == 4, what="chunk 3 released")
    finally:
        stop(session, engine)
    assert [b.info["prompt"] for b in sink.blocks[:4]] == ["first", "first", "second", "third"]
    # "second" was acked 0.06 s before its chunk was shown: well within one chunk (C = 0.167 s).
    assert sink.release_times[2] - acked == pytest.approx(MARGIN + 0.01, abs=1e-9)


def test_pause_during_the_wait_holds_and_resume_begins_at_once():
    clock = FakeClock()
    sink = MemorySink(clock)
    engine = ClockedEngine(FastEngine(frames_per_chunk=N), clock)
    session = started_session(engine, clock, sink)
    try:
        wait_sleepers(clock, [C - MARGIN, C])
        assert session.call({"command": "pause"})["ok"]
        advance_to(clock, C - MARGIN)  # the generator wakes, sees the pause and holds
        advance_to(clock, 5 * C)  # chunk 0 long played out
        clock.wait_for(lambda: session.chunks_pending == 0)
        assert len(engine.starts) == 1
        assert session.call({"command": "resume"})["ok"]
        clock.wait_for(lambda: len(engine.starts) == 2)  # playback waits: no lead to wait for
    finally:
        stop(session, engine)
    assert engine.starts == pytest.approx([0.0, 5 * C], abs=1e-9)


def test_lateness_of_a_chunk_begun_on_schedule_widens_the_lead():
    jit = JustInTime(margin_s=0.05, margin_frac=0.0)
    jit.begin(0.0, on_schedule=True)
    jit.finish(0.1, needed_at=0.08)  # took 0.1 s, 0.02 s late
    assert jit.estimate_s == pytest.approx(0.1)
    assert jit.lead_s() == pytest.approx(0.1 + 0.05 + 0.02)
    jit.begin(1.0, on_schedule=True)
    jit.finish(1.1, needed_at=1.2)  # on time: the extra halves
    assert jit.lead_s() == pytest.approx(0.1 + 0.05 + 0.01)
    jit.begin(2.0, on_schedule=False)  # began late already (slow generator): not the margin's fault
    jit.finish(2.1, needed_at=1.9)
    assert jit.lead_s() == pytest.approx(0.1 + 0.05 + 0.005)
    assert JustInTime().start_time(None) is None
    jit.begin(3.0, on_schedule=True)
    jit.begin(3.1, on_schedule=True)  # an engine that pipelines: two chunks in flight
    assert jit.in_flight == 2
    jit.drop()  # the older one was discarded (a reset): it never finishes
    assert jit.in_flight == 1
    jit.finish(3.2, needed_at=4.0)
    assert jit.in_flight == 0 and jit.estimate_s == pytest.approx(0.1)  # measured from the newer one's begin


@pytest.mark.parametrize("kwargs, needle", [({"margin_s": -1}, "margin_s"), ({"margin_frac": -0.1}, "margin_frac"),
                                            ({"window": 0}, "window"), ({"max_extra_s": -1}, "max_extra_s")])
def test_bad_settings_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        JustInTime(**kwargs)
