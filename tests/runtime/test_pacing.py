"""Pacing with an injected clock: frames every 1/fps, the lookahead bound, stalls without bursts."""

from __future__ import annotations

import numpy as np
import pytest

from helios.models.helios import HeliosModel
from helios.runtime import FakeClock, MemorySink, Session, VideoModel, get_ctx

from .runtime_support import FastEngine, drive, run_out, GatedEngine, event, session_threads

FPS = 24.0
N = 4  # frames per chunk


class Blocks(VideoModel):
    """Emits `chunks` blocks of N frames as fast as pacing allows; records playback when each starts."""

    fps = FPS

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.released_at_start: list[int] = []

    def start_session(self) -> None:
        ctx = get_ctx()
        for i in range(self.chunks):
            if ctx.should_stop():
                return
            self.released_at_start.append(ctx.chunks_released)
            ctx.emit_block(np.full((N, 8, 8, 3), i, dtype=np.uint8), chunk=i, prompt=f"p{i}")


@pytest.mark.parametrize("release", ["frame", "chunk"])
@pytest.mark.parametrize("lookahead", [1, 2])
def test_frames_every_period_and_generator_within_lookahead(lookahead, release):
    clock = FakeClock(100.0)
    sink = MemorySink(clock)
    model = Blocks(chunks=6)
    session = Session(model, sink, clock=clock, lookahead=lookahead, release=release).start()
    # Before any time passes, the generator runs ahead by exactly `lookahead` chunks.
    clock.wait_for(lambda: len(model.released_at_start) == lookahead + 1)
    run_out(clock, session)
    assert session.join(10)
    per_block = 1 if release == "frame" else N
    times = np.array(sink.release_times)
    assert sink.frame_count == 6 * N and all(len(b.frames) == per_block for b in sink.blocks)
    np.testing.assert_allclose(np.diff(times), per_block / FPS, rtol=1e-9)
    assert times[0] == 100.0
    # The stream ended only after its last frame was shown (a whole chunk: after its duration).
    assert clock.now() == pytest.approx(100.0 + (6 * N if release == "chunk" else 6 * N - 1) / FPS)
    # The generator starts chunk n only when at most `lookahead` earlier chunks are unplayed.
    assert model.released_at_start[: lookahead + 1] == [0] * (lookahead + 1)
    for n, released in enumerate(model.released_at_start):
        assert n - released <= lookahead, (n, released)
    assert [b.info["chunk"] for b in sink.blocks] == [i for i in range(6) for _ in range(N // per_block)]
    assert sink.messages[-1] == event("session_ended", reason="completed")


def test_chunk_release_hands_whole_chunks_at_their_first_frame_time():
    clock = FakeClock()
    sink = MemorySink(clock)
    session = Session(Blocks(chunks=4), sink, clock=clock, release="chunk").start()
    run_out(clock, session)
    assert session.join(10)
    assert [len(b.frames) for b in sink.blocks] == [N] * 4
    np.testing.assert_allclose(sink.release_times, [i * N / FPS for i in range(4)], rtol=1e-9, atol=1e-12)
    assert [b.info["first_frame"] for b in sink.blocks] == [0, N, 2 * N, 3 * N]
    assert all(b.info["last_of_chunk"] and b.info["fps"] == FPS for b in sink.blocks)


def _helios_session(clock, sink, engine, lookahead=1):
    # Generation runs ahead (no just-in-time waits): `drive` moves time whenever a thread sleeps
    # on the clock, which is exact only while the release thread is the one that does
    # (just-in-time starts have their own scripted tests in test_jit.py).
    session = Session(HeliosModel(engine), sink, clock=clock, lookahead=lookahead, just_in_time=False).start()
    session.call({"command": "set_prompt", "args": {"prompt": "first"}})
    session.call({"command": "start"})
    return session


def test_slow_generator_stalls_then_restarts_schedule_without_burst():
    clock = FakeClock()
    sink = MemorySink(clock)
    engine = GatedEngine(FastEngine(frames_per_chunk=N))
    session = _helios_session(clock, sink, engine)
    try:
        engine.allow(1)
        drive(clock, sink, N)  # chunk 0 played at t = 0 .. 3/24
        engine.wait_begun(2)  # chunk 1 is "still generating"
        clock.advance(1.0)  # one second later it is ready
        t_ready = clock.now()
        engine.allow(1)
        drive(clock, sink, 2 * N)
        times = np.array(sink.release_times)
        np.testing.assert_allclose(times[N:], t_ready + np.arange(N) / FPS, rtol=1e-9)
        state = session.call({"command": "get_state"})["result"]
        assert 0 < state["effective_fps"] < FPS
    finally:
        session.stop()
        assert session.join(10)


def test_effective_fps_matches_fps_when_generator_keeps_up():
    clock = FakeClock()
    sink = MemorySink(clock)
    session = _helios_session(clock, sink, FastEngine(frames_per_chunk=N))
    try:
        drive(clock, sink, 20 * N)
        assert session.call({"command": "get_state"})["result"]["effective_fps"] == pytest.approx(FPS, rel=1e-6)
    finally:
        session.stop()
        assert session.join(10)
    assert session_threads(session) == []


class BrokenSink(MemorySink):
    def on_frames(self, frames, info):
        raise OSError("viewer pipe closed")


def test_a_sink_that_cannot_take_frames_ends_the_session_with_an_error():
    sink = BrokenSink()
    session = Session(Blocks(chunks=1000), sink, fps=1000.0).start()
    assert session.wait_ended(30) and session.join(10)
    assert sink.messages[-2:] == [
        event("error", message="frame delivery failed: OSError: viewer pipe closed"),
        event("session_ended", reason="error"),
    ]
    assert session_threads(session) == []
