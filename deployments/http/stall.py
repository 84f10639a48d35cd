"""A streaming response that drops a viewer whose socket accepts nothing for `stall_timeout_s`.

Why: with direct ingress (deployments/ingress_env.py) the ASGI `send` waits while the client's
socket is full; the skip-forward in front of it keeps the bytes bounded, but a viewer that
never reads would hold its reader slot (and its relay generator) forever. Each `send` gets a
deadline; past it the response is aborted (the server closes the connection) and the viewer's
lease is released by the body's own `finally`. Behind Serve's Python proxy `send` never waits,
so this guard never fires there (the stall is then invisible to the replica).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi.responses import StreamingResponse
from starlette.types import Message, Send

logger = logging.getLogger(__name__)


class ViewerStalled(Exception):
    """A viewer accepted no bytes for the stall timeout; raised out of the response to abort it."""


class StallGuardedStreamingResponse(StreamingResponse):
    """`StreamingResponse` whose every `send` must complete within `stall_timeout_s` seconds."""

    def __init__(self, *args, stall_timeout_s: float, label: str = "viewer", **kwargs):
        super().__init__(*args, **kwargs)
        self.stall_timeout_s = stall_timeout_s
        self.label = label

    async def stream_response(self, send: Send) -> None:
        async def guarded(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_timeout_s):
                    await send(message)
            except TimeoutError:
                logger.warning("%s accepted no bytes for %.1f s: disconnecting it", self.label, self.stall_timeout_s)
                raise ViewerStalled(f"{self.label}: stalled for {self.stall_timeout_s} s") from None

        try:
            await super().stream_response(guarded)
        except ViewerStalled:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:  # release the viewer's lease and relay generator now, not at garbage collection
                await closer()
            raise
