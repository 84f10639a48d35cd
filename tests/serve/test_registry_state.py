"""The registry's stored state (deployments/registry_state.py) without a cluster: what is written reads back."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pytest

from deployments.protocol import SessionRecord, SessionStatus
from deployments.registry_state import (
    META_KEY,
    MemoryKeyValue,
    RegistryStore,
    StateVersionError,
    StoredGroup,
    StoredMeta,
    StoredSession,
)


def _record(sid: str, status: SessionStatus = SessionStatus.QUEUED, group_id: str | None = None) -> SessionRecord:
    return SessionRecord(sid, "alice", "helios-tiny", f"vt_{sid}", 7, actor_name=f"helios-session-{sid}", status=status, group_id=group_id)


class FakeRegistry:
    """Holds state the way the registry does and hands it to the store as a snapshot."""

    def __init__(self) -> None:
        self.meta = StoredMeta()
        self.sessions: dict[str, StoredSession] = {}
        self.ended: OrderedDict[str, SessionRecord] = OrderedDict()

    def snapshot(self):
        return self.meta, self.sessions, self.ended


def _run(coro):
    return asyncio.run(coro)


def test_round_trip_of_sessions_queues_commands_groups_and_ended():
    kv = MemoryKeyValue()
    reg = FakeRegistry()
    group = StoredGroup("helios-tiny", "helios-helios-tiny-0a1b2c3d", "helios-group-helios-helios-tiny-0a1b2c3d",
                        ["w0", "w1"], {"height": 128, "width": 128, "frames_per_chunk": 33, "fps": 24, "chunks_in_flight": 1})
    active = _record("a" * 32, SessionStatus.ACTIVE, group.group_id)
    queued = _record("b" * 32)
    gone = _record("c" * 32, SessionStatus.ACTIVE)
    gone.end("deleted")

    async def write() -> None:
        store = RegistryStore(kv, ended_kept=10)
        store.attach(reg.snapshot)
        reg.sessions = {active.session_id: StoredSession(active),
                        queued.session_id: StoredSession(queued, [{"command": "set_prompt", "args": {"prompt": "a cat"}}], "req-1")}
        reg.ended[gone.session_id] = gone
        reg.meta = StoredMeta(queues={"helios-tiny": [queued.session_id]}, counters={"sessions_created": 3},
                              readers={"lease-1": (active.session_id, "alice", "stream")}, groups=[group], watch_app=True)
        store.changed()
        await store.persisted()

    _run(write())
    state = RegistryStore(kv, ended_kept=10).load()
    assert state.meta == reg.meta
    assert state.meta.readers["lease-1"] == (active.session_id, "alice", "stream")  # a tuple again, not a list
    assert state.sessions[active.session_id].record == active
    assert state.sessions[active.session_id].record.status is SessionStatus.ACTIVE
    assert state.sessions[queued.session_id].pending == [{"command": "set_prompt", "args": {"prompt": "a cat"}}]
    assert state.sessions[queued.session_id].request_id == "req-1"
    assert [r.session_id for r in state.ended] == [gone.session_id]
    assert state.ended[0].end_reason == "deleted"


def test_only_what_changed_is_written_and_ended_sessions_leave_their_live_key():
    kv = MemoryKeyValue()
    reg = FakeRegistry()
    recs = [_record(f"{i:032x}") for i in range(3)]

    async def scenario() -> list[int]:
        store = RegistryStore(kv, ended_kept=10)
        store.attach(reg.snapshot)
        reg.sessions = {r.session_id: StoredSession(r) for r in recs}
        store.changed()
        await store.persisted()
        first = kv.writes
        store.changed()  # nothing moved: nothing written
        await store.persisted()
        unchanged = kv.writes - first
        reg.sessions.pop(recs[0].session_id)
        recs[0].end("deleted")
        reg.ended[recs[0].session_id] = recs[0]
        for _ in range(5):  # several changes before the writer runs: one write
            store.changed()
        flushes = await store.persisted()
        return [first, unchanged, kv.writes - first, flushes]

    first, unchanged, after_end, flushes = _run(scenario())
    assert first == 4  # meta + three sessions
    assert unchanged == 0
    assert after_end == 2  # ended/<id> put, session/<id> deleted (meta unchanged)
    assert flushes == 2
    state = RegistryStore(kv, ended_kept=10).load()
    assert set(state.sessions) == {recs[1].session_id, recs[2].session_id}
    assert [r.session_id for r in state.ended] == [recs[0].session_id]


def test_ended_records_are_bounded_oldest_first():
    kv = MemoryKeyValue()
    reg = FakeRegistry()

    async def scenario() -> None:
        store = RegistryStore(kv, ended_kept=100)
        store.attach(reg.snapshot)
        for i in range(5):
            rec = _record(f"{i:032x}")
            rec.end("deleted")
            rec.ended_at = 1000.0 + i
            reg.ended[rec.session_id] = rec
        store.changed()
        await store.persisted()

    _run(scenario())
    state = RegistryStore(kv, ended_kept=3).load()
    assert [r.ended_at for r in state.ended] == [1002.0, 1003.0, 1004.0]
    assert len([k for k in kv.data if k.startswith("ended/")]) == 3  # the older ones are deleted on load


def test_a_rotated_viewer_token_of_an_ended_session_is_written_again():
    kv = MemoryKeyValue()
    reg = FakeRegistry()
    rec = _record("d" * 32)
    rec.end("deleted")

    async def scenario() -> None:
        store = RegistryStore(kv, ended_kept=10)
        store.attach(reg.snapshot)
        reg.ended[rec.session_id] = rec
        store.changed()
        await store.persisted()
        rec.viewer_token = "vt_rotated"
        store.changed()
        await store.persisted()

    _run(scenario())
    assert RegistryStore(kv, ended_kept=10).load().ended[0].viewer_token == "vt_rotated"


def test_an_unknown_state_version_is_refused_not_guessed():
    kv = MemoryKeyValue()
    kv.put(META_KEY, b'{"version": 99}')
    with pytest.raises(StateVersionError, match="version 99"):
        RegistryStore(kv, ended_kept=10).load()


def test_clear_forgets_everything():
    kv = MemoryKeyValue()
    reg = FakeRegistry()
    reg.sessions = {"e" * 32: StoredSession(_record("e" * 32))}

    async def scenario() -> None:
        store = RegistryStore(kv, ended_kept=10)
        store.attach(reg.snapshot)
        store.changed()
        await store.persisted()
        await store.clear()

    _run(scenario())
    assert kv.data == {}
    state = RegistryStore(kv, ended_kept=10).load()
    assert state.meta is None and not state.sessions and not state.ended
