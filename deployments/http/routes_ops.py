"""Operations routes: models offered, liveness and readiness, Prometheus metrics, and the player page.

Liveness (`/healthz`) says the process and its registry answer; readiness (`/readyz`)
says a session would be admitted now: every configured model has at least one warm
shard group (docs/serving.md#readiness).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import ray
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from deployments.http.base import FrontDoorBase
from deployments.http.schemas import Health, ModelInfo, Readiness
from deployments.naming import session_actor_name
from deployments.protocol import InvalidPath, NotFound, SessionStats
from deployments.protocol_pool import RegistryStats

logger = logging.getLogger(__name__)

OPS_TIMEOUT_S = 5.0
"""Longest wait for the registry (healthz) or the relay (metrics)."""
METRICS_SESSIONS = 200
"""Active sessions whose actors /metrics asks for their numbers."""

router = APIRouter()


class OpsRoutes(FrontDoorBase):
    """GET /v1/models, /healthz, /metrics, / and /static/..."""

    @router.get("/v1/models", response_model=list[ModelInfo])
    async def models(self) -> list[ModelInfo]:
        """Models a session can ask for, with free capacity."""
        stats: RegistryStats = await self.registry.stats.remote()
        return [
            ModelInfo(name=n, kind=s.kind, tp_size=s.tp_size, pool_size=s.pool_size, device=s.device, description=s.description,
                      free=stats["models"][n]["free"], queued=stats["models"][n]["queued"])
            for n, s in self.config.models.items()
        ]

    @router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Degraded"}})
    async def healthz(self) -> JSONResponse:
        """Liveness: 'ok' when the registry answers and every model has or is building capacity; `ready` as /readyz."""
        try:
            stats: RegistryStats = await asyncio.wait_for(self.registry.stats.remote(), timeout=OPS_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            return JSONResponse({"status": "degraded", "ready": False, "models": {}, "detail": f"registry: {exc}"}, status_code=503)
        models = stats["models"]
        ok = all(m["free"] + m["leased"] + m["building"] > 0 for m in models.values()) and not stats["shutting_down"]
        body = Health(status="ok" if ok else "degraded", ready=stats["ready"], models=models)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}})
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 once every model has at least one warm shard group, else 503 naming the models that have none."""
        try:
            stats: RegistryStats = await asyncio.wait_for(self.registry.stats.remote(), timeout=OPS_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            body = Readiness(ready=False, detail=f"registry: not answering ({type(exc).__name__})")
            return JSONResponse(body.model_dump(), status_code=503)
        models = stats["models"]
        if stats["shutting_down"]:
            body = Readiness(ready=False, models=models, not_ready=sorted(models), detail="server: shutting down")
        else:
            waiting = sorted(m for m, p in models.items() if not p["ready"])
            detail = None
            if waiting:
                detail = "models: no warm shard group yet for " + ", ".join(
                    f"{m} ({models[m]['building']} building" + (f", last error: {models[m]['last_error']}" if models[m]["last_error"] else "") + ")"
                    for m in waiting
                )
            body = Readiness(ready=stats["ready"], models=models, not_ready=waiting, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    async def _scrape(self) -> bytes:
        """One scrape's worth of calls (registry, each active session, relay): run at most once per `metrics_cache_s`."""
        stats: RegistryStats = await self.registry.stats.remote()
        active = [sid for sid, s in stats["sessions"].items() if s["status"] == "active"][:METRICS_SESSIONS]
        actors = await asyncio.gather(*(self._actor(session_actor_name(sid)) for sid in active))
        calls = [actor.info.remote() for actor in actors if actor is not None]
        results = await asyncio.gather(*calls, return_exceptions=True)  # a session that just ended is left out
        try:
            self.metrics.observe_relay(await asyncio.wait_for(self.relay.stats.remote(), timeout=OPS_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - metrics must render without the relay
            logger.info("relay stats unavailable: %s", exc)
        return self.metrics.render(stats, [r for r in results if isinstance(r, SessionStats)])

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(self) -> Response:
        """Prometheus text format; no tenant names or session ids; numbers at most `metrics_cache_s` old."""
        return Response(await self.metrics_cache.get(), media_type="text/plain; version=0.0.4")

    @router.get("/", include_in_schema=False)
    async def index(self) -> Response:
        page = self.web_dir / "index.html"
        if not page.is_file():
            raise NotFound("path: no player page installed (web/index.html); the API is documented at /docs")
        return FileResponse(page, media_type="text/html")

    @router.get("/static/{path:path}", include_in_schema=False)
    async def static(self, path: str) -> Response:
        target = static_file(self.web_dir, path)
        if target is None:
            raise NotFound(f"path: no static file {path[:100]!r}")
        return FileResponse(target)


STATIC_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}){0,7}")
"""What a static path may be: up to 8 segments of letters, digits, '.', '_', '-', none starting with '.'."""


def static_file(root: Path, path: str) -> Path | None:
    """The file under `root` that `path` names, None when there is none; InvalidPath for a malformed path.

    Checked before the path touches the file system: NUL and control characters (a 500
    from `resolve()` before), `..`, absolute paths, backslashes, `%`-escapes left after
    decoding (double encoding), dot-files and non-ASCII are refused outright.
    """
    if not STATIC_PATH.fullmatch(path):
        raise InvalidPath(
            f"path: {path[:100]!r} is not a static file name (letters, digits, '.', '_', '-' and '/' only; no '..', no dot-files)"
        )
    base = root.resolve()
    target = (base / path).resolve()
    if base not in target.parents or not target.is_file():
        return None
    return target
