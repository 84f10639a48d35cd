"""Request and response bodies of the HTTP API (docs/CONTRACTS.md section 4); they make the OpenAPI at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateSessionRequest(BaseModel):
    """POST /v1/sessions."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, max_length=64, description="Model name from GET /v1/models (the server default when absent).")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Noise seed of chunk 0.")


class SessionUrls(BaseModel):
    """Root-relative URLs of a session; read-only ones carry the viewer token so they can be shared."""

    self: str
    commands: str
    events: str
    ws: str
    stream_mp4: str
    stream_mjpeg: str
    stream_msgpack: str
    hls: str
    """LL-HLS media playlist (CMAF); its segment URIs carry the viewer token too."""
    recording: str
    player: str


class SessionCreated(BaseModel):
    """201 (active) or 202 (queued) answer to POST /v1/sessions."""

    model_config = ConfigDict(protected_namespaces=())

    session_id: str
    status: Literal["active", "queued"]
    position: int | None = Field(None, description="Place in the queue (1 = next) while queued.")
    model: str
    viewer_token: str = Field(..., description="Lets others watch (events, stream, recording) without the API key.")
    urls: SessionUrls


class SessionInfo(BaseModel):
    """GET /v1/sessions/{id}."""

    model_config = ConfigDict(protected_namespaces=())

    session_id: str
    status: Literal["queued", "active", "ended"]
    position: int | None = None
    model: str
    state: dict[str, Any] = Field(default_factory=dict, description="The last `state` message's data.")
    state_age_s: float | None = Field(
        None, description="null: `state` is the session's own, read now. A number: its actor did not answer in time "
        "and `state` is the last one this server read, that many seconds ago.",
    )
    end_reason: str | None = None
    viewer_token: str | None = Field(None, description="Only shown to the owning tenant.")
    urls: SessionUrls | None = None


class ViewerTokenIssued(BaseModel):
    """POST /v1/sessions/{id}/viewer-token: the new token; the old one now gets 401."""

    session_id: str
    viewer_token: str
    expires_at: float | None = Field(
        None, description="Unix time the token stops working; null while the session runs (then: end + viewer_token_grace_s)."
    )
    urls: SessionUrls


class SessionDeleted(BaseModel):
    """DELETE /v1/sessions/{id}."""

    session_id: str
    status: Literal["ended"] = "ended"
    end_reason: str | None = None


class CommandRequest(BaseModel):
    """POST /v1/sessions/{id}/commands (and each WebSocket text frame)."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(..., min_length=1, max_length=64, description="Command name, e.g. set_prompt, start, pause.")
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments by name.")
    id: str | None = Field(None, max_length=128, description="Client id echoed in the ack.")


class Ack(BaseModel):
    """The ack of a command."""

    id: str | None = None
    ok: bool
    error: str | None = None
    result: Any = None
    queued: bool = Field(False, description="True: kept by a queued session, applied at admission (its real ack comes on the message stream).")
    position: int | None = Field(None, description="The session's queue position when `queued`.")


class ModelInfo(BaseModel):
    """One entry of GET /v1/models."""

    name: str
    kind: str
    tp_size: int
    pool_size: int
    device: str
    description: str = ""
    free: int = 0
    queued: int = 0


class Health(BaseModel):
    """GET /healthz (liveness: the process and its registry answer)."""

    status: Literal["ok", "degraded"]
    ready: bool = Field(False, description="Readiness, as GET /readyz: every model has at least one warm shard group.")
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Readiness(BaseModel):
    """GET /readyz: 200 when ready, 503 otherwise (a load balancer's readiness probe)."""

    ready: bool
    models: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per model: free, leased, building, queued, ready, ...")
    not_ready: list[str] = Field(default_factory=list, description="Models without a warm group yet (or all, while shutting down).")
    detail: str | None = Field(None, description="Why not ready, naming the models.")


class AdminSession(BaseModel):
    """One live session in GET /v1/admin/sessions (any tenant's; no viewer token)."""

    model_config = ConfigDict(protected_namespaces=())

    session_id: str
    tenant: str
    model: str
    status: Literal["queued", "active"]
    position: int | None = Field(None, description="Place in its model's queue (1 = next) while queued.")
    created_at: float = Field(..., description="Unix time the session was created.")
    group_id: str | None = Field(None, description="Its shard group (null while queued, or for a model without groups).")
    node_id: str | None = Field(None, description="Ray node of the session actor (null until it started).")
    group_node_id: str | None = Field(None, description="Ray node of its shard group (a group never spans nodes).")


class AdminSessions(BaseModel):
    """GET /v1/admin/sessions."""

    sessions: list[AdminSession]


class AdminGroup(BaseModel):
    """One shard group (or test-pattern slot) of a pool in GET /v1/admin/pool."""

    group_id: str | None = Field(..., description="Null for a slot of a model without shard groups (test-pattern).")
    state: Literal["building", "free", "leased", "broken"]
    node_id: str | None = Field(None, description="Ray node the group's workers run on (null while building).")
    session_id: str | None = Field(None, description="The session leasing it (state 'leased').")


class AdminPool(BaseModel):
    """One model's pool in GET /v1/admin/pool."""

    min_groups: int
    max_groups: int
    target: int = Field(..., description="Groups the pool aims to hold now (leased + the free headroom), within min..max.")
    queued: int = Field(..., description="Sessions waiting for a group of this model.")
    groups: list[AdminGroup]


class AdminPools(BaseModel):
    """GET /v1/admin/pool."""

    models: dict[str, AdminPool]


class ErrorBody(BaseModel):
    """Every error answer of the API (deployments/http/errors.py): what is wrong, and with which field."""

    detail: str = Field(..., description="`<field>: <problem>`; for a request that failed validation, every bad field.")
    field: str | None = Field(None, description="The field, header, parameter or limit the problem is about.")
    limit: str | None = Field(None, description="Config key of the limit that was hit (429s).")
    retry_after_s: float | None = Field(None, description="When a retry may succeed (as the Retry-After header).")
    ack: Ack | None = Field(None, description="The refused command's ack (POST .../commands).")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed path or delivery directive",
    401: "Missing or wrong API key, or a wrong, rotated or expired viewer token",
    403: "A valid key that does not open this route",
    404: "No such session (or not this tenant's), recording or segment",
    409: "Not possible in the session's state (queued, ended)",
    410: "The session has ended; its recording remains",
    413: "Request body over max_body_bytes",
    416: "The Range starts past what is recorded so far (Content-Range: bytes */<length>)",
    422: "A field of the request is invalid, or the command was refused",
    429: "Over a quota, a limit or the capacity; Retry-After says when to retry",
    503: "Temporarily unavailable (starting, shutting down, relay or store down)",
    504: "The session did not answer in time",
}
"""What each error status means, as the OpenAPI lists it."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the one error body (FastAPI's default 422 shape is not ours)."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def session_link(operation_id: str, description: str, source: str = "$response.body#/session_id") -> dict[str, Any]:
    """An OpenAPI link to a session route whose `session_id` comes from `source` (a runtime expression)."""
    return {"operationId": operation_id, "parameters": {"session_id": source}, "description": description}


SESSION_LINKS: dict[str, tuple[str, str]] = {
    "GetSession": ("get_session", "Its status, position and state"),
    "RunCommand": ("run_command", "Steer it"),
    "Events": ("session_events", "Its protocol messages (SSE)"),
    "Stream": ("session_stream", "Its live video"),
    "HlsPlaylist": ("hls_playlist", "Its LL-HLS playlist"),
    "HlsMedia": ("hls_media", "Its LL-HLS init segment, segments and parts"),
    "Recording": ("session_recording", "Its recording so far"),
    "RotateViewerToken": ("rotate_viewer_token", "A new viewer token"),
    "DeleteSession": ("delete_session", "End it"),
}
"""Every route of a session, by link name: (operationId, what it gives)."""


def session_links(
    source: str = "$response.body#/session_id", exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Links from a response that names a session (`source`) to the routes of that session (`only` them, less `exclude`)."""
    names = [n for n in SESSION_LINKS if (only is None or n in only) and n not in exclude]
    return {name: session_link(*SESSION_LINKS[name], source) for name in names}


AFTER_READING = session_links("$request.path.session_id", only=("GetSession", "RunCommand", "DeleteSession"))
"""Links from a session's streams (they name it in their path): steer it, look at it, end it."""
