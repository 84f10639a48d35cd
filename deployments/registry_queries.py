"""The registry's read-only queries: session records, long polls on their status, pools and stats.

Split out of deployments/registry.py (one job: answer questions about the registry's state
without changing it); a mixin of SessionRegistry, as deployments/readers.py RegistryReaders.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from deployments.protocol import SessionRecord, SessionStatus
from deployments.protocol_pool import PoolDescription, RegistryStats
from deployments.readers import ReaderTable
from deployments.registry_recovery import RETRIED


class RegistryQueries:
    """The SessionRegistry's queries (spares, GET, admin listing, long polls, pools, stats)."""

    sessions: dict[str, SessionRecord]
    ended: OrderedDict[str, SessionRecord]
    queues: dict[str, deque[str]]
    pools: Any
    readers: ReaderTable
    counters: dict[str, int]
    _shutting_down: bool
    _status_changed: asyncio.Event
    spares: Any
    _spare_of: dict[str, Any]
    _position: Callable[[SessionRecord], int | None]

    @RETRIED
    async def owns_spare(self, session_id: str) -> bool:
        """Asked by a parked spare: whether this registry still keeps it (else it exits)."""
        return self.spares.owns(session_id) or session_id in self._spare_of

    @RETRIED
    async def spare_counts(self) -> dict[str, int]:
        """Parked spare actors per model (tests and operators)."""
        return {m: len(spares) for m, spares in self.spares.ready.items()}

    @RETRIED
    async def get_session(self, session_id: str) -> SessionRecord | None:
        """A copy of the record (with queue position while queued), or None when unknown."""
        rec = self.sessions.get(session_id) or self.ended.get(session_id)
        if rec is None:
            return None
        return rec.public(self._position(rec))

    async def list_sessions(self) -> list[SessionRecord]:
        """Every live session of every tenant (queued ones with their position): the admin API."""
        return [r.public(self._position(r)) for r in self.sessions.values()]

    @RETRIED
    async def wait_admitted(self, session_id: str, timeout_s: float) -> SessionRecord | None:
        """Long poll: the record once the session is no longer queued, or after `timeout_s` (record as it is).

        Readers of a queued session call this in a loop instead of polling GET: one call
        per change (admission, end), not two a second per reader.
        """
        return await self._wait_until(session_id, timeout_s, lambda rec: rec.status is not SessionStatus.QUEUED)

    @RETRIED
    async def wait_ended(self, session_id: str, timeout_s: float) -> SessionRecord | None:
        """Long poll: the record once the session has ended, or after `timeout_s` (record as it is).

        A reader whose session actor is gone asks this for the end reason: the watchdog
        concludes within a `watchdog_period_s` or two.
        """
        return await self._wait_until(session_id, timeout_s, lambda rec: rec.status is SessionStatus.ENDED)

    async def _wait_until(self, session_id: str, timeout_s: float, done: Callable[[SessionRecord], bool]) -> SessionRecord | None:
        """The record once `done(record)` (or the session is unknown), or after `timeout_s` (at most 300 s)."""
        deadline = time.monotonic() + max(0.0, min(float(timeout_s), 300.0))
        while True:
            rec = self.sessions.get(session_id) or self.ended.get(session_id)
            remaining = deadline - time.monotonic()
            if rec is None or done(rec) or remaining <= 0:
                return await self.get_session(session_id)
            try:
                await asyncio.wait_for(self._status_changed.wait(), remaining)
            except TimeoutError:
                pass

    async def describe_pools(self) -> dict[str, PoolDescription]:
        """Every model's pool: bounds, target, queue, and each group's state, node and session (admin API)."""
        return self.pools.describe({m: len(q) for m, q in self.queues.items()})

    @RETRIED
    async def group_workers(self, group_id: str) -> list:
        """Worker handles of a group (tests and operators: inspect or kill a rank)."""
        return self.pools.group_workers(group_id)

    async def state_counts(self) -> dict[str, int]:
        """Entries of every per-session table (the soak checks which stay bounded: docs/soak.md).

        `ended` is a memo of the last ENDED_KEPT ended sessions (bounded by design); every other one
        is 0 with no session live or queued."""
        return {
            "sessions": len(self.sessions), "ended": len(self.ended), "pending": len(self.pending),
            "launching": len(self._launching), "request_of": len(self._request_of), "spare_of": len(self._spare_of),
            "ending": len(self._ending), "queued": sum(len(q) for q in self.queues.values()),
            "tasks": len(self._tasks), "actor_cache": len(self._session_actors), **self.readers.counts(),
        }

    async def memory_report(self, trim: bool = False, objects: bool = False, trace: bool = False) -> dict:
        """What this process holds (helios.runtime.memdebug; docs/soak.md)."""
        from helios.runtime.memdebug import memory_report

        from deployments.detached import loaded_actor_classes

        return {**memory_report(trim, objects, trace), "state": await self.state_counts(), "actor_classes": loaded_actor_classes()}

    @RETRIED
    async def stats(self) -> RegistryStats:
        """Counts for /metrics and /healthz."""
        tenants: dict[str, dict[str, int]] = {}
        for r in self.sessions.values():
            t = tenants.setdefault(r.tenant, {"active": 0, "queued": 0})
            t["queued" if r.status is SessionStatus.QUEUED else "active"] += 1
        models = {m: p.stats(queued=len(self.queues[m])) for m, p in self.pools.by_model.items()}
        return RegistryStats(
            tenants=tenants,
            models=models,
            sessions={sid: {"tenant": r.tenant, "model": r.model, "status": r.public().status.value} for sid, r in self.sessions.items()},
            counters={**self.counters, "groups_rebuilt": self.pools.rebuilt},
            shutting_down=self._shutting_down,
            readers=self.readers.snapshot(),
            ready=not self._shutting_down and all(p["ready"] for p in models.values()),
        )
