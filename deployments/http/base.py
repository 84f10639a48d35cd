"""What every route group of the front door shares: the replica's handles, auth and session lookup.

Route modules subclass `FrontDoorBase` and `FrontDoor` (deployments/http/ingress.py)
combines them; the helpers raise the typed errors of `deployments.protocol`, and
`deployments/http/errors.py` alone turns those into statuses.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from fastapi import Request, WebSocket

from deployments.auth import Authenticator, bearer_key, token_matches
from deployments.config import ServingConfig
from deployments.http.last_states import LastStates
from deployments.lookup import ActorCache, ResolvingHandle, get_actor
from deployments.metrics import FrontDoorMetrics
from deployments.naming import NAMESPACE, is_valid_session_id
from deployments.setup_commands import check_setup_command, queued_ack
from helios.media.storage import RecordingStorage
from deployments.protocol import (
    ApiKeyInQuery,
    CommandQueued,
    CommandTimeout,
    SessionEnded,
    SessionNotFound,
    SessionRecord,
    SessionStatus,
    Unauthorized,
    ViewerTokenExpired,
    ViewerTokenRejected,
)



class ReaderLease:
    """One counted reader (video stream, SSE or WebSocket) of a session; released exactly once.

    `release()` is called when the connection ends; should a handler be cancelled before
    it could (a client gone before the body started), the lease is released when it is
    garbage collected. Both are fire-and-forget calls: no await on the way out.
    """

    def __init__(self, registry: ResolvingHandle, lease: str):
        self._finalizer = weakref.finalize(self, registry.cast, "close_reader", lease)

    def release(self) -> None:
        self._finalizer()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class FrontDoorBase:
    """State of one front-door replica (set by `FrontDoor.__init__`) and the helpers routes share."""

    config: ServingConfig
    auth: Authenticator
    registry: ResolvingHandle
    """The app's registry; a call that finds it gone resolves it again and retries once (deployments/lookup.py)."""
    relay: Any
    metrics: FrontDoorMetrics
    web_dir: Path
    _actors: ActorCache
    last_states: LastStates
    """The last state each live session's actor gave GET (deployments/http/last_states.py)."""
    metrics_cache: Any
    """`TimedCache` of the /metrics text (deployments/stats_cache.py)."""
    recordings: RecordingStorage
    """The recordings at `recording_uri`, read directly (the relay that wrote one may be on another node)."""

    # ---- who is asking -----------------------------------------------------------------
    def _tenant(self, request: Request | WebSocket) -> str | None:
        """The tenant of the `Authorization: Bearer` key (keys are never read from the query string)."""
        self._refuse_key_in_query(request)
        return self.auth.tenant_of(bearer_key(request.headers.get("authorization")))

    def _refuse_key_in_query(self, request: Request | WebSocket) -> None:
        """401 for an API key in the URL: URLs end up in logs, proxies and browser history."""
        query = request.query_params
        if "api_key" in query:
            raise ApiKeyInQuery(
                "api_key: API keys are not accepted in the query string; send 'Authorization: Bearer <api key>'", field="api_key"
            )
        token = query.get("token")
        if token and self.auth.tenant_of(token) is not None:
            raise ApiKeyInQuery(
                "token: that is an API key, and API keys are not accepted in the query string; send "
                "'Authorization: Bearer <api key>' (?token= takes a session's viewer token only)"
            )

    def _require_tenant(self, request: Request) -> str:
        tenant = self._tenant(request)
        if tenant is None:
            has = request.headers.get("authorization")
            raise Unauthorized(
                "authorization: wrong API key" if has else "authorization: missing 'Authorization: Bearer <api key>' header"
            )
        return tenant

    # ---- which session -----------------------------------------------------------------
    async def _record(self, sid: str) -> SessionRecord | None:
        if not is_valid_session_id(sid):
            return None
        return await self.registry.get_session.remote(sid)

    async def _owned(self, request: Request, sid: str) -> SessionRecord:
        """The record of a session owned by the caller's tenant (401 bad key, 404 unknown or foreign)."""
        tenant = self._require_tenant(request)
        rec = await self._record(sid)
        if rec is None or rec.tenant != tenant:
            raise SessionNotFound(f"session_id: no session {sid!r}")
        return rec

    async def _readable(self, request: Request | WebSocket, sid: str) -> tuple[SessionRecord, bool]:
        """(record, is_owner) for read-only routes: API key of the owner or the session's live viewer token."""
        tenant = self._tenant(request)
        token = request.query_params.get("token")
        if tenant is None and not token and not request.headers.get("authorization"):
            raise Unauthorized("authorization: send 'Authorization: Bearer <api key>' or ?token=<viewer token>")
        rec = await self._record(sid)
        if rec is None:
            raise SessionNotFound(f"session_id: no session {sid!r}")
        if tenant is not None:
            if rec.tenant != tenant:
                raise SessionNotFound(f"session_id: no session {sid!r}")
            return rec, True
        if not token_matches(token, rec.viewer_token):
            raise ViewerTokenRejected("token: wrong API key or viewer token (a rotated token stops working)")
        expires = rec.token_expires_at(self.config.viewer_token_grace_s, self.config.viewer_token_ttl_s)
        if expires is not None and time.time() >= expires:
            raise ViewerTokenExpired(
                f"token: the viewer token expired at {_iso(expires)} (viewer_token_grace_s after the session ended, "
                "or viewer_token_ttl_s after it was issued); the owner can issue a new one"
            )
        return rec, False

    async def _actor(self, actor_name: str) -> Any | None:
        """The session actor's handle (cached, looked up off the event loop), or None once it is gone."""
        return await self._actors.get(actor_name)

    async def _lingering_actor(self, rec: SessionRecord) -> Any | None:
        """The actor of an ended session while it lingers (viewers drain it), else None. Never cached: the
        cache holds live sessions' handles only, and this one's is dropped (docs/soak.md: nothing of an
        ended session stays in a long-lived process)."""
        self._actors.forget(rec.actor_name)
        return await get_actor(rec.actor_name, NAMESPACE)

    async def _wait_active(self, rec: SessionRecord) -> SessionRecord:
        """Hold a reader of a queued session until it is admitted (or ends): a long poll on the registry."""
        while rec.status is SessionStatus.QUEUED:
            fresh = await self.registry.wait_admitted.remote(rec.session_id, self.config.queued_wait_s)
            if fresh is None:
                rec.end("ended")
            else:
                rec = fresh
        return rec

    async def _open_reader(self, rec: SessionRecord, kind: str) -> ReaderLease:
        """Count a reader against the session's and tenant's caps (ConnectionLimitExceeded: 429)."""
        return ReaderLease(self.registry, await self.registry.open_reader.remote(rec.session_id, kind))

    # ---- commands (HTTP and WebSocket) ---------------------------------------------------
    async def _run_command(self, rec: SessionRecord, cmd: dict) -> dict:
        """The ack data of `cmd` run by the session (refusals are acks too; a gone session raises).

        A queued session keeps its set-up commands for admission: their ack says `queued: true`.
        """
        if rec.status is SessionStatus.QUEUED:
            await asyncio.to_thread(check_setup_command, self.config.models[rec.model], cmd, rec.position)
            queued: CommandQueued | None = await self.registry.queue_command.remote(rec.session_id, cmd)
            if queued is not None:
                return queued_ack(cmd, queued)
            # Admitted meanwhile and its actor started: run it as on any active session.
        actor = await self._actor(rec.actor_name) if rec.status is not SessionStatus.ENDED else None
        if actor is None:
            raise SessionEnded(f"session_id: session has ended ({rec.end_reason})", end_reason=rec.end_reason)
        timeout = self.config.command_timeout_s
        try:
            return await asyncio.wait_for(actor.command.remote(cmd, timeout), timeout + 5)
        except TimeoutError:
            raise CommandTimeout(f"command: no ack within {timeout:.0f}s") from None
        except ray.exceptions.RayActorError:
            self._actors.forget(rec.actor_name)
            raise SessionEnded("session_id: session has ended") from None
