"""Typed views of what the server sends: sessions, acks, protocol messages and frame chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class SessionInfo(BaseModel):
    """A session as `POST /v1/sessions` and `GET /v1/sessions/{id}` describe it."""

    model_config = ConfigDict(extra="allow")

    session_id: str = Field(description="Server-assigned id, used in every session URL.")
    status: str = Field(description="'queued', 'active' or 'ended'.")
    model: str | None = Field(default=None, description="Model name the session runs.")
    position: int | None = Field(default=None, description="Place in the admission queue while queued.")
    viewer_token: str | None = Field(default=None, description="Read-only token to share with viewers.")
    urls: dict[str, str] = Field(default_factory=dict, description="Absolute or root-relative URLs of the session.")
    state: dict[str, Any] | None = Field(default=None, description="Last protocol state (GET only).")
    end_reason: str | None = Field(default=None, description="Why the session ended, once it has.")


class ViewerToken(BaseModel):
    """`POST /v1/sessions/{id}/viewer-token`: the session's new viewer token (the old one now gets 401)."""

    model_config = ConfigDict(extra="allow")

    session_id: str
    viewer_token: str = Field(description="The new read-only token; share links must be re-sent.")
    expires_at: float | None = Field(default=None, description="Unix time it stops working (None while the session runs).")
    urls: dict[str, str] = Field(default_factory=dict, description="The session's URLs with the new token.")


class Ack(BaseModel):
    """The server's reply to one command."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    ok: bool = True
    error: str | None = None
    result: Any = None
    queued: bool = False
    """True: a queued session kept this set-up command; it is applied at admission and its real ack
    (same `id`) comes on the message stream."""
    position: int | None = None
    """The session's queue position when `queued`."""


class Message(BaseModel):
    """One protocol message (`state`, `event` or `ack`) with its stream sequence number."""

    model_config = ConfigDict(extra="allow")

    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    seq: int | None = Field(default=None, description="SSE id: resume after it with ?after=seq.")

    @property
    def event(self) -> str | None:
        """The event name for `event` messages, else None."""
        return self.data.get("event") if self.type == "event" else None


@dataclass
class Chunk:
    """Frames of one chunk (or part of one) from the msgpack stream."""

    chunk: int
    first_frame: int
    frames: np.ndarray
    """uint8 (n, height, width, 3)."""
    prompt: str | None
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])
