"""One real Helios Serve app on the shared local Ray cluster, for the client and web tests.

Both tests/client and tests/web load this module under one name, so the app is deployed
once per pytest session (and redeployed if another area's tests replaced it meanwhile).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

API_KEY = "hs-clients-test-key"
APP_NAME = "helios-clients"


@dataclass
class LiveServer:
    url: str
    api_key: str


_server: LiveServer | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5)
        return r.status_code == 200 and any(m.get("name") == "test-pattern" for m in r.json())
    except (httpx.HTTPError, ValueError):
        return False


def _http_port(serve) -> int | None:
    """The port of an already running Serve HTTP proxy (another fixture may have started Serve)."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            return None
        return int(client.http_config.port)
    except Exception:  # noqa: BLE001 - private API moved: fall back to starting our own
        return None


def live_server(tiny_pipeline_dir: Path, cache_dir: Path) -> LiveServer:
    """Deploy (once) the real app with test-pattern and helios-tiny; → its URL and API key."""
    global _server
    if _server is not None and _healthy(_server.url):
        return _server
    from ray import serve

    from deployments.app import build_app
    from deployments.config import ServingConfig

    port = _http_port(serve)
    if port is None:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = ServingConfig.model_validate({
        "app_name": APP_NAME,
        "models": {
            "test-pattern": {"kind": "test-pattern", "pool_size": 4, "lookahead": 1,
                             "description": "synthetic frames showing the prompt and chunk index"},
            "helios-tiny": {"kind": "helios", "path": str(tiny_pipeline_dir), "pool_size": 1, "tp_size": 1,
                            "description": "tiny random-weight Helios (CPU)"},
        },
        "default_model": "test-pattern",
        "tenants": [{"name": "clients-test", "api_keys": [API_KEY], "quota": {"max_concurrent_sessions": 8}}],
        "cache_dir": str(cache_dir),
        "idle_timeout_s": 60,
        "session_linger_s": 2,
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    _server = LiveServer(url=f"http://127.0.0.1:{port}", api_key=API_KEY)
    return _server
