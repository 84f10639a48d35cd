"""Builders for the three protocol message shapes, so every producer spells them the same way."""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def state_message(state: dict[str, Any]) -> Message:
    """`{"type": "state", "data": {...}}`."""
    return {"type": "state", "data": dict(state)}


def event_message(event: str, **fields: Any) -> Message:
    """`{"type": "event", "data": {"event": event, **fields}}`."""
    return {"type": "event", "data": {"event": event, **fields}}


def ack_message(cmd_id: Any, ok: bool, error: str | None = None, result: Any = None) -> Message:
    """`{"type": "ack", "data": {"id", "ok", "error", "result"}}`: the answer to every command."""
    return {"type": "ack", "data": {"id": cmd_id, "ok": ok, "error": error, "result": result}}


def error_message(message: str) -> Message:
    """The `error` event."""
    return event_message("error", message=message)
