"""The registry's state in Ray's GCS key-value store, so a restarted registry resumes where it died.

The registry is one detached actor restarted by Ray after a crash or the loss of its node
(`max_restarts=-1`); its memory is gone then, so what admission depends on is written
here on every change and read back by the new incarnation's constructor:

- `session/<id>`: one live session (record, set-up commands kept while queued);
- `ended/<id>`: one ended session (GET answers its `end_reason`), at most `ended_kept`;
- `meta`: the queues, counters, open reader leases and the pools' shard groups by name.

Tenants' usage is not stored: it is derived from the live sessions. Spare session actors
are not stored either: a restarted registry starts new ones and the old ones exit once it
answers that it does not own them (deployments/spares.py).

Writes are coalesced: the registry marks the state changed (`changed()`, cheap, on its
event loop) and one writer task serialises what changed and writes it from a worker
thread (the KV calls are blocking GCS round trips). A crash loses at most the changes
of the write in flight; `persisted()` waits until every change made so far is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import TypeAdapter

from deployments.protocol import SessionRecord

logger = logging.getLogger(__name__)

STATE_VERSION = 1
"""Format of the stored state; a registry refuses a version it does not know (never guesses)."""
META_KEY = "meta"
SESSION_PREFIX = "session/"
ENDED_PREFIX = "ended/"


class StateVersionError(RuntimeError):
    """The stored registry state has a format this code does not read."""


@dataclass
class StoredSession:
    """One live session: its record and the set-up commands it keeps while queued."""

    record: SessionRecord
    pending: list[dict[str, Any]] = field(default_factory=list)
    request_id: str | None = None
    """The create request's id (a retried create answers this session instead of making another)."""


@dataclass
class StoredGroup:
    """A warm shard group, by the names a new registry finds it by (its placement group and ranks)."""

    model: str
    group_id: str
    pg_name: str
    worker_names: list[str]
    geometry: dict[str, Any]
    node_id: str | None = None
    """Where its ranks run (the admin API shows it; a restarted registry keeps spreading by it)."""


@dataclass
class StoredMeta:
    """Everything else: queues (session ids, first = next), counters, reader leases, the built groups."""

    version: int = STATE_VERSION
    queues: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    readers: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Reader lease -> (session id, tenant, kind)."""
    groups: list[StoredGroup] = field(default_factory=list)
    groups_rebuilt: int = 0
    watch_app: bool = False
    """The registry watches its Serve app (resumed after a restart: no front door asks again)."""


@dataclass
class RegistryState:
    """What `RegistryStore.load` reads back: None / empty when nothing was stored (a first start)."""

    meta: StoredMeta | None
    sessions: dict[str, StoredSession]
    ended: list[SessionRecord]
    """Oldest end first, at most `ended_kept`."""


_SESSION = TypeAdapter(StoredSession)
_RECORD = TypeAdapter(SessionRecord)
_META = TypeAdapter(StoredMeta)


class KeyValue(Protocol):
    """The four calls the store makes (blocking)."""

    def put(self, key: str, value: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...


class GcsKeyValue:
    """Ray's GCS key-value store under one namespace (it survives every worker; with GCS fault
    tolerance also the head node)."""

    def __init__(self, namespace: str):
        self.namespace = namespace

    def put(self, key: str, value: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(key, value, overwrite=True, namespace=self.namespace)

    def get(self, key: str) -> bytes | None:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(key, namespace=self.namespace)

    def delete(self, key: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(key, namespace=self.namespace)

    def keys(self, prefix: str) -> list[str]:
        from ray.experimental import internal_kv

        return [k.decode() if isinstance(k, bytes) else k for k in internal_kv._internal_kv_list(prefix, namespace=self.namespace)]


class MemoryKeyValue:
    """A dict with the KeyValue calls (unit tests: the round trip without a cluster)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def put(self, key: str, value: bytes) -> None:
        self.writes += 1
        self.data[key] = value

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def delete(self, key: str) -> None:
        self.writes += 1
        self.data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]


Snapshot = Callable[[], tuple[StoredMeta, dict[str, StoredSession], dict[str, SessionRecord]]]
"""The registry's state as it is now: (meta, live sessions by id, ended records by id)."""


class RegistryStore:
    """Writes a registry's state as it changes (coalesced, off the event loop) and reads it back."""

    def __init__(self, kv: KeyValue, ended_kept: int):
        self.kv = kv
        self.ended_kept = ended_kept
        self._written: dict[str, bytes] = {}
        """Key -> the bytes last written (a flush writes only keys whose bytes differ)."""
        self._ended_tokens: dict[str, str] = {}
        """Ended id -> viewer token written (an ended record changes only when its token is rotated)."""
        self._snapshot: Snapshot | None = None
        self._marked = 0
        self._written_gen = 0
        self._wake: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self.closed = False
        self.flushes = 0
        self.last_error: str | None = None

    # ---- reading back ---------------------------------------------------------------
    def load(self) -> RegistryState:
        """The stored state (blocking: call it in the constructor, before any call is served)."""
        raw = self.kv.get(META_KEY)
        meta = _META.validate_json(raw) if raw else None
        if meta is not None and meta.version != STATE_VERSION:
            raise StateVersionError(
                f"registry state version {meta.version} is not {STATE_VERSION}: delete the KV namespace "
                f"{getattr(self.kv, 'namespace', '?')!r} to start empty (its sessions are then forgotten)"
            )
        sessions: dict[str, StoredSession] = {}
        for key in self.kv.keys(SESSION_PREFIX):
            raw_session = self.kv.get(key)
            if raw_session:
                stored = _SESSION.validate_json(raw_session)
                sessions[stored.record.session_id] = stored
                self._written[key] = raw_session
        ended: list[SessionRecord] = []
        for key in self.kv.keys(ENDED_PREFIX):
            raw_rec = self.kv.get(key)
            if raw_rec:
                ended.append(_RECORD.validate_json(raw_rec))
        ended.sort(key=lambda r: r.ended_at or 0.0)
        for rec in ended[: max(0, len(ended) - self.ended_kept)]:
            self.kv.delete(ENDED_PREFIX + rec.session_id)
        ended = ended[max(0, len(ended) - self.ended_kept):]
        for rec in ended:
            self._ended_tokens[rec.session_id] = rec.viewer_token
        if raw:
            self._written[META_KEY] = raw
        return RegistryState(meta=meta, sessions=sessions, ended=ended)

    # ---- writing --------------------------------------------------------------------
    def attach(self, snapshot: Snapshot) -> None:
        """Start the writer (on the running loop): from now on `changed()` writes `snapshot()`'s state."""
        self._snapshot = snapshot
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._writer = asyncio.ensure_future(self._write_loop())

    def changed(self) -> None:
        """The state changed: write it soon (cheap; many calls before the next write make one write)."""
        if self.closed or self._wake is None:
            return
        self._marked += 1
        self._wake.set()

    async def persisted(self) -> int:
        """Wait until every change marked so far is written; returns the number of writes (flushes) so far."""
        target = self._marked
        while self._written_gen < target and not self.closed and self._done is not None:
            self._done.clear()
            await self._done.wait()
        return self.flushes

    async def _write_loop(self) -> None:
        if self._wake is None or self._done is None:
            raise RuntimeError("the state writer's loop ran before start() created its events")
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            gen = self._marked
            try:
                puts, deletes, tokens = self._diff()
                if puts or deletes:
                    await asyncio.to_thread(self._write, puts, deletes)
                    self._commit(puts, deletes, tokens)
                    self.flushes += 1
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - a GCS hiccup: keep the state in memory, try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("writing the registry state failed (%s): retrying", self.last_error)
                await asyncio.sleep(0.5)  # back-off before the retry, not a synchronisation
                self._wake.set()
                continue
            self._written_gen = gen
            self._done.set()

    def _diff(self) -> tuple[dict[str, bytes], list[str], dict[str, str]]:
        """What to write now: (puts, deletes, viewer tokens of the ended records put). Runs on the loop,
        so the state does not move while it is serialised."""
        if self._snapshot is None:
            raise RuntimeError("the state writer was asked for a diff before start() gave it a snapshot source")
        meta, sessions, ended = self._snapshot()
        now: dict[str, bytes] = {META_KEY: _META.dump_json(meta)}
        for sid, stored in sessions.items():
            now[SESSION_PREFIX + sid] = _SESSION.dump_json(stored)
        puts = {k: v for k, v in now.items() if self._written.get(k) != v}
        deletes = [k for k in self._written if k not in now]
        tokens = {sid: rec.viewer_token for sid, rec in ended.items() if self._ended_tokens.get(sid) != rec.viewer_token}
        for sid in tokens:
            puts[ENDED_PREFIX + sid] = _RECORD.dump_json(ended[sid])
        deletes += [ENDED_PREFIX + sid for sid in self._ended_tokens if sid not in ended]
        return puts, deletes, tokens

    def _write(self, puts: dict[str, bytes], deletes: list[str]) -> None:
        """The GCS round trips (in a worker thread). Puts first: an ended session is under ended/ before
        its session/ key goes, so a crash in between keeps it either way."""
        for key, value in puts.items():
            self.kv.put(key, value)
        for key in deletes:
            self.kv.delete(key)

    def _commit(self, puts: dict[str, bytes], deletes: list[str], tokens: dict[str, str]) -> None:
        """Remember what is now stored (back on the loop, after `_write` succeeded)."""
        for key, value in puts.items():
            if not key.startswith(ENDED_PREFIX):
                self._written[key] = value
        self._ended_tokens.update(tokens)
        for key in deletes:
            if key.startswith(ENDED_PREFIX):
                self._ended_tokens.pop(key[len(ENDED_PREFIX):], None)
            else:
                self._written.pop(key, None)

    async def clear(self) -> None:
        """Forget the stored state (the app was shut down on purpose: the next registry starts empty)."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
        if self._done is not None:
            self._done.set()
        await asyncio.to_thread(self._clear)

    def _clear(self) -> None:
        for key in self.kv.keys(""):
            self.kv.delete(key)
        self._written.clear()
        self._ended_tokens.clear()
