"""Everything that crosses a process boundary between front door, registry, session actors and relay.

Results are dataclasses (pickled by Ray as they are), failures are the typed exceptions
below: an actor raises one, Ray carries it to the caller wrapped in a `RayTaskError`,
`cause_of` unwraps it, and `deployments/http/errors.py` turns it into an HTTP status by
its type. Protocol messages to clients (`state`, `event`, `ack`) stay the plain JSON
dicts of `helios.runtime.messages`. The registry's pool and stats answers are in
deployments/protocol_pool.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dc_field, replace
from enum import StrEnum
from typing import Any, TypedDict

from ray.exceptions import RayTaskError

from deployments.config import ModelSpec
from helios.runtime.ratelimit import RateLimitSpec

Message = dict[str, Any]
"""A protocol message (`{"type": "state"|"event"|"ack", "data": {...}}`)."""


class SessionStatus(StrEnum):
    """Where a session is in its life; `STARTING` is registry-internal and shown as `ACTIVE`."""

    QUEUED = "queued"
    STARTING = "starting"
    ACTIVE = "active"
    ENDED = "ended"


# ---- results ------------------------------------------------------------------------------
@dataclass
class SessionRecord:
    """What the registry knows about one session (the registry's copy is the truth)."""

    session_id: str
    tenant: str
    model: str
    viewer_token: str
    seed: int | None
    actor_name: str
    status: SessionStatus = SessionStatus.QUEUED
    created_at: float = dc_field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str | None = None
    group_id: str | None = None
    position: int | None = None
    """Place in the model's queue (1 = next) in copies handed out while queued."""
    token_issued_at: float = dc_field(default_factory=time.time)
    """When `viewer_token` was made (at creation, then at each rotation)."""
    node_id: str | None = None
    """Ray node of the session actor, once it started (GET /v1/admin/sessions)."""

    def token_expires_at(self, grace_s: float, ttl_s: float | None = None) -> float | None:
        """When the viewer token stops working: `grace_s` after the session ended, or `ttl_s`
        after it was issued, whichever is first; None while neither applies yet."""
        ends = [self.ended_at + grace_s] if self.ended_at is not None else []
        if ttl_s is not None:
            ends.append(self.token_issued_at + ttl_s)
        return min(ends) if ends else None

    def end(self, reason: str | None) -> None:
        """Mark ended; the first reason given wins (a later, vaguer one never overwrites it)."""
        self.status = SessionStatus.ENDED
        self.ended_at = time.time()
        self.end_reason = self.end_reason or reason or "ended"

    def public(self, position: int | None = None) -> "SessionRecord":
        """The copy callers see: `STARTING` reads as `ACTIVE`, with the queue position."""
        status = SessionStatus.ACTIVE if self.status is SessionStatus.STARTING else self.status
        return replace(self, status=status, position=position)


@dataclass(frozen=True)
class Admission:
    """A session the registry accepted: `ACTIVE` (201) or `QUEUED` with a position (202)."""

    status: SessionStatus
    session: SessionRecord
    position: int | None = None


@dataclass(frozen=True)
class ChunkItem:
    """One finished chunk: its frames as an object ref (kept in a list so Ray passes it as a ref)."""

    chunk: int
    refs: list[Any]
    meta: dict[str, Any]
    """chunk, model_chunk, first_frame, frames, height, width, fps, prompt, produced_at."""


@dataclass(frozen=True)
class ChunkBatch:
    """Answer of `SessionActor.wait_chunks`: the ring's chunks after the caller's last one."""

    chunks: list[ChunkItem]
    ended: bool
    end_reason: str | None
    oldest: int
    latest: int


@dataclass(frozen=True)
class LoggedMessage:
    """A protocol message with its sequence number in the session's log (the SSE event id)."""

    seq: int
    message: Message


@dataclass(frozen=True)
class MessageBatch:
    """Answer of `SessionActor.wait_messages`."""

    messages: list[LoggedMessage]
    lost: int
    """Messages already dropped from the bounded log before the caller read them."""
    ended: bool
    complete: bool
    """True once `session_ended` is in the log (or the actor finished without one): stop polling."""
    end_reason: str | None


@dataclass(frozen=True)
class SessionStats:
    """Answer of `SessionActor.info`: GET /v1/sessions/{id} and /metrics."""

    session_id: str
    tenant: str
    model: str
    state: dict[str, Any]
    ended: bool
    end_reason: str | None
    chunks: int
    effective_fps: float
    gen_ms: list[float]
    viewers: int


@dataclass(frozen=True)
class SessionAssignment:
    """What makes a spare (pre-started, parked) session actor a tenant's session, handed to its `start`.

    A spare is created before its session exists so admission skips the actor's start-up
    (deployments/spares.py); everything that belongs to one session comes here.
    """

    tenant: str
    group: Any
    """The leased `ShardGroup`, or None for a model without one."""
    seed: int | None
    idle_timeout_s: float
    max_session_s: float
    command_rate: RateLimitSpec | None
    """The tenant's command rate (None: the default `RateLimitSpec`)."""
    admitted_at: float | None
    """When the registry admitted the session; None for a spare's placeholder."""


@dataclass(frozen=True)
class SessionActorArgs:
    """What a session actor is created with, by the registry or as a spare (`SessionActor.__init__`).

    The fixed part (its id, model, sizes, the registry it reports to) and the session's
    `assignment`: a spare gets a placeholder one, replaced by the real one in `start`.
    """

    session_id: str
    model: str
    spec: ModelSpec
    registry_name: str
    ring_size: int
    message_log_size: int
    linger_s: float
    assignment: SessionAssignment
    spare: bool = False
    """Started ahead of its session: it watches its registry's ownership from birth (deployments/spares.py)."""


@dataclass(frozen=True)
class SessionStarted:
    """Answer of `SessionActor.start`."""

    session_id: str
    geometry: dict[str, Any]
    node_id: str | None = None
    """The Ray node the session actor runs on (the admin API shows it)."""


@dataclass(frozen=True)
class CommandQueued:
    """Answer of `SessionRegistry.queue_command`: the set-up command is kept and applied, in order, at admission."""

    position: int | None
    """The session's place in its model's queue (1 = next)."""
    queued: int
    """Commands now waiting for this session (this one included)."""


class RecordingInfo(TypedDict):
    """Answer of `Relay.recording_info` / `wait_recording` (a dict: tests and operators read it as JSON)."""

    path: str
    exists: bool
    recording: bool
    """Written by this relay replica right now."""
    chunks: int | None
    complete: bool | None


@dataclass(frozen=True)
class HlsRequest:
    """What the front door asks the relay for under `.../hls/`: the playlist (with its delivery
    directives), the init segment, a segment or a part; `query` is appended to the playlist's URIs."""

    resource: str
    """"playlist" | "init" | "segment" | "part"."""
    msn: int | None = None
    part: int | None = None
    query: str = ""


@dataclass(frozen=True)
class HlsReply:
    """The relay's answer to an `HlsRequest`: the bytes and their Content-Type."""

    body: bytes
    media_type: str


# ---- failures -------------------------------------------------------------------------------
class ServeError(Exception):
    """A failure a client is told about: `detail` is the message, naming `field`.

    Each subclass names its field in its class statement (`class X(ServeError,
    field="tenant")`); an instance may override it (`InvalidField(..., field="format")`).
    Attributes other than `detail` are keyword arguments declared on the class, so an
    instance pickles through Ray as `(type, (detail,), __dict__)` with nothing lost.
    """

    field: str = "request"
    retry_after_s: float | None = None

    def __init_subclass__(cls, field: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if field is not None:
            cls.field = field

    def __init__(self, detail: str, **attrs: Any):
        super().__init__(detail)
        self.detail = detail
        for name, value in attrs.items():
            if not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__} has no attribute {name!r}")
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.detail


class InvalidField(ServeError, ValueError):
    """A request field has a bad value (a ValueError, as any bad input); pass `field=`."""


class UnknownModel(InvalidField, field="model"):
    """The session asks for a model the server does not offer."""


class BadCommand(ServeError, field="command"):
    """The session refused a command; `ack` is its refusal, returned with the error."""

    ack: dict[str, Any] | None = None


class Unauthorized(ServeError, field="authorization"):
    """Missing or wrong API key or viewer token."""


class ViewerTokenRejected(Unauthorized, field="token"):
    """A token that is neither the owner's API key nor the session's viewer token."""




class ViewerTokenExpired(ViewerTokenRejected):
    """The session's viewer token was right but has expired (session end + grace, or its TTL)."""


class ApiKeyInQuery(Unauthorized, field="token"):
    """An API key sent in the query string (`?api_key=`, or as `?token=`): refused, never used."""


class AdminOnly(ServeError, field="authorization"):
    """A valid key that is not an admin key (a tenant's) on the admin API."""


class OriginNotAllowed(ServeError, field="origin"):
    """A CORS preflight from an origin outside `cors_allowed_origins`."""


class NotFound(ServeError, field="path"):
    """A resource the request names does not exist."""


class SessionNotFound(NotFound, ValueError, field="session_id"):
    """No such session (or not the caller's); a ValueError too: the id given is bad input."""


class RecordingNotFound(NotFound, field="recording"):
    """The session has no recording (yet)."""


class SegmentNotFound(NotFound, field="segment"):
    """An HLS segment or part outside the playlist's window (or a gap: this replica has no media for it)."""


class BadDirective(InvalidField, field="_HLS_msn"):
    """An HLS delivery directive that is malformed or too far ahead (RFC 8216bis 6.2.5.2: 400 Bad Request)."""


class PlaylistNotReady(ServeError, field="_HLS_msn"):
    """A blocking playlist reload waited three target durations (RFC 8216bis 6.2.5.2: 503), or no segment exists yet."""


class SessionQueued(ServeError, field="session_id"):
    """The session still waits for a shard group and the command is not a set-up command (those are queued)."""

    position: int | None = None


class SessionEnded(ServeError, field="session_id"):
    """The session has ended: it takes no more commands."""

    end_reason: str | None = None


class StreamEnded(SessionEnded):
    """The session ended before the stream began (its recording is what remains)."""


class QuotaExceeded(ServeError, field="tenant"):
    """The tenant already holds as many sessions as its quota allows."""


class LimitExceeded(ServeError):
    """Over a configured limit (docs/limits.md): `limit` is its config key, named in the body too."""

    limit: str = "limit"


class QueuedCommandsFull(LimitExceeded, field="command"):
    """A queued session already holds `max_queued_commands` set-up commands."""

    limit: str = "max_queued_commands"


class ConnectionLimitExceeded(LimitExceeded, field="connections"):
    """One more viewer or message stream would go over a per-session or per-tenant connection cap."""


class NoCapacity(ServeError, field="model"):
    """Every shard group of the model is busy and its queue is full."""


class ShuttingDown(ServeError, field="server"):
    """The server is shutting down and admits no session."""


class SessionStartFailed(ServeError, field="session"):
    """The model could not start on its shard group (the group is rebuilt)."""


class RelayUnavailable(ServeError, field="stream"):
    """The relay is not deployed or failed before the stream's first byte."""


class RecordingUnavailable(ServeError, field="recording"):
    """The recording store (`recording_uri`) did not answer or refused the read."""


class CommandTimeout(ServeError, field="command"):
    """The session did not acknowledge a command in time."""


class CommandRateLimited(LimitExceeded, field="command"):
    """The session's commands came faster than its tenant's `command_rate`; retry after `retry_after_s`."""

    limit: str = "command_rate"


class BodyTooLarge(ServeError, field="body"):
    """A request body (or WebSocket frame) over `max_body_bytes`."""


class RangeNotSatisfiable(ServeError, field="range"):
    """A `Range` that starts past what is recorded so far; `length` is what is (sent as `Content-Range: bytes */length`)."""

    length: int = 0


class InvalidPath(ServeError, ValueError, field="path"):
    """A URL path that is malformed (NUL or control characters, `..`, backslashes, odd encodings)."""


def cause_of(exc: BaseException) -> BaseException:
    """The exception an actor raised, unwrapped from Ray's `RayTaskError` (however deeply nested).

    Ray re-raises actor exceptions as a `RayTaskError` subclass of the cause's class, so an
    `except SessionNotFound` catches it, but its attributes are not the cause's: read
    them from what this returns.
    """
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc
