"""Session routes: create (admission), read, delete, and run a command."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import ray
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from deployments.http.base import FrontDoorBase
from deployments.http.schemas import (
    Ack,
    CommandRequest,
    CreateSessionRequest,
    ErrorBody,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionUrls,
    ViewerTokenIssued,
    error_responses,
    session_links,
)
from deployments.protocol import Admission, BadCommand, SessionRecord, SessionStartFailed, SessionStats, SessionStatus, UnknownModel

INFO_TIMEOUT_S = 10.0
"""Longest wait for a session actor's `info` in GET /v1/sessions/{id}."""

router = APIRouter()

_AFTER_COMMAND = session_links("$request.path.session_id", exclude=("RunCommand",))
"""It steered this session: watch it, read it, end it (OpenAPI links, for clients and for the stateful fuzzer)."""


def session_urls(sid: str, token: str) -> SessionUrls:
    """Root-relative URLs of a session; the read-only ones carry the viewer token."""
    base = f"/v1/sessions/{sid}"
    q = f"token={token}"
    return SessionUrls(
        self=base,
        commands=f"{base}/commands",
        events=f"{base}/events?{q}",
        ws=f"{base}/ws",
        stream_mp4=f"{base}/stream?format=mp4&{q}",
        stream_mjpeg=f"{base}/stream?format=mjpeg&{q}",
        stream_msgpack=f"{base}/stream?format=msgpack&{q}",
        hls=f"{base}/hls/index.m3u8?{q}",
        recording=f"{base}/recording.mp4?{q}",
        player=f"/?session={sid}&{q}",
    )


def session_info(rec: SessionRecord, state: dict | None = None, owner: bool = True, state_age_s: float | None = None) -> SessionInfo:
    """GET /v1/sessions/{id} body; the viewer token only for the owner."""
    return SessionInfo(
        session_id=rec.session_id,
        status=rec.status.value,
        position=rec.position,
        model=rec.model,
        state=state or {},
        state_age_s=state_age_s,
        end_reason=rec.end_reason,
        viewer_token=rec.viewer_token if owner else None,
        urls=session_urls(rec.session_id, rec.viewer_token),
    )


class SessionRoutes(FrontDoorBase):
    """POST/GET/DELETE /v1/sessions[/{id}] and POST /v1/sessions/{id}/commands."""

    @router.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionCreated,
        operation_id="create_session",
        responses={
            201: {"description": "Active", "links": session_links()},
            202: {"model": SessionCreated, "description": "Queued", "links": session_links()},
            **error_responses(401, 413, 422, 429, 503),
        },
    )
    async def create_session(self, request: Request, body: CreateSessionRequest) -> Response:
        """Admit a session: 201 active, 202 queued (poll GET until active), 429 full or over quota."""
        tenant = self._require_tenant(request)
        model = body.model or self.config.default_model
        if model not in self.config.models:
            raise UnknownModel(f"model: {model!r} is not offered; choose one of {sorted(self.config.models)}")
        try:
            # A request id: a retry of this call (across a registry restart) answers the same session.
            admission: Admission = await self.registry.create_session.remote(tenant, model, body.seed, uuid.uuid4().hex)
        except SessionStartFailed:
            self.metrics.errors.labels("session").inc()
            raise
        rec = admission.session
        created = SessionCreated(
            session_id=rec.session_id,
            status=admission.status.value,
            position=admission.position,
            model=model,
            viewer_token=rec.viewer_token,
            urls=session_urls(rec.session_id, rec.viewer_token),
        )
        if admission.status is SessionStatus.QUEUED:
            return JSONResponse(created.model_dump(), status_code=202, headers={"Retry-After": str(self.config.retry_after_s)})
        self._actors.prefetch(rec.actor_name)  # its first command comes next (time to first frame)
        return JSONResponse(created.model_dump(), status_code=201)

    @router.get(
        "/v1/sessions/{session_id}",
        response_model=SessionInfo,
        operation_id="get_session",
        responses={200: {"links": session_links(exclude=("GetSession",))}, **error_responses(401, 404, 422)},
    )
    async def get_session(self, request: Request, session_id: str) -> SessionInfo:
        """Status, queue position, last state and end reason."""
        rec, owner = await self._readable(request, session_id)
        if rec.status is not SessionStatus.ACTIVE:
            self.last_states.forget(session_id)
            return session_info(rec, {}, owner)
        actor = await self._actor(rec.actor_name)
        try:
            if actor is None:
                raise LookupError(rec.actor_name)
            info: SessionStats = await asyncio.wait_for(actor.info.remote(), timeout=INFO_TIMEOUT_S)
        except (ray.exceptions.RayActorError, TimeoutError, LookupError):
            # Ended between the two calls, or the actor is slow to answer (a loaded host): the registry
            # says which; a session still live answers with the last state read here, and its age.
            rec = await self._record(session_id) or rec
            kept = self.last_states.get(session_id) if rec.status is SessionStatus.ACTIVE else None
            if kept is None:
                self.last_states.forget(session_id)
                return session_info(rec, {}, owner)
            return session_info(rec, kept[0], owner, state_age_s=round(kept[1], 3))
        if info.ended:
            # The actor knows first; the registry hears of the end a moment later.
            rec = replace(rec, status=SessionStatus.ENDED, end_reason=info.end_reason)
            self._actors.forget(rec.actor_name)
            self.last_states.forget(session_id)
        elif info.state:
            self.last_states.put(session_id, info.state)
        return session_info(rec, info.state or {}, owner)

    @router.delete(
        "/v1/sessions/{session_id}", response_model=SessionDeleted, operation_id="delete_session", responses=error_responses(401, 404, 422)
    )
    async def delete_session(self, request: Request, session_id: str) -> SessionDeleted:
        """End the session (session_ended {reason: 'deleted'}) and free its shard group."""
        rec = await self._owned(request, session_id)
        out: SessionRecord | None = await self.registry.end_session.remote(session_id, "deleted")
        # Nothing of an ended session is kept: its handle, its last state (docs/soak.md).
        self._actors.forget(rec.actor_name)
        self.last_states.forget(session_id)
        return SessionDeleted(session_id=session_id, end_reason=(out or rec).end_reason)

    @router.post(
        "/v1/sessions/{session_id}/viewer-token",
        response_model=ViewerTokenIssued,
        operation_id="rotate_viewer_token",
        responses=error_responses(401, 404, 422),
    )
    async def rotate_viewer_token(self, request: Request, session_id: str) -> ViewerTokenIssued:
        """Issue a new viewer token (owner only); the old one gets 401 from now on."""
        rec = await self._owned(request, session_id)
        rec = await self.registry.rotate_viewer_token.remote(session_id, rec.tenant)
        expires = rec.token_expires_at(self.config.viewer_token_grace_s, self.config.viewer_token_ttl_s)
        return ViewerTokenIssued(
            session_id=session_id, viewer_token=rec.viewer_token, expires_at=expires, urls=session_urls(session_id, rec.viewer_token)
        )

    @router.post(
        "/v1/sessions/{session_id}/commands",
        response_model=Ack,
        operation_id="run_command",
        responses={
            200: {"links": _AFTER_COMMAND},
            202: {"model": Ack, "description": "Kept for a queued session; applied in order at admission", "links": _AFTER_COMMAND},
            **error_responses(401, 404, 409, 413, 422, 429, 503, 504),
            409: {"model": ErrorBody, "description": "Not a set-up command while queued, or the session has ended"},
            422: {"model": ErrorBody, "description": "Invalid request, or the command was refused (`ack` holds its ack)"},
            429: {"model": ErrorBody, "description": "Over the command rate, or over max_queued_commands while queued"},
        },
    )
    async def command(self, request: Request, session_id: str, body: CommandRequest) -> Response:
        """Run a command; 200 with the ack when ok, 422 with the ack when refused; 202 with
        `queued: true` when a queued session keeps a set-up command for its admission."""
        rec = await self._owned(request, session_id)
        ack = await self._run_command(rec, body.model_dump())
        if not ack.get("ok"):
            raise BadCommand(ack.get("error") or "command refused", ack=ack)
        return JSONResponse(Ack(**ack).model_dump(), status_code=202 if ack.get("queued") else 200)
