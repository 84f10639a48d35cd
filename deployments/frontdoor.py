"""The front door: a stateless FastAPI ingress that authenticates, validates, admits and routes.

Every piece of state lives elsewhere (sessions in their actors, admission in the
registry), so replicas can restart or scale without dropping a session. Streams are
forwarded from the relay; the first item is read before the response starts so an
early failure becomes a proper HTTP error.
"""



import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from fastapi import FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.auth import Authenticator, bearer_key, token_matches
from deployments.config import ServingConfig
from deployments.http_models import (
    Ack,
    CommandRequest,
    CreateSessionRequest,
    Health,
    ModelInfo,
    SessionCreated,
    SessionDeleted,
    SessionInfo,
    SessionUrls,
)
from deployments.metrics import FrontDoorMetrics
from deployments.naming import NAMESPACE, is_valid_session_id
from deployments.registry import get_or_create_registry
from helios.media.formats import FORMATS, media_type

logger = logging.getLogger(__name__)

REPO_WEB = Path(__file__).resolve().parents[1] / "web"
POLL_S = 10.0
"""Long-poll window of SSE/WS against the session actor (a keep-alive goes out after each empty one)."""
STREAM_MEDIA = {fmt: media_type(fmt) for fmt in FORMATS}
_LIMITS = {"max_body_bytes": 256 * 1024}

app = FastAPI(
    title="Helios Serve",
    version="0.1.0",
    description="Real-time, controllable Helios video streams for many tenants. Auth: `Authorization: Bearer <api key>`.",
)


# ---- errors: always {"detail": "<message naming the field>"} -------------------------------
def _loc(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")] or [str(loc[0]) if loc else "body"]
    return ".".join(parts)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    msgs = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}) or {}
            msgs.append(f"body: malformed JSON ({ctx.get('error', 'decode error')})")
        elif err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
            msgs.append("body: a JSON object is required")
        else:
            msgs.append(f"{_loc(err.get('loc', ()))}: {err.get('msg')}")
    return JSONResponse({"detail": "; ".join(msgs)}, status_code=422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


class BodyLimit:
    """ASGI middleware: bodies over the limit get 413 before any handler parses them."""

    def __init__(self, app_):
        self.app = app_

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _LIMITS["max_body_bytes"]
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await _send_413(send, limit)
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
            return await _send_413(send, limit)


class _TooLarge(Exception):
    pass


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"body: request body over the {limit}-byte limit"}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


app.add_middleware(BodyLimit)


def _urls(sid: str, token: str) -> SessionUrls:
    base = f"/v1/sessions/{sid}"
    q = f"token={token}"
    return SessionUrls(
        self=base,
        commands=f"{base}/commands",
        events=f"{base}/events?{q}",
        ws=f"{base}/ws",
        stream_mp4=f"{base}/stream?format=mp4&{q}",
        stream_mjpeg=f"{base}/stream?format=mjpeg&{q}",
        stream_msgpack=f"{base}/stream?format=msgpack&{q}",
        recording=f"{base}/recording.mp4?{q}",
        player=f"/?session={sid}&{q}",
    )


def _sse(seq: int, message: dict) -> bytes:
    return f"id: {seq}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


# Module helpers used by routes must be defined before the class: serve.ingress
# captures the app while the class body runs.
def _maybe_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("id")
        return value if isinstance(value, str) else None
    except Exception:  # noqa: BLE001
        return None


def _relay_error(exc: Exception) -> HTTPException:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).splitlines()[-1] if str(cause) else type(cause).__name__
    if isinstance(cause, KeyError) or "not found" in text.lower() or "no session" in text.lower():
        return HTTPException(404, f"session_id: {text}")
    if isinstance(cause, ValueError):
        return HTTPException(422, text)
    return HTTPException(503, f"stream: relay failed ({text})")


@serve.deployment
@serve.ingress(app)
class FrontDoor:
    """HTTP API of docs/CONTRACTS.md section 4."""

    def __init__(self, config: ServingConfig, relay: Any = None):
        self.config = config
        _LIMITS["max_body_bytes"] = config.max_body_bytes
        self.auth = Authenticator(config.key_table())
        self.relay = relay
        self.metrics = FrontDoorMetrics()
        self.registry = get_or_create_registry(config)
        self.registry.ready.remote(watch_app=True)
        self.web_dir = Path(config.web_dir).expanduser() if config.web_dir else REPO_WEB
        self._actors: dict[str, Any] = {}

    # ---- helpers ---------------------------------------------------------------------------
    def _tenant(self, request: Request | WebSocket, *, allow_query: bool = False) -> str | None:
        key = bearer_key(request.headers.get("authorization"))
        if key is None and allow_query:
            key = request.query_params.get("token")
        return self.auth.tenant_of(key)

    def _require_tenant(self, request: Request) -> str:
        tenant = self._tenant(request)
        if tenant is None:
            has = request.headers.get("authorization")
            raise HTTPException(
                401,
                "authorization: wrong API key" if has else "authorization: missing 'Authorization: Bearer <api key>' header",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return tenant

    async def _record(self, sid: str) -> dict | None:
        if not is_valid_session_id(sid):
            return None
        return await self.registry.get_session.remote(sid)

    async def _owned(self, request: Request, sid: str) -> dict:
        """The record of a session owned by the caller's tenant (401 bad key, 404 unknown or foreign)."""
        tenant = self._require_tenant(request)
        rec = await self._record(sid)
        if rec is None or rec["tenant"] != tenant:
            raise HTTPException(404, f"session_id: no session {sid!r}")
        return rec

    async def _readable(self, request: Request | WebSocket, sid: str) -> tuple[dict, bool]:
        """(record, is_owner) for read-only routes: API key of the owner or the session's viewer token."""
        tenant = self._tenant(request, allow_query=True)
        token = request.query_params.get("token")
        if tenant is None and not token and not request.headers.get("authorization"):
            raise HTTPException(401, "authorization: send 'Authorization: Bearer <api key>' or ?token=<viewer token>",
                                headers={"WWW-Authenticate": "Bearer"})
        rec = await self._record(sid)
        if rec is None:
            raise HTTPException(404, f"session_id: no session {sid!r}")
        if tenant is not None:
            if rec["tenant"] != tenant:
                raise HTTPException(404, f"session_id: no session {sid!r}")
            return rec, True
        if token_matches(token, rec["viewer_token"]):
            return rec, False
        raise HTTPException(401, "token: wrong API key or viewer token", headers={"WWW-Authenticate": "Bearer"})

    def _actor(self, rec: dict) -> Any | None:
        name = rec["actor_name"]
        handle = self._actors.get(name)
        if handle is None:
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return None
            if len(self._actors) > 4096:
                self._actors.clear()
            self._actors[name] = handle
        return handle

    def _info(self, rec: dict, state: dict | None = None, owner: bool = True) -> SessionInfo:
        return SessionInfo(
            session_id=rec["session_id"],
            status=rec["status"],
            position=rec.get("position"),
            model=rec["model"],
            state=state or {},
            end_reason=rec.get("end_reason"),
            viewer_token=rec["viewer_token"] if owner else None,
            urls=_urls(rec["session_id"], rec["viewer_token"]),
        )

    # ---- sessions --------------------------------------------------------------------------
    @app.post(
        "/v1/sessions",
        status_code=201,
        response_model=SessionCreated,
        responses={202: {"model": SessionCreated, "description": "Queued"}, 429: {"description": "No capacity or over quota"}},
    )
    async def create_session(self, request: Request, body: CreateSessionRequest) -> Response:
        """Admit a session: 201 active, 202 queued (poll GET until active), 429 full or over quota."""
        tenant = self._require_tenant(request)
        model = body.model or self.config.default_model
        if model not in self.config.models:
            raise HTTPException(422, f"model: {model!r} is not offered; choose one of {sorted(self.config.models)}")
        out = await self.registry.create_session.remote(tenant, model, body.seed)
        retry = {"Retry-After": str(self.config.retry_after_s)}
        if out["status"] == "rejected":
            code = {"bad_model": 422, "shutting_down": 503}.get(out["reason"], 429)
            raise HTTPException(code, out["detail"], headers=retry if code != 422 else None)
        if out["status"] == "failed":
            self.metrics.errors.labels("session").inc()
            raise HTTPException(503, f"session could not start: {out['detail']}", headers=retry)
        rec = out["session"]
        created = SessionCreated(
            session_id=rec["session_id"],
            status=out["status"],
            position=out.get("position"),
            model=model,
            viewer_token=rec["viewer_token"],
            urls=_urls(rec["session_id"], rec["viewer_token"]),
        )
        if out["status"] == "queued":
            return JSONResponse(created.model_dump(), status_code=202, headers=retry)
        return JSONResponse(created.model_dump(), status_code=201)

    @app.get("/v1/sessions/{session_id}", response_model=SessionInfo)
    async def get_session(self, request: Request, session_id: str) -> SessionInfo:
        """Status, queue position, last state and end reason."""
        rec, owner = await self._readable(request, session_id)
        state = {}
        if rec["status"] == "active":
            actor = self._actor(rec)
            if actor is not None:
                try:
                    info = await asyncio.wait_for(actor.info.remote(), timeout=10)
                    state = info.get("state") or {}
                    if info.get("ended"):
                        # The actor knows first; the registry hears of the end a moment later.
                        rec = {**rec, "status": "ended", "end_reason": info.get("end_reason")}
                except Exception:  # noqa: BLE001 - ended between the two calls
                    rec = await self._record(session_id) or rec
        return self._info(rec, state, owner)

    @app.delete("/v1/sessions/{session_id}", response_model=SessionDeleted)
    async def delete_session(self, request: Request, session_id: str) -> SessionDeleted:
        """End the session (session_ended {reason: 'deleted'}) and free its shard group."""
        rec = await self._owned(request, session_id)
        out = await self.registry.end_session.remote(session_id, "deleted")
        return SessionDeleted(session_id=session_id, end_reason=(out or rec).get("end_reason"))

    @app.post("/v1/sessions/{session_id}/commands", response_model=Ack, responses={422: {"description": "Command refused"}})
    async def command(self, request: Request, session_id: str, body: CommandRequest) -> Response:
        """Run a command; 200 with the ack when ok, 422 with the ack when refused."""
        rec = await self._owned(request, session_id)
        ack = await self._run_command(rec, body.model_dump())
        if ack.get("ok"):
            return JSONResponse(Ack(**ack).model_dump())
        return JSONResponse({"detail": ack.get("error") or "command refused", "ack": ack}, status_code=422)

    async def _run_command(self, rec: dict, cmd: dict) -> dict:
        if rec["status"] == "queued":
            raise HTTPException(409, f"session_id: session is queued (position {rec.get('position')}); commands wait until it is active")
        actor = self._actor(rec) if rec["status"] != "ended" else None
        if actor is None:
            raise HTTPException(409, f"session_id: session has ended ({rec.get('end_reason')})")
        try:
            return await asyncio.wait_for(actor.command.remote(cmd, self.config.command_timeout_s), self.config.command_timeout_s + 5)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"command: no ack within {self.config.command_timeout_s:.0f}s") from None
        except ray.exceptions.RayActorError:
            raise HTTPException(409, "session_id: session has ended") from None

    # ---- messages: SSE and WebSocket ------------------------------------------------------
    async def _messages(self, rec: dict, after: int) -> AsyncIterator[tuple[int, dict] | None]:
        """Protocol messages after `after` until session_ended; None items are keep-alive ticks."""
        actor = self._actor(rec) if rec["status"] != "ended" else None
        while actor is not None:
            try:
                out = await actor.wait_messages.remote(after, POLL_S)
            except ray.exceptions.RayActorError:
                break
            if not out["messages"]:
                if out.get("complete"):
                    return
                yield None
            for item in out["messages"]:
                after = item["seq"]
                yield after, item["message"]
                if item["message"].get("data", {}).get("event") == "session_ended":
                    return
        # Actor gone (or the session ended before it started): say so, once.
        fresh = await self._record(rec["session_id"]) or rec
        yield after + 1, {"type": "event", "data": {"event": "session_ended", "reason": fresh.get("end_reason") or "ended"}}

    @app.get("/v1/sessions/{session_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
    async def events(self, request: Request, session_id: str, after: int = Query(0, ge=0)) -> StreamingResponse:
        """Server-sent events: one protocol message per `data:` line; resumes after `Last-Event-ID`."""
        rec, _ = await self._readable(request, session_id)
        last = request.headers.get("last-event-id")
        if last is not None:
            if not last.strip().isdigit():
                raise HTTPException(422, "Last-Event-ID: must be a non-negative integer")
            after = max(after, int(last))
        if rec["status"] == "queued":
            rec = await self._wait_active(rec, request)

        async def body() -> AsyncIterator[bytes]:
            async for item in self._messages(rec, after):
                yield b": keep-alive\n\n" if item is None else _sse(*item)

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _wait_active(self, rec: dict, request: Request | WebSocket) -> dict:
        """Hold a reader of a queued session until it is admitted (or ends)."""
        while rec["status"] == "queued":
            await asyncio.sleep(0.5)
            rec = await self._record(rec["session_id"]) or {**rec, "status": "ended"}
        return rec

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def ws(self, websocket: WebSocket, session_id: str) -> None:
        """Command objects in (JSON text frames), protocol messages out (acks included). Viewer tokens are read-only."""
        try:
            rec, owner = await self._readable(websocket, session_id)
        except HTTPException as exc:
            await websocket.close(code=4401 if exc.status_code == 401 else 4404, reason=str(exc.detail)[:120])
            return
        await websocket.accept()
        rec = await self._wait_active(rec, websocket)
        after = int(websocket.query_params.get("after", "0") or 0) if (websocket.query_params.get("after", "0") or "0").isdigit() else 0

        async def pump_out() -> None:
            async for item in self._messages(rec, after):
                if item is not None:
                    await websocket.send_text(json.dumps(item[1]))
            await websocket.close(code=1000, reason="session ended")

        async def pump_in() -> None:
            while True:
                text = await websocket.receive_text()
                try:
                    cmd = CommandRequest.model_validate_json(text).model_dump()
                except ValidationError as exc:
                    err = exc.errors()[0]
                    await websocket.send_text(json.dumps({"type": "ack", "data": {
                        "id": _maybe_id(text), "ok": False, "error": f"{_loc(err.get('loc', ())) or 'message'}: {err.get('msg')}", "result": None}}))
                    continue
                if not owner:
                    await websocket.send_text(json.dumps({"type": "ack", "data": {
                        "id": cmd.get("id"), "ok": False, "error": "token: a viewer token is read-only; use an API key to send commands", "result": None}}))
                    continue
                try:
                    await self._run_command(rec, cmd)  # the ack itself arrives through the message log
                except HTTPException as exc:
                    await websocket.send_text(json.dumps({"type": "ack", "data": {"id": cmd.get("id"), "ok": False, "error": exc.detail, "result": None}}))

        tasks = [asyncio.ensure_future(pump_out()), asyncio.ensure_future(pump_in())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except WebSocketDisconnect:
            pass
        finally:
            for t in tasks:
                t.cancel()

    # ---- video ---------------------------------------------------------------------------------
    @app.get("/v1/sessions/{session_id}/stream", responses={200: {"content": {v: {} for v in STREAM_MEDIA.values()}}})
    async def stream(
        self,
        request: Request,
        session_id: str,
        format: str = Query("mp4", description="mjpeg | mp4 | msgpack"),
        from_: int | None = Query(None, alias="from", ge=0, description="First chunk (default: the live edge)"),
    ) -> StreamingResponse:
        """Live video for any number of viewers, fanned out by the relay."""
        if format not in STREAM_MEDIA:
            raise HTTPException(422, f"format: {format!r} is not one of {sorted(STREAM_MEDIA)}")
        rec, _ = await self._readable(request, session_id)
        if rec["status"] == "ended" and self._actor(rec) is None:
            raise HTTPException(410, f"session_id: session has ended ({rec.get('end_reason')}); see recording.mp4")
        if self.relay is None:
            raise HTTPException(503, "stream: no relay deployed")
        if rec["status"] == "queued":
            rec = await self._wait_active(rec, request)
        gen = self.relay.options(stream=True).stream.remote(session_id, format, from_)
        try:
            first = await gen.__anext__()
        except StopAsyncIteration:
            raise HTTPException(410, "session_id: session has ended") from None
        except Exception as exc:  # noqa: BLE001 - early relay failure → HTTP error, not a broken stream
            self.metrics.errors.labels("stream").inc()
            raise _relay_error(exc) from None

        async def pieces() -> AsyncIterator[bytes]:
            yield first
            async for piece in gen:
                yield piece

        async def body() -> AsyncIterator[bytes]:
            # Bounded buffering per viewer: a slow client is skipped forward, never slows the others.
            from helios.media.skipforward import skip_forward

            try:
                async for piece in skip_forward(pieces(), format):
                    yield bytes(piece)
            except Exception as exc:  # noqa: BLE001 - the viewer sees the stream end; log why
                self.metrics.errors.labels("stream").inc()
                logger.warning("stream of %s ended with %s", session_id, exc)
            finally:
                if hasattr(gen, "cancel"):
                    gen.cancel()

        return StreamingResponse(body(), media_type=STREAM_MEDIA[format], headers={"Cache-Control": "no-cache"})

    @app.get("/v1/sessions/{session_id}/recording.mp4", responses={200: {"content": {"video/mp4": {}}}})
    async def recording(self, request: Request, session_id: str) -> Response:
        """The session's recording so far (complete once the session has ended)."""
        await self._readable(request, session_id)
        if self.relay is None:
            raise HTTPException(503, "recording: no relay deployed")
        try:
            path = await self.relay.recording_path.remote(session_id)
        except Exception as exc:  # noqa: BLE001
            raise _relay_error(exc) from None
        if not path or not Path(path).is_file():
            raise HTTPException(404, f"recording: no recording for session {session_id!r} yet")
        return FileResponse(path, media_type="video/mp4", filename=f"{session_id}.mp4")

    # ---- service ---------------------------------------------------------------------------------
    @app.get("/v1/models", response_model=list[ModelInfo])
    async def models(self) -> list[ModelInfo]:
        """Models a session can ask for, with free capacity."""
        stats = await self.registry.stats.remote()
        return [
            ModelInfo(name=n, kind=s.kind, tp_size=s.tp_size, pool_size=s.pool_size, device=s.device, description=s.description,
                      free=stats["models"][n]["free"], queued=stats["models"][n]["queued"])
            for n, s in self.config.models.items()
        ]

    @app.get("/healthz", response_model=Health)
    async def healthz(self) -> JSONResponse:
        """'ok' when the registry answers and every model has or is building capacity."""
        try:
            stats = await asyncio.wait_for(self.registry.stats.remote(), timeout=5)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"status": "degraded", "models": {}, "detail": f"registry: {exc}"}, status_code=503)
        models = stats["models"]
        ok = all(m["free"] + m["leased"] + m["building"] > 0 for m in models.values()) and not stats["shutting_down"]
        return JSONResponse(Health(status="ok" if ok else "degraded", models=models).model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        """Prometheus text format."""
        stats = await self.registry.stats.remote()
        infos = []
        active = [sid for sid, s in stats["sessions"].items() if s["status"] == "active"][:200]
        for sid in active:
            actor = self._actor({"actor_name": f"helios-session-{sid}"})
            if actor is not None:
                infos.append(actor.info.remote())
        results = await asyncio.gather(*infos, return_exceptions=True)
        if self.relay is not None:
            try:
                self.metrics.observe_relay(await asyncio.wait_for(self.relay.stats.remote(), timeout=5))
            except Exception as exc:  # noqa: BLE001 - metrics must render without the relay
                logger.info("relay stats unavailable: %s", exc)
        text = self.metrics.render(stats, [r for r in results if isinstance(r, dict)])
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def index(self) -> Response:
        page = self.web_dir / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return JSONResponse({"detail": "no player page installed (web/index.html)", "docs": "/docs"}, status_code=404)

    @app.get("/static/{path:path}", include_in_schema=False)
    async def static(self, path: str) -> Response:
        root = self.web_dir.resolve()
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            raise HTTPException(404, f"path: no static file {path!r}")
        return FileResponse(target)

