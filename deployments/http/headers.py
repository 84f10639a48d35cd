"""Response headers every answer carries: security headers (CSP by kind of page) and CORS.

Both are ASGI middleware that read their settings per request from the replica's config
(like `BodyLimit`), so an operator changes them in YAML, not in code.

CORS is closed by default: with `cors_allowed_origins` empty no answer carries
`Access-Control-Allow-Origin`, so a page on another origin cannot read anything, and a
preflight from it is refused with 403. Listed origins (or `*`) get the CORS headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from deployments.http.errors import error_body, status_of
from deployments.protocol import OriginNotAllowed

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The player page (web/): its own script and style files, same-origin fetch/SSE/MJPEG, nothing inline."""
API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""JSON, streams and files: nothing in them may run or load anything."""
DOCS_CSP = "frame-ancestors 'none'"
"""FastAPI's /docs and /redoc load Swagger UI / ReDoc (inline script, CDN assets) in the operator's browser."""
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")

SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"
CORS_EXPOSE = "Retry-After, Content-Type"
CORS_MAX_AGE_S = 600


def csp_for(path: str) -> str:
    """The Content-Security-Policy of a path: the page's, the docs', or the API's."""
    if path == "/" or path.startswith("/static/"):
        return PAGE_CSP
    if path.startswith(DOCS_PATHS):
        return DOCS_CSP
    return API_CSP


def _add_headers(send: Callable, extra: list[tuple[bytes, bytes]]) -> Callable:
    """A `send` that adds `extra` to the response start (a header the app set itself wins)."""

    async def sending(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            have = {name.lower() for name, _ in headers}
            headers += [(n, v) for n, v in extra if n not in have]
            message = {**message, "headers": headers}
        await send(message)

    return sending


class SecurityHeaders:
    """nosniff, no framing, no referrer, and a CSP suited to what the path serves."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = [*SECURITY_HEADERS.items(), (b"content-security-policy", csp_for(scope.get("path", "")).encode())]
        return await self.app(scope, receive, _add_headers(send, extra))


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Whether `origin` is listed (exactly, scheme and port included) or `*` is."""
    return "*" in allowed or origin in allowed


class Cors:
    """CORS from `origins_of()` (the config's `cors_allowed_origins`); closed when empty."""

    def __init__(self, app: Any, origins_of: Callable[[], list[str]]):
        self.app = app
        self.origins_of = origins_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name: value for name, value in scope.get("headers", [])}
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:
            return await self.app(scope, receive, send)
        allowed = origin_allowed(origin, self.origins_of())
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            return await _preflight(send, origin, allowed)
        if not allowed:  # same-origin pages send Origin too: answer, but without CORS headers
            return await self.app(scope, receive, send)
        extra = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", CORS_EXPOSE.encode()),
            (b"vary", b"Origin"),
        ]
        return await self.app(scope, receive, _add_headers(send, extra))


async def _preflight(send: Callable, origin: str, allowed: bool) -> None:
    if allowed:
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", CORS_METHODS.encode()),
            (b"access-control-allow-headers", CORS_HEADERS.encode()),
            (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    exc = OriginNotAllowed(f"origin: {origin[:200]!r} may not call this API from a browser (cors_allowed_origins)")
    await send({"type": "http.response.start", "status": status_of(exc), "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(error_body(exc)).encode()})
