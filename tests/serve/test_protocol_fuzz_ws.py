"""Protocol fuzzing over the WebSocket: random command sequences against a served session.

The same commands and checker as the in-process fuzzer (tests/runtime/test_protocol_fuzz.py),
sent as JSON text frames to `/v1/sessions/{id}/ws` of the shared served app (test-pattern
model, real clock), every message read back from the socket fed to `StreamChecker`. One
session per example (deleted at its end: the checker then wants exactly one
`session_ended`, last, and every command acked by then). The front door's own refusals
(frames its schema rejects, the per-session command rate) must keep the same shape and order
as the session's: an `error` event and a failed ack, in the order the commands were sent.
Few examples in CI; `HELIOS_FUZZ_EXAMPLES` raises them (docs/testing.md).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from helios.models.limits import SessionLimits
from tests.runtime.fuzz_support import command_name, commands, fuzz_settings
from tests.runtime.protocol_oracle import Sent, StreamChecker, tally

WAIT_S = 60.0
MODEL = "test-pattern"
STATS: Counter = Counter()


def frame_refusal(cmd: Any) -> str | None:
    """The field the front door's `CommandRequest` schema names when it refuses a frame, else None."""
    if not isinstance(cmd, dict):
        return "body:"
    extra = sorted(set(cmd) - {"command", "args", "id"})
    if not isinstance(cmd.get("command"), str) or not cmd.get("command"):
        return "command:"
    if "args" in cmd and not isinstance(cmd["args"], dict):
        return "args:"
    if cmd.get("id") is not None and not isinstance(cmd["id"], str):
        return "id:"
    if extra:
        return f"{extra[0]}:"
    return None


class SocketReader:
    """Every message of one WebSocket, read on a thread, in order."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.items: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="fuzz-ws-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for text in self.ws:
                with self._cond:
                    self.items.append(json.loads(text))
                    self._cond.notify_all()
        except Exception:  # noqa: BLE001 - a closed socket ends the reading; the checks say what is missing
            pass
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def wait(self, predicate, what: str, timeout: float = WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate() or self.closed.is_set(), timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {self.items[-4:]}")

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.items)


class SocketFuzz(RuleBasedStateMachine):
    """One served session per example, driven through its WebSocket."""

    served: Any = None  # set by the test function (hypothesis builds machines without fixtures)

    def __init__(self) -> None:
        from websockets.sync.client import connect

        super().__init__()
        served = self.served
        r = served.create(model=MODEL)
        assert r.status_code in (201, 202), r.text
        self.sid = r.json()["session_id"]
        served.wait_active(self.sid)
        opts = served.config.models[MODEL].options
        url = served.base_url.replace("http://", "ws://") + f"/v1/sessions/{self.sid}/ws"
        self.ws = connect(url, additional_headers=served.headers(), open_timeout=WAIT_S)
        self.reader = SocketReader(self.ws)
        self.checker = StreamChecker(limits=served.config.models[MODEL].limits or SessionLimits(),
                                     image_size=(opts["width"], opts["height"]), seed=None, rate_limited_ok=True)
        self.deleted = False

    def _feed(self) -> None:
        self.checker.feed_new(self.reader.snapshot())

    def _send(self, cmd: Any, valid: bool | None) -> None:
        outside = frame_refusal(cmd)
        ack_id = cmd.get("id") if isinstance(cmd, dict) and isinstance(cmd.get("id"), str) else None
        self.checker.sent(Sent(cmd, ack_id, None if outside else command_name(cmd, valid), valid, outside))
        self.ws.send(json.dumps(cmd))

    def _wait_acked(self) -> None:
        want = len(self.checker.acked) + len(self.checker.expected)

        def done() -> bool:
            self._feed()
            return len(self.checker.acked) >= want

        self.reader.wait(done, f"{want} acks")
        assert len(self.checker.acked) >= want, f"socket closed with {len(self.checker.expected)} commands unacked"

    @precondition(lambda self: not self.deleted)
    @rule(drawn=commands())
    def command(self, drawn) -> None:
        self._send(*drawn)
        self._wait_acked()

    @precondition(lambda self: not self.deleted)
    @rule(batch=st.lists(commands(), min_size=2, max_size=8))
    def burst(self, batch) -> None:
        """Frames back to back without waiting: acks in order, refusals of the front door included."""
        for d in batch:
            self._send(*d)
        self._wait_acked()

    @precondition(lambda self: not self.deleted)
    @rule(prompt=st.sampled_from(["a fox", "the fox sleeps"]))
    def start_streaming(self, prompt: str) -> None:
        self._send({"command": "set_prompt", "args": {"prompt": prompt}, "id": "s"}, True)
        self._send({"command": "start", "id": "s"}, True)
        self._wait_acked()

    @precondition(lambda self: not self.deleted and self.checker.running and not self.checker.paused)
    @rule()
    def one_chunk(self) -> None:
        """Wait for the next chunk of a running session (the real clock: about 1.4 s)."""
        want = self.checker.completed + 1

        def done() -> bool:
            self._feed()
            return self.checker.completed >= want or not self.checker.running

        self.reader.wait(done, "the next chunk")

    @precondition(lambda self: not self.deleted)
    @rule()
    def delete(self) -> None:
        """DELETE mid-sequence: session_ended, last, then the socket closes."""
        self._end()

    def _end(self) -> None:
        self.deleted = True
        r = self.served.delete(self.sid)
        assert r.status_code in (200, 204, 404, 409), r.text
        self.reader.wait(lambda: self.reader.closed.is_set(), "the socket to close after DELETE")
        self._feed()

    @precondition(lambda self: self.deleted)
    @rule(drawn=commands())
    def after_delete(self, drawn) -> None:
        """Commands after the end: refused (409 naming session_id, or the schema's 422), nothing more on the socket."""
        cmd, _ = drawn
        r = self.served.http.post(f"/v1/sessions/{self.sid}/commands", json=cmd, headers=self.served.headers())
        assert r.status_code in (409, 422), r.text
        assert len(self.reader.snapshot()) == self.checker.fed

    @invariant()
    def stream_holds(self) -> None:
        self._feed()

    def teardown(self) -> None:
        try:
            if not self.deleted:
                self._end()
            if self.checker.broken:
                return
            c = self.checker
            assert c.ended == 1, f"{c.ended} session_ended messages"
            assert not c.expected, f"commands never acked: {[s.cmd for s in c.expected]}"
            tally(STATS, c)
        finally:
            self.ws.close()
            if not self.deleted:
                self.served.delete(self.sid)


def test_protocol_fuzz_over_the_websocket(served):
    served.wait_free(MODEL, 1)
    SocketFuzz.served = served
    try:
        SocketFuzz.TestCase.settings = fuzz_settings(ci_examples=6, steps=16)
        SocketFuzz.TestCase().runTest()
    finally:
        SocketFuzz.served = None


def test_front_door_refusals_come_in_order_with_their_error_event(served):
    """Found by the fuzzer: a frame the front door refused itself got a bare ack (no `error` event), sent at
    once, so it could overtake the ack of the command before it (that one travels through the message log)."""
    from websockets.sync.client import connect

    served.wait_free(MODEL, 1)
    sid = served.create(model=MODEL).json()["session_id"]
    try:
        served.wait_active(sid)
        url = served.base_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws"
        with connect(url, additional_headers=served.headers(), open_timeout=WAIT_S) as ws:
            reader = SocketReader(ws)
            ids = []
            for i in range(4):
                frames = [{"command": "set_prompt", "args": {"prompt": f"p{i}"}, "id": f"{i}a"},
                          {"command": "get_state", "id": f"{i}b", "bogus": 1},
                          {"command": "get_state", "id": f"{i}c"},
                          {"command": "pause", "id": f"{i}d", "args": [1]}]
                for f in frames:
                    ws.send(json.dumps(f))
                ids += [f["id"] for f in frames]
            reader.wait(lambda: sum(m["type"] == "ack" for m in reader.items) >= len(ids), "every ack")
            items = reader.snapshot()
        acks = [(i, m["data"]) for i, m in enumerate(items) if m["type"] == "ack"]
        assert [a["id"] for _, a in acks] == ids
        for i, a in acks:
            if not a["ok"]:
                assert items[i - 1] == {"type": "event", "data": {"event": "error", "message": a["error"]}}, items[i - 1]
        assert [a["ok"] for _, a in acks] == [True, False, True, False] * 4
    finally:
        served.delete(sid)
