"""One real Helios Serve app on the shared local Ray cluster, for the client and web tests.

It is the serving area's test app (tests/serve/conftest.py: same name, config, keys and
port), so whichever area's tests run first deploys it and the others reuse it when it
is already up. tests/client and tests/web load this module under one name, so it is
deployed at most once by them per pytest session.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

SERVE_CONFTEST = Path(__file__).resolve().parents[1] / "serve" / "conftest.py"


@dataclass
class LiveServer:
    url: str
    api_key: str


_server: LiveServer | None = None


def _serve_conftest():
    name = "helios_tests_serve_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVE_CONFTEST)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _ready(url: str, api_key: str) -> bool:
    """The app answers with our key and offers both models."""
    try:
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
        names = {m.get("name") for m in r.json()} if r.status_code == 200 else set()
        return {"test-pattern", "helios-tiny"} <= names
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def live_server(tiny_pipeline_dir: Path) -> LiveServer:
    """The serving tests' app (deployed here if it is not up yet); → its URL and an API key."""
    global _server
    serving = _serve_conftest()
    port = int(os.environ.get("HELIOS_TEST_PORT", "8765"))
    server = LiveServer(url=f"http://127.0.0.1:{port}", api_key=serving.KEYS["alice"])
    if _ready(server.url, server.api_key):
        _server = server
        return server
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.naming import NAMESPACE, registry_actor_name

    config = serving.serving_config(str(tiny_pipeline_dir))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=serving.APP_NAME, route_prefix="/")
    registry = ray.get_actor(registry_actor_name(serving.APP_NAME), namespace=NAMESPACE)
    stats = ray.get(registry.wait_warm.remote(240))
    assert all(m["free"] >= 1 for m in stats["models"].values()), stats
    _server = server
    return server
