"""Open readers (video streams, SSE/WebSocket connections) per session and tenant, and viewer tokens.

Held by the session registry so every front-door replica sees the same connection caps.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Literal

import ray

from deployments.config import ServingConfig
from deployments.protocol import ConnectionLimitExceeded, SessionNotFound, SessionRecord


ReaderKind = Literal["stream", "events"]
"""What a reader holds: a video stream (any format), or a message stream (SSE or WebSocket)."""


class ReaderTable:
    """Open readers per session and per (tenant, kind): the connection caps, one truth for every replica.

    A lease a front-door replica could not release (it died) is dropped with its session.
    """

    def __init__(self) -> None:
        self.leases: dict[str, tuple[str, str, str]] = {}  # lease -> (session, tenant, kind)
        self.per_session: Counter[str] = Counter()
        self.per_tenant: Counter[tuple[str, str]] = Counter()
        self.refused: Counter[str] = Counter()
        """Refusals per limit name (max_viewers_per_session, max_streams, max_event_streams)."""

    def open(self, session_id: str, tenant: str, kind: str, *, max_per_session: int, max_per_tenant: int, retry_after_s: float) -> str:
        if kind not in ("stream", "events"):
            raise ValueError(f"kind: must be 'stream' or 'events', got {kind!r}")
        if self.per_session[session_id] >= max_per_session:
            self.refused["max_viewers_per_session"] += 1
            raise ConnectionLimitExceeded(
                f"connections: session already has {max_per_session} readers (video streams + SSE/WebSocket), "
                f"the max_viewers_per_session limit",
                limit="max_viewers_per_session",
                retry_after_s=retry_after_s,
            )
        if self.per_tenant[(tenant, kind)] >= max_per_tenant:
            name = "max_streams" if kind == "stream" else "max_event_streams"
            what = "video streams" if kind == "stream" else "SSE/WebSocket connections"
            self.refused[name] += 1
            raise ConnectionLimitExceeded(
                f"connections: the tenant's sessions already have {max_per_tenant} {what} open, the {name} limit",
                limit=name,
                retry_after_s=retry_after_s,
            )
        lease = uuid.uuid4().hex
        self.leases[lease] = (session_id, tenant, kind)
        self.per_session[session_id] += 1
        self.per_tenant[(tenant, kind)] += 1
        return lease

    def close(self, lease: str) -> None:
        held = self.leases.pop(lease, None)
        if held is None:
            return
        session_id, tenant, kind = held
        self.per_session[session_id] -= 1
        if self.per_session[session_id] <= 0:
            del self.per_session[session_id]
        self.per_tenant[(tenant, kind)] -= 1
        if self.per_tenant[(tenant, kind)] <= 0:
            del self.per_tenant[(tenant, kind)]

    def restore(self, leases: dict[str, tuple[str, str, str]]) -> None:
        """Count again the leases a restarted registry read back (lease -> (session, tenant, kind))."""
        for lease, (session_id, tenant, kind) in leases.items():
            self.leases[lease] = (session_id, tenant, kind)
            self.per_session[session_id] += 1
            self.per_tenant[(tenant, kind)] += 1

    def drop_session(self, session_id: str) -> None:
        """The session ended: forget its readers (a replica that died holding one cannot leak it past this)."""
        for lease in [k for k, v in self.leases.items() if v[0] == session_id]:
            self.close(lease)

    def counts(self) -> dict[str, int]:
        """Entries per table (0 everywhere once no reader is open: the soak checks it)."""
        return {"reader_leases": len(self.leases), "reader_sessions": len(self.per_session), "reader_tenants": len(self.per_tenant)}

    def snapshot(self) -> dict[str, int]:
        return {"open": len(self.leases), **{f"refused_{k}": v for k, v in self.refused.items()}}


def new_viewer_token() -> str:
    """A fresh viewer token (144 random bits, URL-safe).

    Prefixed so that it never starts with "-": `helios session get --token <token>` would read such a token
    as an option (argparse), which is how a CI run failed one time in 64.
    """
    return "vt_" + secrets.token_urlsafe(18)


class RegistryReaders:
    """The SessionRegistry's reader methods (viewers, SSE and WebSocket connections) and viewer-token rotation.

    A mixin of SessionRegistry: the caps live in its `readers` table, the sessions in its records.
    """

    config: ServingConfig
    readers: ReaderTable
    sessions: dict[str, SessionRecord]
    ended: OrderedDict[str, SessionRecord]
    get_session: Callable[[str], Awaitable[SessionRecord | None]]
    _persist: Callable[[], None]

    async def open_reader(self, session_id: str, kind: ReaderKind) -> str:
        """Count one more reader of the session (a lease id), or raise ConnectionLimitExceeded naming the cap.

        A reader of an ended session (its actor lingering for the last chunks) gets a lease id that is
        not counted: `close_reader` of it is a no-op.

        The caps: `max_viewers_per_session` (every kind), and per tenant of the session's
        owner `max_streams` (video) or `max_event_streams` (SSE + WebSocket).
        """
        rec = self.sessions.get(session_id)
        if rec is None:
            if session_id in self.ended:
                # Its readers were dropped when it ended (it has no caps left to keep): a lease counted now
                # would stay until its reader's release, which a reader that raced the end may never send.
                return f"ended-{uuid.uuid4().hex}"
            raise SessionNotFound(f"session_id: no session {session_id!r}")
        quota = self.config.quota_of(rec.tenant)
        lease = self.readers.open(
            session_id,
            rec.tenant,
            kind,
            max_per_session=self.config.max_viewers_per_session,
            max_per_tenant=quota.max_streams if kind == "stream" else quota.max_event_streams,
            retry_after_s=self.config.retry_after_s,
        )
        self._persist()
        return lease

    @ray.method(max_task_retries=-1)  # idempotent: retried across a registry restart
    async def close_reader(self, lease: str) -> None:
        """The reader `lease` is gone (idempotent: a lease of an ended session is already dropped)."""
        self.readers.close(lease)
        self._persist()

    async def rotate_viewer_token(self, session_id: str, tenant: str) -> SessionRecord:
        """A new viewer token for the owner's session; the old one stops working at once.

        Raises SessionNotFound for an unknown session or another tenant's (as GET does).
        """
        rec = self.sessions.get(session_id) or self.ended.get(session_id)
        if rec is None or rec.tenant != tenant:
            raise SessionNotFound(f"session_id: no session {session_id!r}")
        rec.viewer_token = new_viewer_token()
        rec.token_issued_at = time.time()
        self._persist()
        return await self.get_session(session_id)
