"""Open readers (video streams, SSE/WebSocket connections) per session and tenant, and viewer tokens.

Held by the session registry so every front-door replica sees the same connection caps.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from typing import Literal

from deployments.protocol import ConnectionLimitExceeded


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

    def drop_session(self, session_id: str) -> None:
        """The session ended: forget its readers (a replica that died holding one cannot leak it past this)."""
        for lease in [k for k, v in self.leases.items() if v[0] == session_id]:
            self.close(lease)

    def snapshot(self) -> dict[str, int]:
        return {"open": len(self.leases), **{f"refused_{k}": v for k, v in self.refused.items()}}


def new_viewer_token() -> str:
    """A fresh viewer token (144 random bits, URL-safe)."""
    return secrets.token_urlsafe(18)
