"""The registry's recovery: what it stores as it changes, and how a restarted registry takes it back.

A mixin of SessionRegistry (as RegistryReaders and RegistryWatchdog): the storage itself is
deployments/registry_state.py; here is what goes into it (`_snapshot`) and how a new
incarnation puts it back in its constructor (`_restore`): the records, the queues in their
order, the set-up commands, counters and reader leases, the shard groups found again by
name (deployments/shard.py `reacquire_shard_group`), the groups a dead registry was still
building removed, and sessions that were starting resolved by whether their actor exists.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from typing import Any

import ray

from deployments.config import ServingConfig
from deployments.naming import NAMESPACE, placement_group_name, shard_group_id
from deployments.protocol import SessionRecord, SessionStatus
from deployments.readers import ReaderTable
from deployments.registry_state import RegistryState, RegistryStore, StoredGroup, StoredMeta, StoredSession
from deployments.shard import ShardGroup, reacquire_shard_group, remove_stray_groups

logger = logging.getLogger(__name__)

RETRIED = ray.method(max_task_retries=-1)
"""For methods safe to run twice: Ray sends them again to the restarted registry instead of failing."""


class RegistryRecovery:
    """Persistence and restoration of the SessionRegistry's state (a mixin)."""

    config: ServingConfig
    name: str
    sessions: dict[str, SessionRecord]
    ended: OrderedDict[str, SessionRecord]
    queues: dict[str, deque[str]]
    pending: dict[str, list[dict]]
    counters: dict[str, int]
    readers: ReaderTable
    pools: Any
    store: RegistryStore
    restored_at: float | None
    _request_of: dict[str, str]
    _watching: bool
    _remember: Callable[[SessionRecord], None]
    _spawn: Callable[[Coroutine], None]
    _start_pools: Callable[[], None]
    _admit_waiting: Callable[[str], None]
    _watch_app: Callable[[], Coroutine]

    def _persist(self) -> None:
        """The state changed: have it written (coalesced; `await self.store.persisted()` to wait for it)."""
        self.store.changed()

    def _snapshot(self) -> tuple[StoredMeta, dict[str, StoredSession], OrderedDict[str, SessionRecord]]:
        meta = StoredMeta(
            queues={m: list(q) for m, q in self.queues.items()},
            counters=dict(self.counters),
            readers=dict(self.readers.leases),
            groups=self.pools.snapshot(),
            groups_rebuilt=self.pools.rebuilt,
            watch_app=self._watching,
        )
        sessions = {
            sid: StoredSession(rec, list(self.pending.get(sid, [])), self._request_of.get(sid)) for sid, rec in self.sessions.items()
        }
        return meta, sessions, self.ended

    @RETRIED
    async def persisted(self) -> int:
        """Wait until every change so far is in the GCS (tests: kill the registry after it); returns writes so far."""
        return await self.store.persisted()

    def _restore(self, state: RegistryState) -> bool:
        """Take back what the previous incarnation stored (this is a restart); False when nothing was stored.

        Runs in the constructor, before any call is served: blocking GCS lookups (its groups by
        name) are fine here and make the restored state whole before the first answer.
        """
        if state.meta is None and not state.sessions and not state.ended:
            return False
        t0 = time.monotonic()
        meta = state.meta or StoredMeta()
        for rec in state.ended:
            self.ended[rec.session_id] = rec
        for sid, stored in state.sessions.items():
            if stored.record.model not in self.config.models:
                stored.record.end("error: its model is no longer offered (registry restarted with another config)")
                self._remember(stored.record)
                continue
            self.sessions[sid] = stored.record
            if stored.pending:
                self.pending[sid] = list(stored.pending)
            if stored.request_id:
                self._request_of[sid] = stored.request_id
        for model, queue in self.queues.items():
            queued = {sid for sid, r in self.sessions.items() if r.model == model and r.status is SessionStatus.QUEUED}
            kept = [sid for sid in meta.queues.get(model, []) if sid in queued]
            # Queued after the last `meta` write (a crash between two keys of one write): last, oldest first.
            late = sorted(queued - set(kept), key=lambda sid: self.sessions[sid].created_at)
            queue.extend(kept + late)
        self.counters.update(meta.counters)
        self.readers.restore({lease: held for lease, held in meta.readers.items() if held[0] in self.sessions})
        self._restore_starting()
        groups = self._reacquire_groups(meta.groups)
        leased: dict[str, dict[str, str | None]] = {m: {} for m in self.config.models}
        for sid, rec in self.sessions.items():
            if rec.status in (SessionStatus.STARTING, SessionStatus.ACTIVE):
                leased[rec.model][sid] = rec.group_id
        self.pools.restore(groups, leased)
        self.pools.rebuilt = meta.groups_rebuilt
        self._watching = meta.watch_app
        self.restored_at = time.time()
        logger.warning(
            "registry %s restarted: %d sessions (%d queued), %d ended, %d of %d groups back in %.2fs",
            self.name, len(self.sessions), sum(len(q) for q in self.queues.values()), len(self.ended),
            sum(len(g) for g in groups.values()), len(meta.groups), time.monotonic() - t0,
        )
        return True

    def _restore_starting(self) -> None:
        """A session that was starting when the registry died: running if its actor exists, else ended."""
        for sid, rec in list(self.sessions.items()):
            if rec.status is not SessionStatus.STARTING:
                continue
            try:
                ray.get_actor(rec.actor_name, namespace=NAMESPACE)
            except ValueError:  # no such actor: it was never created
                self.sessions.pop(sid)
                rec.end("error: the registry restarted before the session's actor started")
                self._remember(rec)
                continue
            rec.status = SessionStatus.ACTIVE

    def _reacquire_groups(self, stored: list[StoredGroup]) -> dict[str, list[ShardGroup]]:
        """The stored groups found again by name (the rest is removed and rebuilt), and strays removed."""
        groups: dict[str, list[ShardGroup]] = {m: [] for m in self.config.models}
        for g in stored:
            if g.model not in groups:
                continue
            group = reacquire_shard_group(g.group_id, len(g.worker_names), g.geometry, g.node_id)
            if group is not None:
                groups[g.model].append(group)
        keep = {placement_group_name(g.group_id) for found in groups.values() for g in found}
        prefixes = [placement_group_name(shard_group_id(self.config.app_name, m, "")) for m in self.config.models]
        for name in remove_stray_groups(prefixes, keep):
            logger.warning("removed placement group %s: still building when the registry died", name)
        return groups

    def _resume(self) -> None:
        """After a restart: watch the app again, refill the pools, admit whom a free slot allows."""
        if self._watching:
            self._spawn(self._watch_app())
        self._start_pools()
        for model in self.queues:
            self._admit_waiting(model)
