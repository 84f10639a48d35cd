"""Body-size limit as ASGI middleware: an oversized body gets 413 before any handler parses it.

The body is read in full (up to the limit) before the app sees it, so a chunked body
(no Content-Length) is refused the same way as a declared one: checking while the app
reads would be too late, since FastAPI turns any error raised while it reads a body
into a 400 "There was an error parsing the body".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from deployments.http.errors import error_body, status_of
from deployments.protocol import BodyTooLarge


def too_large(limit: int, what: str = "request body") -> BodyTooLarge:
    """The error of a body or frame over `max_body_bytes`."""
    return BodyTooLarge(f"body: {what} over the {limit}-byte limit (max_body_bytes)")


class BodyLimit:
    """Refuses bodies over `limit_of()` bytes, by Content-Length or once the streamed bytes pass it.

    The limit is read per request from `limit_of` (the replica's config), so the module
    holds no state that a replica's constructor would have to change.
    """

    def __init__(self, app: Any, limit_of: Callable[[], int]):
        self.app = app
        self.limit_of = limit_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_of()
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await _send_too_large(send, limit)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            if len(body) > limit:
                return await _send_too_large(send, limit)
            if not message.get("more_body", False):
                break
        first = {"type": "http.request", "body": bytes(body), "more_body": False}
        return await self.app(scope, _replay([first], receive), send)


def _replay(messages: list[dict], receive: Callable) -> Callable:
    """A `receive` that hands out `messages` first, then the server's own (for http.disconnect)."""

    async def replayed():
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed


async def _send_too_large(send, limit: int) -> None:
    exc = too_large(limit)
    body = json.dumps(error_body(exc)).encode()
    await send({"type": "http.response.start", "status": status_of(exc), "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
