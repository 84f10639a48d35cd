"""Exceptions raised by the Helios client: one type per thing a caller may want to handle."""

from __future__ import annotations

from typing import Any


class HeliosError(Exception):
    """Base class of every error the client raises."""


class HeliosHTTPError(HeliosError):
    """The server answered with an error status; `detail` is its explanation (names the bad field)."""

    def __init__(self, status_code: int, detail: Any, *, method: str = "", url: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method else ""
        super().__init__(f"HTTP {status_code}{where}: {detail}")


class HeliosAuthError(HeliosHTTPError):
    """401/403: the API key or viewer token is missing or wrong."""


class HeliosNotFoundError(HeliosHTTPError):
    """404: no such session (or it was deleted)."""


class HeliosCapacityError(HeliosHTTPError):
    """429: no capacity and the queue is full; retry after `retry_after` seconds."""

    def __init__(self, status_code: int, detail: Any, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(status_code, detail, **kw)
        self.retry_after = retry_after


class HeliosCommandError(HeliosError):
    """A command was refused (ack ok=false or HTTP 422); `ack` is the server's ack when it sent one."""

    def __init__(self, command: str, message: str, ack: dict[str, Any] | None = None) -> None:
        self.command = command
        self.message = message
        self.ack = ack or {}
        super().__init__(f"command {command!r} refused: {message}")


class HeliosSessionEnded(HeliosError):
    """The session ended while the caller was waiting for something from it."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        super().__init__(f"session ended: {reason}")


class HeliosTimeout(HeliosError):
    """A wait for a session state or message ran past its timeout."""


class HeliosConnectionError(HeliosError):
    """The server could not be reached (refused, DNS, TLS, timeout before an answer)."""
