"""`StreamChecker`: the session protocol's invariants, checked message by message.

The protocol fuzzers (tests/runtime/test_protocol_fuzz.py in-process, tests/serve/
test_protocol_fuzz_ws.py over the WebSocket) send arbitrary command sequences and feed
every message the session sends to one checker. It rebuilds the session's state from the
messages alone and fails on the first message that breaks one of:

- chunk indices: `chunk_complete` chunks are 0, 1, 2, ... since the last reset;
- scheduled prompts are never lost or reordered: every chunk is generated with the
  prompt of the latest entry at or before it (`prompt_scheduled`, last write wins);
- every `state` (and `get_state` result) equals the state the messages before it imply;
- every command is acked exactly once, in the order sent, its own messages just before
  its ack (an `error` event right before every failed ack, with the same text), and its
  outcome is the one the protocol documents for the state it ran in;
- exactly one `session_ended`, and nothing after it.

Only what the messages cannot tell is left open: whether the next chunk's generation has
begun (it consumes the entries due at it, silently when the prompt does not change), so
where a command's target chunk depends on it either documented outcome is accepted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from helios.models.helios import MAX_SEED
from helios.models.limits import SessionLimits

OK_TAILS: dict[str, list[tuple[str, str | None]]] = {
    "set_prompt": [("event", "prompt_scheduled"), ("state", None)],
    "schedule_prompt": [("event", "prompt_scheduled"), ("state", None)],
    "start": [("event", "generation_started"), ("state", None)],
    "pause": [("state", None)],
    "resume": [("state", None)],
    "reset": [("event", "generation_reset"), ("state", None)],
    "set_seed": [("event", "seed_set")],
    "set_image": [("event", "image_set")],
    "get_state": [],
    "get_schedule": [],
    "list_commands": [],
}
"""The messages an accepted command sends, in order, right before its ack."""

KNOWN = set(OK_TAILS)
STATE_AFTER = {"prompt_scheduled", "generation_started", "generation_reset", "prompt_switched", "chunk_complete"}
"""The events a `state` follows; any other `state` is a pause's or a resume's."""


@dataclass
class Sent:
    """One command as the fuzzer sent it: what its ack must say."""

    cmd: Any
    ack_id: Any
    """The id its ack must carry (None where the command has no usable id)."""
    name: str | None
    """The command name when the command is well-formed enough to reach a model command."""
    valid_args: bool | None
    """True/False when the fuzzer knows whether its args validate, None when it does not."""
    outside: str | None = None
    """An error the front door gives before the session sees it (WebSocket frame validation), or None."""


def ack_id_of(cmd: Any) -> Any:
    """The id `Session` echoes: a string or int id, else None."""
    if isinstance(cmd, dict):
        cid = cmd.get("id")
        if isinstance(cid, (str, int)) and not isinstance(cid, bool):
            return cid
    return None


@dataclass
class StreamChecker:
    """Feeds on protocol messages in order; an AssertionError names the broken invariant."""

    limits: SessionLimits = field(default_factory=SessionLimits)
    image_size: tuple[int, int] | None = None
    """(width, height) every `image_set` must report (the model's resolution)."""
    seed: int | None = 0
    """The session's seed; None: take it from the first `state`."""
    depth: int = 1
    """The engine's chunks_in_flight: how far past the completed chunks generation may have begun."""
    rate_limited_ok: bool = False
    """Accept a `command_rate:` refusal for any command (the WebSocket's rate limit)."""

    def __post_init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.snaps: list[dict[str, Any]] = []
        """(running, paused, a prompt at chunk 0) before each message of `history`, and now."""
        self.expected: deque[Sent] = deque()
        self.acked: list[tuple[Sent, dict[str, Any]]] = []
        self.ended = 0
        self.end_reason: str | None = None
        self.rate_limited = 0
        self.fed = 0
        """How many messages of the stream `feed_new` has been given so far."""
        self.broken = False
        """An invariant already failed: a teardown only ends the session (the first failure is the report)."""
        self._reset_stream()

    # --- the state the messages imply ---------------------------------------------------
    def _reset_stream(self) -> None:
        self.running = False
        self.paused = False
        self.completed = 0
        self.frames = 0
        self.current_prompt: str | None = None
        self.scheduled: dict[int, str] = {}
        self.timeline: dict[int, str] = {}
        """Every accepted entry since the reset (never consumed): what each chunk must use."""

    def _consume_through(self, chunk: int) -> None:
        for k in [k for k in self.scheduled if k <= chunk]:
            del self.scheduled[k]

    def _view(self, scheduled: dict[int, str]) -> dict[str, str]:
        cut = self.limits.state_prompt_chars
        first = sorted(scheduled.items())[: self.limits.state_scheduled_entries]
        return {str(k): v if len(v) <= cut else v[: cut - 1] + "\u2026" for k, v in first}

    def _candidates(self) -> list[dict[int, str]]:
        """The schedules the session may hold now: generation of chunks `completed`..`completed+depth-1`
        may have begun (consuming every entry due at it) without a message saying so."""
        out = [dict(self.scheduled)]
        if self.running:
            for n in range(self.completed, self.completed + self.depth):
                out.append({k: v for k, v in self.scheduled.items() if k > n})
        return out

    def _check_state(self, data: dict[str, Any], where: str) -> None:
        if self.seed is None:  # a served session's seed is drawn at admission: its first state says it
            self.seed = data.get("seed")
        expect = {
            "running": self.running,
            "paused": self.paused,
            "current_chunk": self.completed,
            "current_frame": self.frames,
            "current_prompt": self.current_prompt,
            "seed": self.seed,
        }
        got = {k: data.get(k) for k in expect}
        assert got == expect, f"{where}: state {got} != {expect} implied by the messages before it"
        for sched in self._candidates():
            if data.get("scheduled_prompts") == self._view(sched) and data.get("scheduled_count") == len(sched):
                self.scheduled = sched
                break
        else:
            raise AssertionError(
                f"{where}: scheduled_prompts {data.get('scheduled_prompts')} (count {data.get('scheduled_count')}) "
                f"is none of the schedules the messages imply: {self._candidates()}"
            )
        assert isinstance(data.get("effective_fps"), (int, float)), f"{where}: effective_fps {data.get('effective_fps')!r}"

    # --- feeding ------------------------------------------------------------------------
    def sent(self, item: Sent) -> None:
        """A command went out: its ack is due after every earlier one's."""
        self.expected.append(item)

    def feed_all(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            self.feed(m)

    def feed_new(self, stream: list[dict[str, Any]]) -> None:
        """Feed what `stream` (everything received so far) holds past what was fed before; a failed
        invariant marks the checker `broken` and is raised."""
        try:
            self.feed_all(stream[self.fed:])
        except AssertionError:
            self.broken = True
            raise
        self.fed = len(stream)

    def feed(self, msg: dict[str, Any]) -> None:
        where = f"message #{len(self.history)} {msg!r:.300}"
        self.snaps.append({"running": self.running, "paused": self.paused, "has0": 0 in self.scheduled})
        assert self.ended == 0, f"{where}: sent after session_ended"
        assert isinstance(msg, dict) and msg.get("type") in ("state", "event", "ack"), f"{where}: not a protocol message"
        data = msg["data"]
        kind = msg["type"]
        if kind == "ack":
            self._on_ack(data, where)
        elif kind == "state":
            self._on_state(data, where)
        else:
            self._on_event(data, where)
        self.history.append(msg)

    def _on_state(self, data: dict[str, Any], where: str) -> None:
        prev = self.history[-1] if self.history else {"type": None, "data": {}}
        after = prev["data"].get("event") if prev["type"] == "event" else None
        if after not in STATE_AFTER:
            # Not after an event that sends one: the state of a pause or resume, whose ack comes next.
            head = self.expected[0].name if self.expected else None
            assert head in ("pause", "resume"), f"{where}: a state after {prev!r:.120} with {head!r} the next command"
            assert self.running and self.paused == (head == "resume"), f"{where}: {head} in state running={self.running} paused={self.paused}"
            self.paused = head == "pause"
        self._check_state(data, where)

    def _on_event(self, data: dict[str, Any], where: str) -> None:
        name = data.get("event")
        if name == "prompt_scheduled":
            chunk, prompt = data["chunk"], data["prompt"]
            assert isinstance(chunk, int) and chunk >= self.completed, f"{where}: a prompt scheduled in the past"
            assert isinstance(prompt, str) and prompt and prompt == prompt.strip(), f"{where}: prompt not trimmed"
            self.scheduled[chunk] = prompt
            self.timeline[chunk] = prompt
        elif name == "generation_started":
            assert not self.running, f"{where}: started twice"
            assert self.scheduled.get(0) == data["prompt"], f"{where}: start's prompt is not the one scheduled at chunk 0 ({self.scheduled})"
            del self.scheduled[0]
            self.running, self.paused, self.current_prompt = True, False, data["prompt"]
        elif name == "prompt_switched":
            assert self.running, f"{where}: a prompt switch while not running"
            for n in range(self.completed, self.completed + self.depth):
                due = [k for k in self.scheduled if k <= n]
                if due:
                    break
            assert due, f"{where}: a switch with nothing scheduled at or before chunk {n} ({self.scheduled})"
            want = self.scheduled[max(due)]
            assert data["new_prompt"] == want, f"{where}: switched to {data['new_prompt']!r}, the schedule says {want!r}"
            assert want != self.current_prompt, f"{where}: switched to the prompt already in use"
            self._consume_through(n)
            self.current_prompt = want
        elif name == "chunk_complete":
            chunk = data["chunk"]
            assert self.running, f"{where}: a chunk while not running"
            assert chunk == self.completed, f"{where}: chunk {chunk} after {self.completed} chunks since the reset"
            due = [k for k in self.timeline if k <= chunk]
            assert due, f"{where}: no prompt at or before chunk {chunk}"
            want = self.timeline[max(due)]
            assert data["prompt"] == want, f"{where}: chunk {chunk} used {data['prompt']!r}, scheduled {want!r} (lost or reordered)"
            assert isinstance(data["frames"], int) and data["frames"] > 0, where
            self._consume_through(chunk)
            self.completed += 1
            self.frames += data["frames"]
        elif name == "generation_reset":
            assert (data["frame"], data["chunk"]) == (self.frames, self.completed), f"{where}: reset reports {data}"
            self._reset_stream()
        elif name == "seed_set":
            assert isinstance(data["seed"], int) and 0 <= data["seed"] <= MAX_SEED, where
            self.seed = data["seed"]
        elif name == "image_set":
            if self.image_size is not None:
                assert (data["width"], data["height"]) == self.image_size, f"{where}: image not at the model's size"
        elif name == "error":
            assert isinstance(data.get("message"), str) and data["message"], where
        elif name == "session_ended":
            assert isinstance(data.get("reason"), str) and data["reason"], where
            self.ended += 1
            self.end_reason = data["reason"]
        else:
            raise AssertionError(f"{where}: unknown event {name!r}")

    # --- acks ---------------------------------------------------------------------------
    def _tail(self, n: int) -> list[dict[str, Any]]:
        return self.history[-n:] if n else []

    def _on_ack(self, data: dict[str, Any], where: str) -> None:
        assert set(data) >= {"id", "ok", "error", "result"}, f"{where}: ack fields"
        assert self.expected, f"{where}: an ack nobody is waiting for (a command acked twice?)"
        sent = self.expected.popleft()
        assert data["id"] == sent.ack_id, f"{where}: ack for id {data['id']!r}, the next command in order has {sent.ack_id!r} ({sent.cmd!r:.200})"
        self.acked.append((sent, data))
        ok = data["ok"]
        assert isinstance(ok, bool), where
        if not ok:
            err = data["error"]
            assert isinstance(err, str) and err, f"{where}: a refusal without a reason"
            prev = self.history[-1] if self.history else None
            assert prev == {"type": "event", "data": {"event": "error", "message": err}}, (
                f"{where}: a failed ack not right after its error event (got {prev!r:.200})"
            )
            if err.startswith("command_rate:") and self.rate_limited_ok:
                self.rate_limited += 1
                return
            self._check_refusal(sent, err, where)
            return
        assert data["error"] is None, where
        assert sent.outside is None, f"{where}: accepted, yet the fuzzer expected {sent.outside!r}"
        assert sent.name in KNOWN and sent.valid_args is not False, f"{where}: accepted an invalid command {sent.cmd!r:.200}"
        tail = OK_TAILS[sent.name]
        got = [(m["type"], m["data"].get("event") if m["type"] == "event" else None) for m in self._tail(len(tail))]
        assert got == tail, f"{where}: {sent.name} sent {got} before its ack, expected {tail}"
        self._check_accepted(sent, data["result"], where)

    def _check_accepted(self, sent: Sent, result: Any, where: str) -> None:
        name, args = sent.name, (sent.cmd.get("args") or {})
        if name not in ("get_state", "get_schedule", "list_commands"):
            assert result is None, f"{where}: {name} returned {result!r}"
        before = self._before(len(OK_TAILS[name]))
        if name == "start":
            assert before["running"] is False and before["has0"], f"{where}: start accepted in state {before}"
        elif name == "pause":
            assert before["running"] and not before["paused"], f"{where}: pause accepted in state {before}"
        elif name == "resume":
            assert before["running"] and before["paused"], f"{where}: resume accepted in state {before}"
        elif name == "set_seed":
            assert self.seed == args["seed"], where
        elif name in ("set_prompt", "schedule_prompt"):
            ev = self.history[-2]["data"]
            assert ev["prompt"] == args["prompt"].strip(), f"{where}: scheduled {ev['prompt']!r}"
            if name == "schedule_prompt":
                assert ev["chunk"] == args["chunk"], f"{where}: scheduled at {ev['chunk']}, asked {args['chunk']}"
            elif not self.running:
                assert ev["chunk"] == 0, f"{where}: set_prompt before start targets chunk 0, got {ev['chunk']}"
            else:
                assert self.completed <= ev["chunk"] <= self.completed + self.depth, f"{where}: set_prompt at {ev['chunk']}"
        elif name == "get_state":
            self._check_state(result, where + " (get_state result)")
        elif name == "get_schedule":
            self._check_schedule_page(args, result, where)
        elif name == "list_commands":
            names = [c["name"] for c in result]
            assert set(names) == KNOWN, f"{where}: list_commands names {names}"

    def _before(self, tail: int) -> dict[str, Any]:
        """The state the command ran in: as it was before its `tail` own messages."""
        return self.snaps[len(self.history) - tail]

    def _check_schedule_page(self, args: dict[str, Any], result: Any, where: str) -> None:
        frm, limit = args.get("from_chunk", 0), args.get("limit", 8)
        for sched in self._candidates():
            entries = sorted((k, v) for k, v in sched.items() if k >= frm)
            want = {
                "entries": [{"chunk": k, "prompt": v} for k, v in entries[:limit]],
                "total": len(sched),
                "next_chunk": entries[limit][0] if len(entries) > limit else None,
            }
            if result == want:
                self.scheduled = sched
                return
        raise AssertionError(f"{where}: get_schedule {result} matches none of {self._candidates()}")

    def _check_refusal(self, sent: Sent, err: str, where: str) -> None:
        if sent.outside is not None:
            assert err.startswith(sent.outside), f"{where}: refused with {err!r}, expected {sent.outside!r}"
            return
        name = sent.name
        if name is None:  # malformed: the refusal names what is wrong with the command object
            assert err.startswith(("command:", "unknown command", "id:")), f"{where}: malformed command refused with {err!r}"
            return
        assert err.startswith(f"{name}:"), f"{where}: {name} refused with {err!r} (must name the command)"
        if sent.valid_args is False:
            return
        body = err[len(name) + 2 :]
        args = sent.cmd.get("args") or {}
        assert sent.valid_args is True, where
        if name == "start":
            assert self.running or 0 not in self.scheduled, f"{where}: start refused ({err}) in a startable state"
        elif name == "pause":
            assert not self.running or self.paused, f"{where}: pause refused ({err}) while running"
        elif name == "resume":
            assert not self.running or not self.paused, f"{where}: resume refused ({err}) while paused"
        elif name in ("set_prompt", "schedule_prompt"):
            # Every reason that applies is a correct refusal (the protocol does not order them).
            prompt = args["prompt"].strip()
            reasons = []
            if not prompt or len(prompt) > self.limits.max_prompt_chars:
                reasons.append(body.startswith("prompt:"))
            if name == "schedule_prompt":
                chunk = args["chunk"]
                first_lo = self.completed if self.running else 0
                first_hi = self.completed + self.depth if self.running else 0
                if body.startswith("chunk:") and "in the past" in body:
                    reasons.append(chunk < first_hi)
                elif body.startswith("chunk:"):
                    reasons.append(chunk - first_lo > self.limits.max_chunks_ahead)
            if "max_scheduled_prompts" in body:
                reasons.append(any(len(s) >= self.limits.max_scheduled_prompts for s in self._candidates()))
            assert any(reasons), f"{where}: {name} refused with {err!r} in state {self.running=} {self.completed=} {self.scheduled=}"
        elif name in ("set_image",):
            raise AssertionError(f"{where}: a valid image refused: {err}")
        else:
            raise AssertionError(f"{where}: a valid {name} refused: {err}")


def tally(stats: Any, checker: StreamChecker, refused_after_end: int = 0) -> None:
    """Add what one example reached to a Counter: commands accepted and refused, chunks, events."""
    stats["examples"] += 1
    for sent, data in checker.acked:
        stats[f"{'ok' if data['ok'] else 'refused'} {sent.name or 'malformed'}"] += 1
        if not data["ok"] and "max_" in (data["error"] or ""):
            stats["refused over a limit"] += 1
    for m in checker.history:
        if m["type"] == "event" and m["data"]["event"] in ("chunk_complete", "prompt_switched", "generation_reset"):
            stats[m["data"]["event"]] += 1
    stats["refused after session_ended"] += refused_after_end
    stats["messages"] += len(checker.history)
