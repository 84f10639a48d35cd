"""Streaming routes: protocol messages (SSE, WebSocket), live video and the recording.

Video comes from the relay; its first item is read before the response starts, so an
early failure (unknown session, bad `from`) becomes a proper HTTP error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import ray
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from deployments.http.base import FrontDoorBase
from deployments.http.errors import WS_FRAME_TOO_LARGE, field_of, ws_close_code
from deployments.http.files import file_prefix_response
from deployments.http.middleware import too_large
from deployments.http.params import MAX_COUNT, parse_count
from deployments.http.schemas import AFTER_READING, CommandRequest, error_responses
from deployments.http.stall import StallGuardedStreamingResponse
from deployments.naming import is_valid_session_id
from deployments.protocol import (
    InvalidField,
    LimitExceeded,
    MessageBatch,
    RecordingNotFound,
    RecordingUnavailable,
    RelayUnavailable,
    ServeError,
    SessionRecord,
    SessionStatus,
    StreamEnded,
    cause_of,
)
from deployments.watchdog import PING_TIMEOUT_S
from helios.media.formats import FORMATS, media_type
from helios.media.framing import pack_interrupted
from helios.media.recording import stored_playable_length
from helios.media.skipforward import skip_forward
from helios.runtime.messages import Message, ack_message, error_message, event_message

logger = logging.getLogger(__name__)

POLL_S = 10.0
"""Long-poll window of SSE/WS against the session actor (a keep-alive goes out after each empty one)."""
END_REASON_WAIT_S = 120.0
"""How long a reader whose session actor is gone waits for the registry to say why the session ended."""
STREAM_MEDIA = {fmt: media_type(fmt) for fmt in FORMATS}

router = APIRouter()


def _sse(seq: int, message: Message) -> bytes:
    return f"id: {seq}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _maybe_id(text: str) -> str | None:
    """The `id` of a WebSocket frame that failed validation, when it has a usable one."""
    try:
        value = json.loads(text).get("id")
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        return None
    return value if isinstance(value, str) else None


def _relay_failed(what: str, exc: BaseException) -> ServeError:
    """A typed error the relay raised as it is, anything else as the relay being unavailable."""
    cause = cause_of(exc)
    if isinstance(cause, ServeError):
        return cause
    text = str(cause).splitlines()[-1] if str(cause) else ""
    return RelayUnavailable(f"{what}: relay failed ({type(cause).__name__}: {text})", field=what)


class StreamRoutes(FrontDoorBase):
    """GET .../events (SSE), WS .../ws, GET .../stream, GET .../recording.mp4."""

    async def _messages(self, rec: SessionRecord, after: int) -> AsyncIterator[tuple[int, Message] | None]:
        """Protocol messages after `after` until session_ended; None items are keep-alive ticks."""
        actor = await self._actor(rec.actor_name) if rec.status is not SessionStatus.ENDED else None
        while actor is not None:
            try:
                out: MessageBatch = await actor.wait_messages.remote(after, POLL_S)
            except ray.exceptions.RayActorError:
                self._actors.forget(rec.actor_name)
                break
            if not out.messages:
                if out.complete:
                    return
                yield None
            for item in out.messages:
                after = item.seq
                yield after, item.message
                if item.message.get("data", {}).get("event") == "session_ended":
                    return
        # Actor gone (or the session ended before it started): say so, once, with the registry's reason.
        # For an actor that died that is the watchdog's, which concludes within a round or two of
        # `watchdog_period_s`, far later on a loaded machine: the reader is kept (keep-alive ticks)
        # while it waits, up to END_REASON_WAIT_S, so the client learns why rather than a bare "ended".
        fresh = None
        if is_valid_session_id(rec.session_id):
            round_s = 2 * self.config.watchdog_period_s + PING_TIMEOUT_S
            deadline = time.monotonic() + END_REASON_WAIT_S
            while True:
                fresh = await self.registry.wait_ended.remote(rec.session_id, round_s)
                if fresh is None or fresh.status is SessionStatus.ENDED or time.monotonic() >= deadline:
                    break
                yield None
        fresh = fresh or rec
        yield after + 1, event_message("session_ended", reason=fresh.end_reason or "ended")

    @router.get(
        "/v1/sessions/{session_id}/events",
        operation_id="session_events",
        responses={200: {"content": {"text/event-stream": {}}, "links": AFTER_READING}, **error_responses(401, 404, 422, 429)},
    )
    async def events(self, request: Request, session_id: str, after: int = Query(0, ge=0, le=MAX_COUNT)) -> StreamingResponse:
        """Server-sent events: one protocol message per `data:` line; resumes after `Last-Event-ID`."""
        last = request.headers.get("last-event-id")
        if last is not None:
            after = max(after, parse_count(last, "Last-Event-ID"))
        rec, _ = await self._readable(request, session_id)
        lease = await self._open_reader(rec, "events")
        try:
            rec = await self._wait_active(rec)
        except BaseException:
            lease.release()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for item in self._messages(rec, after):
                    yield b": keep-alive\n\n" if item is None else _sse(*item)
            finally:
                lease.release()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.websocket("/v1/sessions/{session_id}/ws")
    async def ws(self, websocket: WebSocket, session_id: str) -> None:
        """Command objects in (JSON text frames), protocol messages out (acks included). Viewer tokens are read-only."""
        try:
            after = parse_count(websocket.query_params.get("after", "0") or "0", "after")
            rec, owner = await self._readable(websocket, session_id)
        except ServeError as exc:
            await websocket.close(code=ws_close_code(exc), reason=exc.detail[:120])
            return
        try:
            lease = await self._open_reader(rec, "events")
        except LimitExceeded as exc:  # accepted, then closed with 4429 and the limit's name: a client can tell why
            cause = cause_of(exc)
            await websocket.accept()
            await websocket.close(code=ws_close_code(cause), reason=f"{cause.limit}: {cause.detail}"[:120])
            return
        try:
            await websocket.accept()
            await self._ws_session(websocket, rec, owner, after)  # queued: set-up commands are kept until admission
        finally:
            lease.release()

    async def _ws_session(self, websocket: WebSocket, rec: SessionRecord, owner: bool, after: int) -> None:
        """Pump messages out and commands in until either side ends (a frame over `max_body_bytes` closes 1009).

        Acks go out in the order the commands came in: a session's own ack travels through its
        message log, so a refusal answered here (a frame the schema rejects, the command rate)
        waits until the socket has sent the log up to the acks of every earlier command.
        """
        limit = self.config.max_body_bytes
        current = [rec]
        """The record commands go by: queued until pump_out sees the admission (set-up commands are kept meanwhile)."""
        sent_seq = [after]
        """The log sequence number of the last message this socket sent."""
        log_owes = [False]
        """True while an earlier command's ack may be in the log and not yet sent on this socket."""
        moved = asyncio.Condition()
        out_done = [False]

        async def send(message: Message) -> None:
            await websocket.send_text(json.dumps(message))

        async def pump_out() -> None:
            try:
                current[0] = await self._wait_active(current[0])
                async for item in self._messages(current[0], after):
                    if item is not None:
                        await send(item[1])
                        async with moved:
                            sent_seq[0] = item[0]
                            moved.notify_all()
                await websocket.close(code=1000, reason="session ended")
            finally:
                async with moved:
                    out_done[0] = True
                    moved.notify_all()

        async def refuse(cmd_id: str | None, detail: str) -> None:
            """A refusal the session never saw, shaped like its own: an `error` event, then the failed ack."""
            if log_owes[0]:
                seq = await self._log_seq(current[0])
                async with moved:
                    try:
                        await asyncio.wait_for(moved.wait_for(lambda: sent_seq[0] >= seq or out_done[0]),
                                               self.config.command_timeout_s)
                    except TimeoutError:  # a reader this slow is disconnected by its own send; answer anyway
                        logger.info("ws of %s: refusal sent before the log caught up (seq %d)", rec.session_id, seq)
                log_owes[0] = False
            await send(error_message(detail))
            await send(ack_message(cmd_id, False, detail))

        async def pump_in() -> None:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                text, data = frame.get("text"), frame.get("bytes")
                if len(text.encode() if text is not None else data or b"") > limit:
                    exc = too_large(limit, "WebSocket frame")
                    await websocket.close(code=WS_FRAME_TOO_LARGE, reason=exc.detail[:120])
                    return
                if text is None:
                    await refuse(None, "message: send commands as JSON text frames, not binary frames")
                    continue
                try:
                    cmd = CommandRequest.model_validate_json(text).model_dump()
                except ValidationError as exc:
                    err = exc.errors()[0]
                    await refuse(_maybe_id(text), f"{field_of(err.get('loc', ())) or 'message'}: {err.get('msg')}")
                    continue
                if not owner:
                    await refuse(cmd.get("id"), "token: a viewer token is read-only; use an API key to send commands")
                    continue
                try:
                    ack = await self._run_command(current[0], cmd)  # a session's own ack arrives through the message log
                    if ack.get("queued"):  # kept for admission: say so here, the real ack follows on the log
                        await send({"type": "ack", "data": ack})
                    else:
                        log_owes[0] = True
                except ServeError as exc:  # refused before the session saw it: answer on this socket only
                    await refuse(cmd.get("id"), cause_of(exc).detail)  # an actor's error arrives wrapped by Ray

        tasks = [asyncio.ensure_future(pump_out()), asyncio.ensure_future(pump_in())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except WebSocketDisconnect:
            pass  # the client left: nothing to answer
        finally:
            for t in tasks:
                t.cancel()

    async def _log_seq(self, rec: SessionRecord) -> int:
        """The sequence number of the last message in the session's log (0 when its actor is gone)."""
        actor = await self._actor(rec.actor_name) if rec.status is not SessionStatus.ENDED else None
        if actor is None:
            return 0
        try:
            return int(await actor.log_seq.remote())
        except ray.exceptions.RayActorError:
            return 0

    @router.get(
        "/v1/sessions/{session_id}/stream",
        operation_id="session_stream",
        responses={
            200: {"content": {v: {} for v in STREAM_MEDIA.values()}, "links": AFTER_READING},
            **error_responses(401, 404, 410, 422, 429, 503),
        },
    )
    async def stream(
        self,
        request: Request,
        session_id: str,
        format: str = Query("mp4", description="mjpeg | mp4 | msgpack"),
        from_: int | None = Query(None, alias="from", ge=0, le=MAX_COUNT, description="First chunk (default: the live edge)"),
    ) -> StreamingResponse:
        """Live video for any number of viewers, fanned out by the relay."""
        if format not in STREAM_MEDIA:
            raise InvalidField(f"format: {format!r} is not one of {sorted(STREAM_MEDIA)}", field="format")
        rec, _ = await self._readable(request, session_id)
        if rec.status is SessionStatus.ENDED and await self._lingering_actor(rec) is None:
            raise StreamEnded(f"session_id: session has ended ({rec.end_reason}); see recording.mp4", end_reason=rec.end_reason)
        lease = await self._open_reader(rec, "stream")
        try:
            rec = await self._wait_active(rec)
            gen = self.relay.options(stream=True).stream.remote(session_id, format, from_)
            try:
                first = await gen.__anext__()
            except StopAsyncIteration:
                raise StreamEnded("session_id: session has ended") from None
            except Exception as exc:  # noqa: BLE001 - early relay failure → a typed HTTP error, not a broken stream
                self.metrics.errors.labels("stream").inc()
                raise _relay_failed("stream", exc) from None
        except BaseException:
            lease.release()
            raise

        async def pieces() -> AsyncIterator[bytes]:
            yield first
            async for piece in gen:
                yield piece

        async def body() -> AsyncIterator[bytes]:
            # Bounded buffering per viewer: a slow client is skipped forward, never slows the others.
            try:
                async for piece in skip_forward(pieces(), format):
                    yield bytes(piece)
            except Exception as exc:  # noqa: BLE001 - the relay failed mid-stream (its replica died): say so
                self.metrics.errors.labels("stream").inc()
                logger.warning("stream of %s ended with %s", session_id, exc)
                if format == "msgpack":  # the one format with a place for it; the session goes on: resume with from=
                    yield pack_interrupted(f"relay_unavailable: {type(cause_of(exc)).__name__}")
            finally:
                gen.cancel()
                lease.release()

        return StallGuardedStreamingResponse(
            body(), media_type=STREAM_MEDIA[format], headers={"Cache-Control": "no-cache"},
            stall_timeout_s=self.config.viewer_stall_timeout_s, label=f"{format} viewer of {session_id}",
        )

    @router.get(
        "/v1/sessions/{session_id}/recording.mp4",
        operation_id="session_recording",
        responses={
            200: {"content": {"video/mp4": {}}},
            206: {"content": {"video/mp4": {}}, "description": "The one byte range asked for"},
            **error_responses(401, 404, 416, 422, 503),
        },
    )
    async def recording(self, request: Request, session_id: str) -> Response:
        """The session's recording so far: whole fragments only while it grows (a playable prefix with its
        own Content-Length), complete once the session has ended; one byte range honoured."""
        await self._readable(request, session_id)
        # Read from recording_uri directly (shared storage in a cluster): no call to the relay that wrote it.
        try:
            length = await asyncio.to_thread(stored_playable_length, self.recordings, session_id)
        except OSError as exc:  # the store is down or refuses us: a 503 naming it, not a 500
            raise RecordingUnavailable(f"recording: the recording store {self.recordings!r} failed: {exc}", retry_after_s=self.config.retry_after_s) from None
        if not length:
            raise RecordingNotFound(
                f"recording: no recording for session {session_id!r} (not started yet, not uploaded yet on an object store, "
                "or deleted after recording_retention_s)"
            )
        return file_prefix_response(
            lambda: self.recordings.open(session_id), length, "video/mp4", f"{session_id}.mp4", request.headers.get("range")
        )
