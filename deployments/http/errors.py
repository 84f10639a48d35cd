"""Every HTTP status a client can see, chosen by exception type, and the one error body shape.

Body: `{"detail": "<field>: <problem>", "field": "<field>"}` for the typed errors of
`deployments.protocol` (plus `ack` for a refused command, `limit` naming the config key of
a limit that was hit) and for request validation (`field`: the first bad one; a body that is
not JSON, or not UTF-8, is `body`), `{"detail": ...}` for FastAPI's own errors (unknown
route, wrong method). The OpenAPI lists this shape as `ErrorBody` (deployments/http/schemas.py). A status is never
picked from an error's text.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.protocol import (
    AdminOnly,
    BadCommand,
    BadDirective,
    BodyTooLarge,
    CommandTimeout,
    InvalidField,
    InvalidPath,
    NoCapacity,
    LimitExceeded,
    NotFound,
    OriginNotAllowed,
    PlaylistNotReady,
    RangeNotSatisfiable,
    QuotaExceeded,
    RecordingUnavailable,
    RelayUnavailable,
    ServeError,
    SessionEnded,
    SessionQueued,
    SessionStartFailed,
    ShuttingDown,
    StreamEnded,
    Unauthorized,
    cause_of,
)

logger = logging.getLogger(__name__)

STATUS: dict[type[ServeError], int] = {
    BadDirective: 400,
    InvalidPath: 400,
    InvalidField: 422,
    BadCommand: 422,
    Unauthorized: 401,
    OriginNotAllowed: 403,
    AdminOnly: 403,
    NotFound: 404,
    SessionQueued: 409,
    SessionEnded: 409,
    StreamEnded: 410,
    BodyTooLarge: 413,
    RangeNotSatisfiable: 416,
    QuotaExceeded: 429,
    LimitExceeded: 429,
    NoCapacity: 429,
    ShuttingDown: 503,
    SessionStartFailed: 503,
    RelayUnavailable: 503,
    RecordingUnavailable: 503,
    PlaylistNotReady: 503,
    CommandTimeout: 504,
}
"""Status per error type; a subclass without its own entry takes its nearest base's."""


def status_of(exc: ServeError) -> int:
    """The status of `exc`'s most specific listed type (500 for an unlisted one: a bug)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(exc: ServeError) -> dict[str, Any]:
    """The JSON body of a typed error."""
    body: dict[str, Any] = {"detail": exc.detail, "field": exc.field}
    if isinstance(exc, BadCommand) and exc.ack is not None:
        body["ack"] = exc.ack
    if isinstance(exc, LimitExceeded):
        body["limit"] = exc.limit
        if exc.retry_after_s is not None:
            body["retry_after_s"] = exc.retry_after_s
    return body


def error_headers(exc: ServeError) -> dict[str, str] | None:
    """Retry-After on capacity answers, WWW-Authenticate on 401, Content-Range on 416."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))  # whole seconds, never 0
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{exc.length}"
    return headers or None


def error_response(exc: BaseException) -> JSONResponse:
    """The response of a typed error, unwrapped from Ray's wrapper when an actor raised it."""
    cause = cause_of(exc)
    if not isinstance(cause, ServeError):
        raise TypeError(f"error_response needs a ServeError, got {type(cause).__name__}") from exc
    status = status_of(cause)
    if status >= 500:
        logger.warning("%s %d: %s", type(cause).__name__, status, cause.detail)
    return JSONResponse(error_body(cause), status_code=status, headers=error_headers(cause))


def ws_close_code(exc: ServeError) -> int:
    """WebSocket close code of an error raised before the socket is accepted (4000 + status)."""
    return 4000 + status_of(exc)


WS_FRAME_TOO_LARGE = 1009
"""Close code of an accepted socket that sent a frame over `max_body_bytes` (RFC 6455 "message too big")."""


def field_of(loc: tuple | list) -> str:
    """Dotted field name of a pydantic error location, without FastAPI's `body`/`query` prefix."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")] or [str(loc[0]) if loc else "body"]
    return ".".join(parts)


def validation_detail(errors: list[dict]) -> str:
    """One message naming every bad field of a request that failed validation."""
    msgs = []
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}) or {}
            msgs.append(f"body: malformed JSON ({ctx.get('error', 'decode error')})")
        elif err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
            msgs.append("body: a JSON object is required")
        else:
            msgs.append(f"{field_of(err.get('loc', ()))}: {err.get('msg')}")
    return "; ".join(msgs)


async def _serve_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def validation_field(errors: list[dict]) -> str:
    """The field of a request's first validation error (`body` for a body that is not JSON at all)."""
    if not errors or errors[0].get("type") == "json_invalid":
        return "body"
    return field_of(errors[0].get("loc", ())) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    return JSONResponse({"detail": validation_detail(errors), "field": validation_field(errors)}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's 400 "There was an error parsing the body" for a JSON body that is not UTF-8: malformed JSON as any other.
        return JSONResponse({"detail": f"body: malformed JSON (not UTF-8: {exc.__cause__.reason} at byte {exc.__cause__.start})",
                             "field": "body"}, status_code=422)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: typed errors (also when Ray wrapped them), validation, FastAPI's own."""
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
