"""Session mechanics with small models: command order, errors, stop, failures, no leaked threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helios.runtime import FakeClock, MemorySink, Session, VideoModel, command, get_ctx
from helios.runtime.context import SessionHost

from .runtime_support import ack, drive, event, failed, session_threads


class Counter(VideoModel):
    """Records commands; its loop waits for `go`, emits `n` blocks, then returns or raises."""

    def __init__(self, n: int = 0, fail_at: int | None = None, bad_frames: bool = False) -> None:
        self.applied: list[int] = []
        self.go = False
        self.n, self.fail_at, self.bad_frames = n, fail_at, bad_frames
        self.ctx_in_command = None

    @command("add")
    def add(self, value: int) -> int:
        """Append a value; answers the count."""
        self.applied.append(value)
        self.ctx_in_command = get_ctx()
        return len(self.applied)

    @command("go")
    def go_cmd(self) -> None:
        """Let the loop run."""
        self.go = True

    @command("explode")
    def explode(self) -> None:
        """A bug in a command."""
        raise KeyError("boom")

    @command("refuse")
    def refuse(self) -> None:
        """A refused command."""
        raise ValueError("value: not today")

    def state(self) -> dict:
        return {"applied": list(self.applied)}

    def start_session(self) -> None:
        ctx = get_ctx()
        if not ctx.wait_for(lambda: self.go):
            return
        for i in range(self.n):
            if self.fail_at == i:
                raise RuntimeError(f"model broke at block {i}")
            frames = np.zeros((2, 8, 8, 3), dtype=np.float32 if self.bad_frames else np.uint8)
            ctx.emit_block(frames, chunk=i, prompt="p")


@pytest.fixture
def run_session():
    sessions = []

    def make(model, **kwargs):
        sink = MemorySink()
        kwargs.setdefault("fps", 1000.0)
        session = Session(model, sink, **kwargs).start()
        sessions.append(session)
        return session, sink

    yield make
    for s in sessions:
        s.stop("test teardown")
        assert s.join(10), "session threads still alive"
        assert session_threads(s) == []


def test_commands_applied_in_arrival_order_with_acks(run_session):
    model = Counter()
    session, sink = run_session(model)
    futures = [session.submit({"command": "add", "args": {"value": i}, "id": f"c{i}"}) for i in range(50)]
    acks = [f.result(10) for f in futures]
    assert model.applied == list(range(50))
    assert [a["result"] for a in acks] == list(range(1, 51))
    assert [m["data"]["id"] for m in sink.snapshot() if m["type"] == "ack"] == [f"c{i}" for i in range(50)]
    assert model.ctx_in_command is session.context


def test_session_implements_the_host_interface_its_context_uses():
    # SessionContext reads the session only through SessionHost; a member missing on Session
    # would surface as an AttributeError deep inside a model's generation loop.
    members = {name for name in vars(SessionHost) if not name.startswith("_")}
    assert members >= {"send", "emit", "stopping", "effective_fps", "frames_released", "chunks_released"}
    session = Session(Counter(), MemorySink())
    assert sorted(name for name in members if not hasattr(session, name)) == []
    assert session.stopping is False and session.frames_released == 0 and session.chunks_released == 0
    session.stop()
    assert session.stopping is True


def test_get_ctx_outside_a_session_raises():
    with pytest.raises(RuntimeError, match="outside a running session"):
        get_ctx()


def test_builtin_get_state_and_list_commands(run_session):
    session, _ = run_session(Counter())
    session.call({"command": "add", "args": {"value": 7}})
    assert session.call({"command": "get_state", "id": 1})["result"] == {"applied": [7]}
    names = [c["name"] for c in session.call({"command": "list_commands"})["result"]]
    assert names == ["add", "explode", "get_state", "go", "list_commands", "refuse"]


@pytest.mark.parametrize(
    "cmd, needles",
    [
        ({"command": "fly", "id": "x"}, ["unknown command 'fly'", "add"]),
        ({"args": {}, "id": "x"}, ["command: missing"]),
        ({"command": "add", "id": "x"}, ["add:", "args.value", "missing"]),
        ({"command": "add", "args": {"value": "1"}, "id": "x"}, ["add:", "args.value", "valid integer"]),
        ({"command": "add", "args": "1", "id": "x"}, ["add:", "'args' must be an object"]),
        ({"command": "add", "args": {"value": 1}, "id": "x", "extra": 1}, ["unknown field", "extra"]),
        ({"command": "refuse", "id": "x"}, ["refuse: value: not today"]),
        ({"command": "explode", "id": "x"}, ["explode: internal error", "KeyError"]),
    ],
)
def test_bad_commands_get_error_and_failed_ack_and_session_goes_on(run_session, cmd, needles):
    model = Counter()
    session, sink = run_session(model)
    before = len(sink.snapshot())
    result = session.call(cmd)
    assert result["ok"] is False and result["id"] == "x"
    assert sink.snapshot()[before:] == failed("x", *needles)
    assert session.call({"command": "add", "args": {"value": 1}})["ok"] is True
    assert model.applied == [1]


def test_not_a_dict_command_is_refused(run_session):
    session, sink = run_session(Counter())
    assert session.call(["add"]) == {"id": None, "ok": False, "error": "command: expected an object {command, args, id}, got list", "result": None}


def test_loop_exception_reports_error_then_session_ended_and_no_thread_left():
    model = Counter(n=3, fail_at=1)
    sink = MemorySink()
    session = Session(model, sink, fps=1000.0).start()
    session.call({"command": "go", "id": "g"})
    assert session.wait_ended(30)
    assert session.join(10)
    msgs = sink.snapshot()
    assert msgs[-2:] == [
        event("error", message="generation failed: RuntimeError: model broke at block 1"),
        event("session_ended", reason="error"),
    ]
    assert session.end_reason == "error"
    assert session_threads(session) == []
    # Commands after the end are refused, not lost in a queue.
    assert session.call({"command": "add", "args": {"value": 1}}) == ack(None, False, "session has ended")["data"]


def test_bad_frames_from_the_loop_end_the_session_with_a_named_error():
    session = Session(Counter(n=1, bad_frames=True), MemorySink(), fps=1000.0).start()
    session.call({"command": "go"})
    assert session.wait_ended(30) and session.join(10)
    errors = session.sink.events("error")
    assert len(errors) == 1 and "frames: expected uint8 (N, H, W, 3)" in errors[0]["message"]


def test_completed_loop_plays_out_every_frame_before_session_ended():
    clock = FakeClock()
    sink = MemorySink(clock)
    session = Session(Counter(n=3), sink, clock=clock, lookahead=5).start()
    session.call({"command": "go"})
    drive(clock, sink, 6)
    assert session.wait_ended(30) and session.join(10)
    assert sink.frame_count == 6
    assert sink.messages[-1] == event("session_ended", reason="completed")
    assert [b.info["chunk"] for b in sink.blocks] == [0, 0, 1, 1, 2, 2]
    assert [b.info["last_of_chunk"] for b in sink.blocks] == [False, True] * 3
    assert [b.info["first_frame"] for b in sink.blocks] == list(range(6))


def test_stop_while_waiting_ends_with_reason_and_nothing_after():
    model = Counter()
    sink = MemorySink()
    session = Session(model, sink).start()
    session.call({"command": "add", "args": {"value": 1}})
    session.stop("client_closed")
    assert session.join(10)
    assert session.ended and session.end_reason == "client_closed"
    assert sink.messages[-1] == event("session_ended", reason="client_closed")
    assert sum(1 for m in sink.messages if m["data"].get("event") == "session_ended") == 1
    assert session_threads(session) == []


@pytest.mark.parametrize("cmd_id, echoed", [("c1", "c1"), (7, 7), (1.5, None), (["x"], None), (True, None)])
def test_commands_after_the_end_echo_the_same_ids_as_live_ones(cmd_id, echoed):
    """Found by the protocol fuzzer: a session that had ended echoed any `id` (1.5, a list) in its refusal."""
    sink = MemorySink()
    session = Session(Counter(), sink).start()
    live = session.call({"command": "add", "args": {"value": 1}, "id": cmd_id})
    assert live["id"] == echoed
    session.stop("deleted")
    assert session.join(10)
    assert session.call({"command": "add", "args": {"value": 1}, "id": cmd_id}) == {
        "id": echoed, "ok": False, "error": "session has ended", "result": None}


def test_stop_while_generator_blocked_on_pacing():
    clock = FakeClock()  # never advanced: the generator blocks on the lookahead
    sink = MemorySink(clock)
    session = Session(Counter(n=100), sink, clock=clock, lookahead=1).start()
    session.call({"command": "go"})
    clock.next_deadline()  # playback is waiting for frame 1's time
    session.stop("stopped")
    assert session.join(10)
    assert sink.messages[-1] == event("session_ended", reason="stopped")
    assert session_threads(session) == []


def test_stop_before_start_sends_session_ended():
    sink = MemorySink()
    session = Session(Counter(), sink)
    session.stop("never_started")
    assert session.ended and sink.messages == [event("session_ended", reason="never_started")]


@pytest.mark.parametrize("kwargs, needle", [({"lookahead": -1}, "lookahead"), ({"release": "burst"}, "release"), ({"fps": 0}, "fps")])
def test_bad_session_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Session(Counter(), MemorySink(), **kwargs)


def test_threads_are_named_after_the_session():
    session = Session(Counter(), MemorySink(), session_id="abc123").start()
    try:
        names = sorted(t.name for t in session_threads(session))
        assert names == ["session-abc123-commands", "session-abc123-generation", "session-abc123-release"]
    finally:
        session.stop()
        assert session.join(10)
    assert not any("abc123" in t.name for t in threading.enumerate())
