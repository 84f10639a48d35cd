"""Blocking Python client: `HeliosClient` opens sessions, `HeliosSession` drives and watches one."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from helios.client import wire
from helios.client.errors import (
    HeliosCapacityError,
    HeliosCommandError,
    HeliosConnectionError,
    HeliosHTTPError,
    HeliosError,
    HeliosNotFoundError,
    HeliosSessionEnded,
    HeliosTimeout,
)
from helios.client.images import DEFAULT_SIZE, ImageSource, prepare_image
from helios.client.types import Ack, Chunk, Message, SessionInfo, ViewerToken
from helios.client.video import Mp4Writer

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_POLL_S = 5.0
RECONNECT_TRIES = 5
STARTING_S = 15.0
"""Longest wait for a just-admitted session's actor to take commands."""


class HeliosClient:
    """A connection to one Helios Serve front door, authenticated by an API key.

    `api_key` defaults to $HELIOS_API_KEY; `base_url` to $HELIOS_URL or http://127.0.0.1:8000.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = wire.normalize_base_url(base_url or os.environ.get("HELIOS_URL") or DEFAULT_URL)
        self.api_key = api_key if api_key is not None else os.environ.get("HELIOS_API_KEY")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=wire.auth_headers(self.api_key),
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        self._models: Any = None

    # -- plumbing ---------------------------------------------------------------------
    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Send one request and raise the matching HeliosHTTPError on an error status."""
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise HeliosConnectionError(f"cannot reach {self.base_url}: {exc}") from exc
        wire.raise_for_status(resp)
        return resp

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HeliosClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """GET /healthz: liveness (`ready` says readiness too)."""
        return self.request("GET", "/healthz").json()

    def readiness(self) -> dict[str, Any]:
        """GET /readyz: `{"ready", "models", "not_ready", "detail"}`, ready or not (no error on 503)."""
        try:
            return wire.parse_readiness(self._http.get("/readyz"))
        except httpx.TransportError as exc:
            raise HeliosConnectionError(f"cannot reach {self.base_url}: {exc}") from exc

    def wait_ready(self, timeout: float = 300.0, poll_s: float = 1.0) -> dict[str, Any]:
        """Poll /readyz until every model has a warm shard group; HeliosTimeout names the models still missing."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.readiness()
            if body.get("ready"):
                return body
            if time.monotonic() + poll_s > deadline:
                raise HeliosTimeout(f"server not ready after {timeout}s: {body.get('detail') or body.get('not_ready')}")
            time.sleep(poll_s)  # polling interval, not synchronisation

    def models(self) -> Any:
        """GET /v1/models, as the server sends it (cached)."""
        if self._models is None:
            self._models = self.request("GET", "/v1/models").json()
        return self._models

    def model_size(self, model: str | None) -> tuple[int, int]:
        """(width, height) of a model from /v1/models; Helios' 640×384 when the server doesn't say."""
        try:
            return wire.pick_resolution(self.models(), model) or DEFAULT_SIZE
        except HeliosError:
            return DEFAULT_SIZE

    # -- sessions ----------------------------------------------------------------------
    def create_session(
        self,
        model: str | None = None,
        *,
        seed: int | None = None,
        wait: bool = True,
        on_queue: wire.QueueCallback | None = None,
        timeout: float | None = None,
        retry_busy_s: float = 0.0,
    ) -> "HeliosSession":
        """POST /v1/sessions; if queued and `wait`, poll until active, calling `on_queue(position)`.

        A 429 (queue full) raises HeliosCapacityError, or is retried for `retry_busy_s` seconds.
        """
        body: dict[str, Any] = {}
        if model is not None:
            body["model"] = model
        if seed is not None:
            body["seed"] = int(seed)
        deadline = time.monotonic() + retry_busy_s
        while True:
            try:
                resp = self.request("POST", "/v1/sessions", json=body)
                break
            except HeliosCapacityError as exc:  # queue full: retry for up to retry_busy_s
                wait = min(exc.retry_after or 1.0, MAX_POLL_S)
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)  # Retry-After, not synchronisation
        session = HeliosSession(self, SessionInfo.model_validate(resp.json()))
        if session.info.status == "queued" and wait:
            session.wait_active(on_queue=on_queue, timeout=timeout,
                                poll_s=wire.parse_retry_after(resp.headers, 1.0) or 1.0)
        return session

    def session(self, session_id: str, *, token: str | None = None) -> "HeliosSession":
        """Attach to an existing session (`token`: a viewer token, for read-only use)."""
        info = SessionInfo(session_id=session_id, status="unknown", viewer_token=token)
        return HeliosSession(self, info, token=token)

    def get_session(self, session_id: str, *, token: str | None = None) -> SessionInfo:
        params = {"token": token} if token else None
        return SessionInfo.model_validate(self.request("GET", f"/v1/sessions/{session_id}", params=params).json())

    def delete_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.model_validate(self.request("DELETE", f"/v1/sessions/{session_id}").json())

    def rotate_viewer_token(self, session_id: str) -> ViewerToken:
        """A new viewer token for a session of yours; the old one stops working (share links must be re-sent)."""
        return ViewerToken.model_validate((self.request("POST", f"/v1/sessions/{session_id}/viewer-token")).json())


class HeliosSession:
    """One session: typed commands (each returns its Ack or raises HeliosCommandError), message
    and frame streams that reconnect on their own, and recording to .mp4."""

    def __init__(self, client: HeliosClient, info: SessionInfo, *, token: str | None = None) -> None:
        self.client = client
        self.info = info
        self.id = info.session_id
        self._token = token  # viewer token for read-only routes; None → API key header
        self.last_seq: int | None = None
        self.frame_size: tuple[int, int] | None = None  # (width, height) of the frames seen on the stream

    def __repr__(self) -> str:
        return f"HeliosSession(id={self.id!r}, status={self.info.status!r})"

    @property
    def viewer_token(self) -> str | None:
        return self.info.viewer_token

    def _path(self, suffix: str = "") -> str:
        return f"/v1/sessions/{self.id}{suffix}"

    # -- lifecycle ---------------------------------------------------------------------
    def refresh(self) -> SessionInfo:
        """GET the session; keeps the viewer token and URLs from creation."""
        fresh = self.client.get_session(self.id, token=self._token)
        keep = {"viewer_token": self.info.viewer_token, "urls": self.info.urls}
        self.info = fresh.model_copy(update={k: v for k, v in keep.items() if v and not getattr(fresh, k)})
        return self.info

    def wait_active(self, *, on_queue: wire.QueueCallback | None = None, timeout: float | None = None,
                    poll_s: float = 1.0) -> SessionInfo:
        """Poll a queued session until it is active; raises HeliosSessionEnded / HeliosTimeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polled = False
        active_since: float | None = None
        while True:
            if self.info.status == "active":
                # Just admitted from the queue, the session actor may still be starting: probe it.
                active_since = active_since or time.monotonic()
                if not polled or self._answers() or time.monotonic() - active_since > STARTING_S:
                    return self.info
                time.sleep(0.2)  # actor start-up poll
                self.refresh()
                continue
            if self.info.status == "ended":
                raise HeliosSessionEnded(self.info.end_reason)
            if on_queue is not None:
                on_queue(self.info.position)
            if deadline is not None and time.monotonic() + poll_s > deadline:
                raise HeliosTimeout(f"session {self.id} still queued (position {self.info.position}) after {timeout}s")
            time.sleep(min(max(poll_s, 0.1), MAX_POLL_S))  # polling interval, not synchronisation
            self.refresh()
            polled = True

    def _answers(self) -> bool:
        """Whether the session actor takes commands yet (not while it is still starting)."""
        try:
            self.command("get_state")
        except HeliosHTTPError as exc:
            if exc.status_code == 409:
                return False
            raise
        except HeliosCommandError as exc:
            # A starting actor refuses with "session has ended (None)"; anything else is an answer.
            return not exc.message.startswith("session has ended")
        return True

    def delete(self) -> SessionInfo:
        self.info = self.client.delete_session(self.id)
        return self.info

    def rotate_viewer_token(self) -> str:
        """Replace this session's viewer token (owner only) and return the new one; the old one gets 401."""
        issued = self.client.rotate_viewer_token(self.id)
        self.info = self.info.model_copy(update={"viewer_token": issued.viewer_token, "urls": issued.urls or self.info.urls})
        return issued.viewer_token

    def __enter__(self) -> "HeliosSession":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.delete()
        except HeliosNotFoundError:
            pass

    # -- commands ----------------------------------------------------------------------
    def command(self, command: str, args: dict[str, Any] | None = None, *, id: str | None = None) -> Ack:
        """Send any command; returns the ack, raises HeliosCommandError if refused."""
        body = wire.command_body(command, args, id)
        try:
            resp = self.client._http.post(self._path("/commands"), json=body)
        except httpx.TransportError as exc:
            raise HeliosConnectionError(f"cannot reach {self.client.base_url}: {exc}") from exc
        return wire.parse_ack(command, resp)

    def set_prompt(self, prompt: str) -> Ack:
        return self.command("set_prompt", {"prompt": prompt})

    def schedule_prompt(self, prompt: str, chunk: int) -> Ack:
        return self.command("schedule_prompt", {"prompt": prompt, "chunk": chunk})

    def set_image(self, image: ImageSource, transition: str = "cut", *, max_bytes: int = 64 * 1024) -> Ack:
        """Resize `image` to the stream's frame size (else the model's, else 640x384; the server resizes
        to the model resolution anyway) and JPEG it under `max_bytes` before sending."""
        if transition not in ("cut", "blend"):
            raise ValueError(f"transition: expected 'cut' or 'blend', got {transition!r}")
        size = self.frame_size or self.client.model_size(self.info.model)
        b64 = prepare_image(image, size, max_bytes)
        return self.command("set_image", {"image_b64": b64, "transition": transition})

    def start(self) -> Ack:
        return self.command("start")

    def pause(self) -> Ack:
        return self.command("pause")

    def resume(self) -> Ack:
        return self.command("resume")

    def reset(self) -> Ack:
        return self.command("reset")

    def set_seed(self, seed: int) -> Ack:
        return self.command("set_seed", {"seed": seed})

    def get_state(self) -> dict[str, Any]:
        """The session's protocol state (running, current_chunk, current_prompt, ...)."""
        ack = self.command("get_state")
        result = ack.result
        if isinstance(result, dict) and "data" in result and result.get("type") == "state":
            return result["data"]
        return result if isinstance(result, dict) else {}

    # -- message stream ----------------------------------------------------------------
    def messages(self, *, after: int | None = None, reconnect: bool = True,
                 timeout: float | None = None) -> Iterator[Message]:
        """Iterate protocol messages (SSE) until `session_ended`, resuming after drops.

        `after` defaults to the last seq this handle saw (so a new call continues where the
        previous left off); pass -1 to replay from the start of the server's window.
        `timeout` raises HeliosTimeout if no message arrives for that many seconds.
        """
        parser = wire.SSEParser(self.last_seq if after is None else (None if after < 0 else after))
        retry = wire.Reconnect(f"message stream of session {self.id}", RECONNECT_TRIES)
        while True:
            params, headers = wire.events_params(parser.last_seq, self._token)
            got_any = False
            try:
                with self.client._http.stream(
                    "GET", self._path("/events"), params=params, headers=headers,
                    timeout=httpx.Timeout(self.client.timeout, read=timeout),
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                    wire.raise_for_status(resp)
                    for line in resp.iter_lines():
                        msg = parser.feed(line)
                        if msg is None:
                            continue
                        got_any = True
                        self.last_seq = parser.last_seq
                        yield msg
                        if msg.event == "session_ended":
                            return
            except httpx.ReadTimeout:
                raise HeliosTimeout(f"no message from session {self.id} for {timeout}s") from None
            except httpx.TransportError as exc:
                if not reconnect:
                    raise HeliosError(f"message stream of session {self.id} dropped: {exc}") from exc
                log.info("message stream dropped (%s); resuming after seq %s", exc, parser.last_seq)
            if not reconnect:
                return
            delay = retry.next_delay(got_any)
            time.sleep(delay)

    def wait_for(self, predicate: Callable[[Message], bool], *, timeout: float = 60.0) -> Message:
        """Read messages until `predicate(msg)` holds; raises HeliosTimeout / HeliosSessionEnded."""
        deadline = time.monotonic() + timeout
        for msg in self.messages(timeout=timeout):
            if predicate(msg):
                return msg
            if msg.event == "session_ended":
                raise HeliosSessionEnded(msg.data.get("reason"))
            if time.monotonic() > deadline:
                break
        raise HeliosTimeout(f"session {self.id}: condition not met within {timeout}s")

    # -- frame stream ------------------------------------------------------------------
    def frames(self, *, from_chunk: int | None = 0, reconnect: bool = True,
               timeout: float | None = None) -> Iterator[Chunk]:
        """Iterate decoded frames (msgpack stream) as numpy arrays until the stream ends.

        A dropped connection is reopened from the last chunk seen; frames already
        delivered are skipped.
        """
        decoder = wire.FrameDecoder()
        start = from_chunk
        retry = wire.Reconnect(f"frame stream of session {self.id}", RECONNECT_TRIES)
        while True:
            got_any = False
            try:
                with self.client._http.stream(
                    "GET", self._path("/stream"), params=wire.stream_params("msgpack", start, self._token),
                    timeout=httpx.Timeout(self.client.timeout, read=timeout),
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                    wire.raise_for_status(resp)
                    for data in resp.iter_bytes():
                        for chunk in decoder.feed(data):
                            got_any = True
                            self.frame_size = (chunk.frames.shape[2], chunk.frames.shape[1])
                            yield chunk
                        if decoder.ended:
                            return
            except httpx.ReadTimeout:
                raise HeliosTimeout(f"no frames from session {self.id} for {timeout}s") from None
            except httpx.TransportError as exc:
                if not reconnect:
                    raise HeliosError(f"frame stream of session {self.id} dropped: {exc}") from exc
                log.info("frame stream dropped (%s); resuming at chunk %s", exc, decoder.last_chunk)
            if not reconnect:
                return
            delay = retry.next_delay(got_any)
            resumed = decoder.resume_from()
            start = resumed if resumed is not None else start
            time.sleep(delay)

    def save_mp4(self, path: str | Path, *, chunks: int | None = None, from_chunk: int | None = 0,
                 on_chunk: Callable[[Chunk], None] | None = None, timeout: float | None = None,
                 frames_per_chunk: int = 33) -> int:
        """Record the frame stream into `path` until `chunks` whole chunks (or the end); → frames written."""
        complete = 0
        with Mp4Writer(path) as writer:
            for chunk in self.frames(from_chunk=from_chunk, timeout=timeout):
                writer.write(chunk.frames, chunk.fps)
                if on_chunk is not None:
                    on_chunk(chunk)
                complete += wire.ends_chunk(chunk, frames_per_chunk)
                if chunks is not None and complete >= chunks:
                    break
            return writer.frames_written
