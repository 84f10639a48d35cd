"""Protocol fuzzing, in-process: random command sequences against a real `Session`.

A hypothesis state machine sends any command of the protocol (valid or not, in any order,
in any state, ids repeated, several at once without waiting) to a `Session` running the
Helios protocol on the test-pattern engine behind a gate (`GatedEngine`: the machine
decides when chunks are generated, and they are generated while commands arrive), and
feeds every message to `StreamChecker` (tests/runtime/protocol_oracle.py), which fails
on the first broken invariant. Deterministic in CI (derandomized); `HELIOS_FUZZ_EXAMPLES=500`
runs a longer search (docs/testing.md).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from helios.models.helios import HeliosModel
from helios.models.limits import SessionLimits
from helios.models.testpattern import TestPatternEngine
from helios.runtime import MemorySink, Session, get_ctx

from .fuzz_support import command_name, commands, fuzz_settings, ids
from .protocol_oracle import Sent, StreamChecker, ack_id_of, tally
from .runtime_support import GatedEngine, session_threads

W, H = 32, 24
LIMITS = SessionLimits(max_scheduled_prompts=4, max_chunks_ahead=50, max_prompt_chars=40,
                       state_scheduled_entries=3, state_prompt_chars=16)
"""Small limits, so sequences of a few dozen commands reach every one of them."""
WAIT_S = 60.0
STOP_AFTER = 20
"""Steps before `stop` may be drawn: most of an example runs on a live session."""
STATS: Counter = Counter()
"""What the examples of this run reached (a long run prints it: docs/testing.md)."""


class StoppableGate(GatedEngine):
    """`GatedEngine` whose chunk held at the gate when the session stops is the inner engine's real
    chunk (GatedEngine returns a blank stand-in, whose empty prompt the checker would rightly flag)."""

    held = False
    """True while a chunk waits at the gate."""

    def next_chunk(self):
        ctx = get_ctx()
        with self._cond:
            self.begun += 1
            self.held = True
            self._cond.notify_all()
            while self._allowed == 0 and not ctx.should_stop():
                self._cond.wait(0.01)
            if self._allowed:
                self._allowed -= 1
            self.held = False
            self._cond.notify_all()
        return self.inner.next_chunk()

    def starved(self) -> bool:
        """A chunk waits at the gate and no passage is left for it."""
        with self._cond:
            return self.held and self._allowed == 0


class SessionFuzz(RuleBasedStateMachine):
    """One session per example; the rules are the protocol's commands and the passing of time."""

    def __init__(self) -> None:
        super().__init__()
        self.engine = StoppableGate(TestPatternEngine(H, W, frames_per_chunk=2, fps=24))
        self.sink = MemorySink()
        self.session = Session(HeliosModel(self.engine, seed=3, limits=LIMITS), self.sink, fps=4000.0).start()
        self.checker = StreamChecker(limits=LIMITS, image_size=(W, H), seed=3)
        self.futures: list[tuple[Sent, Future]] = []
        self.after_end: list[tuple[Any, Future]] = []
        self.stopped = False
        self.steps = 0

    # --- sending ------------------------------------------------------------------------
    def _submit(self, cmd: Any, valid: bool | None) -> Future:
        if self.stopped:  # answered at once, on the future only: nothing follows session_ended
            fut = self.session.submit(cmd)
            self.after_end.append((cmd, fut))
            return fut
        sent = Sent(cmd, ack_id_of(cmd), command_name(cmd, valid), valid)
        self.checker.sent(sent)
        fut = self.session.submit(cmd)
        self.futures.append((sent, fut))
        return fut

    def _feed(self) -> None:
        self.checker.feed_new(self.sink.snapshot())

    @rule(drawn=commands())
    def command(self, drawn: tuple[Any, bool | None]) -> None:
        self._submit(*drawn).result(WAIT_S)

    @rule(batch=st.lists(commands(), min_size=2, max_size=6))
    def burst(self, batch: list[tuple[Any, bool | None]]) -> None:
        """Several commands back to back, none waited for: acks must still come in order."""
        futs = [self._submit(*d) for d in batch]
        for f in futs:
            f.result(WAIT_S)

    @rule(cmd=st.sampled_from(["start", ["start"], 42, {"command": "get_state", "id": 1.5},
                               {"command": "get_state", "id": ["x"]}, {"command": 5}]))
    def not_a_command(self, cmd: Any) -> None:
        """Objects that are not commands at all (the WebSocket's schema never lets these through)."""
        self._submit(cmd, None).result(WAIT_S)

    @rule(prompt=st.sampled_from(["a fox", "the fox sleeps"]), cid=ids)
    def start_streaming(self, prompt: str, cid: Any) -> None:
        """set_prompt + start: steers most examples into a running session."""
        self._submit({"command": "set_prompt", "args": {"prompt": prompt}, "id": cid}, True).result(WAIT_S)
        self._submit({"command": "start", "id": cid}, True).result(WAIT_S)

    @rule(n=st.integers(1, 3))
    def allow_chunks(self, n: int) -> None:
        """Let the generator run `n` more chunks, while the next commands arrive."""
        self.engine.allow(n)

    @precondition(lambda self: not self.stopped)
    @rule()
    def one_chunk(self) -> None:
        """If generating, let one chunk through and wait for it."""
        self._feed()
        if not (self.checker.running and not self.checker.paused):
            return
        want = self.checker.completed + 1
        # A chunk begun before a reset may hold the gate: it passes (and is dropped), then this one.
        for _ in range(4):
            self.engine.allow(1)
            self._wait(lambda: self._completed_in_sink() >= want or self._reset_in_sink() or self.engine.starved())
            if self._completed_in_sink() >= want or self._reset_in_sink():
                return
        raise AssertionError(f"chunk {want - 1} never came")

    def _wait(self, predicate) -> None:
        """Until `predicate()`: woken by the gate, re-checked every 20 ms for the sink's messages."""
        give_up = time.monotonic() + WAIT_S
        with self.engine._cond:
            while not predicate():
                assert time.monotonic() < give_up, f"timed out after {WAIT_S} s; last messages {self.sink.messages[-6:]}"
                self.engine._cond.wait(0.02)

    def _completed_in_sink(self) -> int:
        n = 0
        for m in self.sink.messages:
            ev = m["data"].get("event") if m["type"] == "event" else None
            n = 0 if ev == "generation_reset" else n + (ev == "chunk_complete")
        return n

    def _reset_in_sink(self) -> bool:
        return any(m["type"] == "event" and m["data"].get("event") in ("generation_reset", "session_ended")
                   for m in self.sink.messages[self.checker.fed:])

    @precondition(lambda self: not self.stopped and self.steps >= STOP_AFTER)
    @rule()
    def stop(self) -> None:
        """End the session mid-sequence (DELETE): later commands are refused, nothing follows session_ended."""
        self.session.stop("deleted")
        assert self.session.join(WAIT_S), "session threads still alive after stop"
        self.stopped = True

    # --- checks -------------------------------------------------------------------------
    @invariant()
    def stream_holds(self) -> None:
        self.steps += 1
        self._feed()

    def teardown(self) -> None:
        self.engine.allow(100)
        self.session.stop("stopped")
        if self.checker.broken:
            self.session.join(WAIT_S)
            return
        try:
            assert self.session.join(WAIT_S), "session threads still alive"
            assert session_threads(self.session) == []
            self._feed()
            c = self.checker
            assert c.ended == 1, f"{c.ended} session_ended messages"
            assert self.sink.messages[-1]["data"].get("event") == "session_ended"
            assert not c.expected, f"commands never acked: {[s.cmd for s in c.expected]}"
            by_sent = {id(s): data for s, data in c.acked}
            for sent, fut in self.futures:  # the caller's answer is the ack the stream carried
                assert fut.result(WAIT_S) == by_sent[id(sent)], f"{sent.cmd!r}: future and stream acks differ"
            for cmd, fut in self.after_end:
                got = fut.result(WAIT_S)
                assert got == {"id": ack_id_of(cmd), "ok": False, "error": "session has ended", "result": None}, got
            tally(STATS, c, len(self.after_end))
        finally:
            self.session.stop("stopped")


SessionFuzz.TestCase.settings = fuzz_settings(ci_examples=30, steps=30)
TestSessionProtocolFuzz = SessionFuzz.TestCase
