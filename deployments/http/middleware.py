"""Body-size limit as ASGI middleware: an oversized body gets 413 before any handler parses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from deployments.http.errors import error_body, status_of
from deployments.protocol import BodyTooLarge


class _TooLarge(Exception):
    """Raised inside `receive` to abandon a body that went over the limit while streaming in."""


class BodyLimit:
    """Refuses bodies over `limit_of()` bytes, by Content-Length or while they stream in.

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
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _send_too_large(send, limit)


async def _send_too_large(send, limit: int) -> None:
    exc = BodyTooLarge(f"body: request body over the {limit}-byte limit")
    body = json.dumps(error_body(exc)).encode()
    await send({"type": "http.response.start", "status": status_of(exc), "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
