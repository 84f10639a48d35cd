"""The HTTP wire format shared by the sync and asyncio clients: no I/O here, only parsing.

Keeping request building, error mapping, SSE parsing and msgpack frame decoding in one
I/O-free module means both clients behave identically and can be unit-tested without a
server.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable
from urllib.parse import urljoin

import httpx
import msgpack
import numpy as np

from helios.client.errors import (
    HeliosError,
    HeliosAuthError,
    HeliosCapacityError,
    HeliosCommandError,
    HeliosHTTPError,
    HeliosNotFoundError,
)
from helios.client.types import Ack, Chunk, Message

log = logging.getLogger(__name__)

COMMANDS = ("set_prompt", "schedule_prompt", "set_image", "start", "pause", "resume", "reset", "set_seed", "get_state")
"""The session commands with typed client methods (the server may offer more, e.g. list_commands)."""

QueueCallback = Callable[[int | None], None]
"""Called with the queue position while a new session waits for a shard group."""


def normalize_base_url(base_url: str) -> str:
    """'localhost:8000' → 'http://localhost:8000'; no trailing slash. Raises ValueError on junk."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ValueError(f"base_url: expected a URL such as http://127.0.0.1:8000, got {base_url!r}")
    url = base_url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: only http:// and https:// are supported, got {base_url!r}")
    return url


def absolute(base_url: str, url: str) -> str:
    """Resolve a root-relative URL from the server (e.g. `urls.events`) against the base URL."""
    return urljoin(base_url + "/", url)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def parse_retry_after(headers: httpx.Headers, default: float | None = None) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def _detail(resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except (json.JSONDecodeError, ValueError, UnicodeDecodeError):
        return resp.text.strip() or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def raise_for_status(resp: httpx.Response) -> None:
    """Map an error status to the matching HeliosHTTPError subclass, with the server's detail."""
    if resp.status_code < 400:
        return
    detail = _detail(resp)
    kw = {"method": resp.request.method, "url": str(resp.request.url.copy_with(query=None))}
    code = resp.status_code
    if code in (401, 403):
        raise HeliosAuthError(code, detail, **kw)
    if code == 404:
        raise HeliosNotFoundError(code, detail, **kw)
    if code == 429:
        raise HeliosCapacityError(code, detail, retry_after=parse_retry_after(resp.headers), **kw)
    raise HeliosHTTPError(code, detail, **kw)


def parse_readiness(resp: httpx.Response) -> dict[str, Any]:
    """GET /readyz → its body: 200 (ready) and 503 (not ready yet) are both answers; anything else raises."""
    if resp.status_code == 503:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "ready" in body:
            return body
    raise_for_status(resp)
    return resp.json()


def command_body(command: str, args: dict[str, Any] | None = None, cmd_id: str | None = None) -> dict[str, Any]:
    if not isinstance(command, str) or not command:
        raise ValueError(f"command: expected a command name such as 'set_prompt', got {command!r}")
    if args is not None and not isinstance(args, dict):
        raise ValueError(f"args: expected a dict of command arguments, got {type(args).__name__}")
    body: dict[str, Any] = {"command": command, "args": args or {}}
    if cmd_id is not None:
        body["id"] = cmd_id
    return body


def parse_ack(command: str, resp: httpx.Response) -> Ack:
    """A command response → Ack, raising HeliosCommandError when the session refused it."""
    if resp.status_code == 422:
        try:
            body = resp.json()
        except ValueError:
            body = {"detail": resp.text}
        ack = body.get("ack") if isinstance(body, dict) else None
        detail = body.get("detail") if isinstance(body, dict) else body
        message = (ack or {}).get("error") or _format_detail(detail)
        raise HeliosCommandError(command, message, ack)
    raise_for_status(resp)
    ack = Ack.model_validate(resp.json())
    if not ack.ok:
        raise HeliosCommandError(command, ack.error or "refused", ack.model_dump())
    return ack


def _format_detail(detail: Any) -> str:
    """FastAPI validation errors are lists of {loc, msg}; make them one readable line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class SSEParser:
    """Incremental Server-Sent-Events parser: feed lines, get protocol Messages.

    Tracks the last event id so a dropped stream resumes with `?after=<seq>`.
    """

    def __init__(self, last_seq: int | None = None) -> None:
        self.last_seq = last_seq
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Message | None:
        line = line.rstrip("\r\n")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # keep-alive comment
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None

    def _dispatch(self) -> Message | None:
        if not self._data:
            self._id = None
            return None
        raw = "\n".join(self._data)
        seq = _to_int(self._id)
        self._data, self._id = [], None
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("ignoring a non-JSON SSE event (%d bytes)", len(raw))
            return None
        if seq is not None:
            self.last_seq = seq
        if not isinstance(obj, dict) or "type" not in obj:
            log.warning("ignoring an SSE event that is not a protocol message")
            return None
        return Message(type=obj["type"], data=obj.get("data") or {}, seq=seq)


def _to_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def events_params(after: int | None, token: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Query parameters and headers for (re)connecting to the SSE stream after `after`."""
    params: dict[str, str] = {}
    headers: dict[str, str] = {"Accept": "text/event-stream"}
    if after is not None:
        params["after"] = str(after)
        headers["Last-Event-ID"] = str(after)
    if token:
        params["token"] = token
    return params, headers


class FrameDecoder:
    """Incremental decoder of the msgpack frame stream (`?format=msgpack`).

    Feed raw bytes; iterate `Chunk`s. Remembers how far it got so a reconnect can ask for
    `from=<chunk>` again and drop frames it already delivered.
    """

    def __init__(self) -> None:
        self._unpacker = self._new_unpacker()
        self.ended = False
        self.end_reason: str | None = None
        self.interrupted: str | None = None
        """Why the server cut the last stream short (an `interrupted` map), if it did."""
        self.last_chunk: int | None = None
        self.last_end: int = 0  # first_frame + n of the last delivered item of last_chunk
        self._resume_chunk: int | None = None

    @staticmethod
    def _new_unpacker() -> msgpack.Unpacker:
        return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2**31 - 1)

    def resume_from(self) -> int | None:
        """The chunk to reconnect from (the last one seen; its delivered frames are skipped).

        Drops the half-received item of the broken connection: the new one starts clean.
        """
        self._unpacker = self._new_unpacker()
        if self.last_chunk is None:
            return None
        self._resume_chunk = self.last_chunk
        return self.last_chunk

    def feed(self, data: bytes) -> list[Chunk]:
        self._unpacker.feed(data)
        out: list[Chunk] = []
        for obj in self._unpacker:
            chunk = self._handle(obj)
            if chunk is not None:
                out.append(chunk)
        return out

    def _handle(self, obj: Any) -> Chunk | None:
        if not isinstance(obj, dict):
            log.warning("ignoring a msgpack stream item that is not a map")
            return None
        kind = obj.get("type")
        if kind == "end":
            self.ended = True
            self.end_reason = obj.get("reason")
            return None
        if kind == "interrupted":  # the stream was cut short (the relay failed); the caller reconnects with from=
            self.interrupted = obj.get("reason")
            log.info("frame stream interrupted (%s); resuming after chunk %s", self.interrupted, self.last_chunk)
            return None
        if kind != "chunk":
            return None
        shape = tuple(int(s) for s in obj["shape"])
        frames = np.frombuffer(obj["frames"], dtype=np.dtype(obj.get("dtype", "uint8"))).reshape(shape)
        idx = int(obj["chunk"])
        first = int(obj.get("first_frame", 0))
        if self._resume_chunk is not None:
            frames, first = self._trim_replay(idx, first, frames)
            if frames is None:
                return None
        if idx != self.last_chunk:
            self.last_chunk = idx
        self.last_end = first + frames.shape[0]
        return Chunk(chunk=idx, first_frame=first, frames=frames, prompt=obj.get("prompt"), fps=float(obj.get("fps") or 24))

    def _trim_replay(self, idx: int, first: int, frames: np.ndarray) -> tuple[np.ndarray | None, int]:
        """After a reconnect the server replays the resume chunk; skip what was delivered."""
        resume = self._resume_chunk
        if idx == resume:
            end = first + frames.shape[0]
            if end <= self.last_end:
                return None, first
            skip = max(0, self.last_end - first)
            return frames[skip:], first + skip
        self._resume_chunk = None  # a later chunk (or an earlier one after a reset): live again
        return frames, first


def stream_params(fmt: str, from_chunk: int | None, token: str | None) -> dict[str, str]:
    params = {"format": fmt}
    if from_chunk is not None:
        params["from"] = str(int(from_chunk))
    if token:
        params["token"] = token
    return params


def pick_resolution(models: Any, model: str | None) -> tuple[int, int] | None:
    """(width, height) of `model` from a GET /v1/models answer, when the server says it."""
    entries = models.get("models", models.get("data", [])) if isinstance(models, dict) else models
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("id") or entry.get("model")
        if model is not None and name != model:
            continue
        w, h = entry.get("width"), entry.get("height")
        res = entry.get("resolution")
        if (w is None or h is None) and isinstance(res, (list, tuple)) and len(res) == 2:
            h, w = res
        if (w is None or h is None) and isinstance(res, dict):
            w, h = res.get("width"), res.get("height")
        if isinstance(w, int) and isinstance(h, int):
            return w, h
    return None


def model_names(models: Any) -> list[str]:
    entries = models.get("models", models.get("data", [])) if isinstance(models, dict) else models
    names = []
    for entry in entries or []:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict):
            name = entry.get("name") or entry.get("id") or entry.get("model")
            if name:
                names.append(str(name))
    return names


def ends_chunk(chunk: Chunk, frames_per_chunk: int) -> bool:
    """True when this stream item holds the last frame of its chunk (items may be partial chunks).

    `first_frame` may count from the chunk start or from the stream start; both are
    multiples of `frames_per_chunk` at chunk boundaries.
    """
    return (chunk.first_frame + chunk.num_frames) % frames_per_chunk == 0


class Reconnect:
    """Backoff between attempts to reopen a dropped stream (shared by the sync and async clients).

    An attempt that delivered anything resets the count; `tries` empty attempts in a row give up.
    """

    def __init__(self, what: str, tries: int) -> None:
        self.what = what
        self.tries = tries
        self.failures = 0

    def next_delay(self, got_any: bool) -> float:
        """Seconds to wait before the next attempt; raises HeliosError when it is time to give up."""
        self.failures = 0 if got_any else self.failures + 1
        if self.failures >= self.tries:
            raise HeliosError(f"{self.what} keeps closing; gave up after {self.failures} tries")
        return min(0.2 * 2**self.failures, 2.0)
