"""The FastAPI app and `FrontDoor`, the stateless Serve ingress that serves it.

Every piece of state lives elsewhere (sessions in their actors, admission in the
registry), so replicas can restart or scale without dropping a session. The routes live
in one module per job; this one only assembles them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from deployments.auth import Authenticator
from deployments.config import ServingConfig
from deployments.http import routes_admin, routes_hls, routes_ops, routes_sessions, routes_streams
from deployments.http.errors import install_error_handlers
from deployments.http.hls_players import HlsPlayers
from deployments.http.last_states import LastStates
from deployments.http.headers import Cors, SecurityHeaders
from deployments.http.middleware import BodyLimit
from deployments.lookup import ActorCache, ResolvingHandle
from deployments.metrics import FrontDoorMetrics
from deployments.naming import NAMESPACE
from deployments.registry import get_or_create_registry
from deployments.stats_cache import TimedCache
from helios.media.storage import RecordingStorage

REPO_WEB = Path(__file__).resolve().parents[2] / "web"


def _replica_config() -> ServingConfig:
    """The serving replica's config (read per request by the middleware, never copied to a global)."""
    return serve.get_replica_context().servable_object.config


app = FastAPI(
    title="Helios Serve",
    version="0.1.0",
    description="Real-time, controllable Helios video streams for many tenants. Auth: `Authorization: Bearer <api key>`.",
)
install_error_handlers(app)
# Outermost last: security headers wrap everything (413s and preflights included), then CORS.
app.add_middleware(BodyLimit, limit_of=lambda: _replica_config().max_body_bytes)
app.add_middleware(Cors, origins_of=lambda: _replica_config().cors_allowed_origins)
app.add_middleware(SecurityHeaders)
for _routes in (routes_sessions, routes_streams, routes_hls, routes_ops, routes_admin):
    app.include_router(_routes.router)


@serve.deployment
@serve.ingress(app)
class FrontDoor(
    routes_sessions.SessionRoutes, routes_streams.StreamRoutes, routes_hls.HlsRoutes, routes_ops.OpsRoutes, routes_admin.AdminRoutes
):
    """HTTP API of docs/http-api.md."""

    def __init__(self, config: ServingConfig, relay: Any):
        self.config = config
        self.auth = Authenticator(config.digest_table())
        self.admin_auth = routes_admin.admin_authenticator(config.admin_digests())
        self.relay = relay
        self.metrics = FrontDoorMetrics()
        self.registry = ResolvingHandle(lambda: get_or_create_registry(config), "registry")
        self.registry.cast("ready", True)
        self.web_dir = Path(config.web_dir).expanduser() if config.web_dir else REPO_WEB
        self._actors = ActorCache(NAMESPACE)
        self.last_states = LastStates()
        self.hls_players = HlsPlayers()
        self.metrics_cache = TimedCache(self._scrape, config.metrics_cache_s)
        self.recordings = RecordingStorage(config.recording_uri)

    def memory_report(self, trim: bool = False, objects: bool = False, trace: bool = False) -> dict:
        """What this replica holds (helios.runtime.memdebug; docs/soak.md): a handle call, no HTTP route."""
        from helios.runtime.memdebug import memory_report

        from deployments.detached import loaded_actor_classes

        return {**memory_report(trim, objects, trace), "actor_classes": loaded_actor_classes(),
                "state": {"actor_cache": len(self._actors), "last_states": len(self.last_states), "hls_players": len(self.hls_players)}}
