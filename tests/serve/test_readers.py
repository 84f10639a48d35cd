"""The registry's reader table (connection caps) and its long poll for queued sessions, without a cluster.

`SessionRegistry` is a plain class until Ray makes it an actor: here it runs on a local
event loop, so admission changes are driven by hand and every wait is on a condition.
"""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import ServingConfig
from deployments.protocol import ConnectionLimitExceeded, SessionRecord, SessionStatus
from deployments.readers import ReaderTable, new_viewer_token
from deployments.registry import SessionRegistry
from deployments.registry_state import MemoryKeyValue


def _config(**extra) -> ServingConfig:
    return ServingConfig.model_validate({
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": 1}},
        "tenants": [{"name": "t", "api_keys": ["k" * 20], "quota": {"max_streams": 2, "max_event_streams": 1}}],
        "max_viewers_per_session": 3,
        **extra,
    })


def test_viewer_tokens_never_read_as_an_option():
    """`helios session get --token <token>`: argparse takes a value starting with "-" for an option
    (a CI run failed that way); tokens are unique and URL-safe."""
    tokens = {new_viewer_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert not any(t.startswith("-") for t in tokens)
    assert all(t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_reader_caps_per_session_and_per_tenant_name_their_limit():
    table = ReaderTable()
    opts = {"max_per_session": 3, "max_per_tenant": 2, "retry_after_s": 5}
    a = table.open("s1", "t", "stream", **opts)
    table.open("s1", "t", "stream", **opts)
    with pytest.raises(ConnectionLimitExceeded) as info:
        table.open("s2", "t", "stream", **opts)  # the tenant's third video stream
    assert info.value.limit == "max_streams" and info.value.retry_after_s == 5
    table.open("s1", "t", "events", **opts)
    with pytest.raises(ConnectionLimitExceeded) as info:
        table.open("s1", "u", "events", **opts)  # a fourth reader of s1, whoever's tenant
    assert info.value.limit == "max_viewers_per_session" and "max_viewers_per_session" in info.value.detail
    table.close(a)
    table.close(a)  # idempotent
    table.open("s2", "t", "stream", **opts)
    assert table.snapshot() == {"open": 3, "refused_max_streams": 1, "refused_max_viewers_per_session": 1}
    table.drop_session("s1")
    assert table.snapshot()["open"] == 1 and table.per_session == {"s2": 1}
    with pytest.raises(ValueError, match="kind"):
        table.open("s1", "t", "video", **opts)


def test_open_reader_uses_the_owner_tenants_quota():
    async def run():
        reg = SessionRegistry(_config(), kv=MemoryKeyValue())  # no cluster: its state kept in memory
        reg.sessions["s" * 32] = SessionRecord("s" * 32, "t", "test-pattern", "tok", None, "a", status=SessionStatus.ACTIVE)
        await reg.open_reader("s" * 32, "events")
        with pytest.raises(ConnectionLimitExceeded) as info:
            await reg.open_reader("s" * 32, "events")
        return info.value

    exc = asyncio.run(run())
    assert exc.limit == "max_event_streams"


def test_a_reader_that_races_the_end_of_its_session_is_not_counted_and_leaves_nothing():
    """Found by the soak: a reader opened after its session ended (an HLS pull while the actor lingers)
    stayed in the reader table once every session was over, since the end had already dropped the rest."""
    async def run():
        reg = SessionRegistry(_config(), kv=MemoryKeyValue())  # no cluster: its state kept in memory
        sid = "e" * 32
        reg.sessions[sid] = SessionRecord(sid, "t", "test-pattern", "tok", None, "a", status=SessionStatus.ACTIVE)
        live = await reg.open_reader(sid, "stream")
        reg._end_record(sid, "deleted")  # the end drops the live session's readers
        after = await reg.open_reader(sid, "stream")
        counts = reg.readers.counts()
        await reg.close_reader(after)
        await reg.close_reader(live)  # idempotent after the drop
        return counts, reg.readers.counts()

    at_end, closed = asyncio.run(run())
    assert at_end == {"reader_leases": 0, "reader_sessions": 0, "reader_tenants": 0}
    assert closed == at_end


def test_wait_admitted_answers_on_the_change_not_on_a_timer():
    async def run():
        reg = SessionRegistry(_config(), kv=MemoryKeyValue())  # no cluster: its state kept in memory
        sid = "a" * 32
        rec = SessionRecord(sid, "t", "test-pattern", "tok", None, "a")
        reg.sessions[sid] = rec
        reg.queues["test-pattern"].append(sid)
        waiter = asyncio.ensure_future(reg.wait_admitted(sid, 300))
        other = asyncio.ensure_future(reg.wait_admitted(sid, 300))
        await asyncio.sleep(0)  # both are parked on the registry's change event
        reg._notify_status()  # a change that is not this session's: they keep waiting
        await asyncio.sleep(0)
        assert not waiter.done() and not other.done()
        reg.queues["test-pattern"].popleft()
        rec.status = SessionStatus.STARTING
        reg._notify_status()
        got = await asyncio.wait_for(waiter, 5)
        assert got.status is SessionStatus.ACTIVE and (await other).status is SessionStatus.ACTIVE
        # Timeout: the record as it is (still queued).
        sid2 = "b" * 32
        reg.sessions[sid2] = SessionRecord(sid2, "t", "test-pattern", "tok", None, "b")
        reg.queues["test-pattern"].append(sid2)
        assert (await reg.wait_admitted(sid2, 0.01)).status is SessionStatus.QUEUED
        assert await reg.wait_admitted("c" * 32, 1) is None

    asyncio.run(run())
