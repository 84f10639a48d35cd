"""The served app the serving benchmarks flood: a local Ray cluster, `serve.run(build_app(...))`, one session.

Test-pattern model only (no model time), one tenant with `KEY`, default limits.
Benchmarks run as scripts (`python bench/x.py`), so they import this module by name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

KEY = "bench-key-0123456789"


def config():
    from deployments.config import ServingConfig

    return ServingConfig.model_validate({
        "app_name": "helios",
        "models": {"test-pattern": {"kind": "test-pattern", "pool_size": 1, "options": {"height": 64, "width": 64}}},
        "tenants": [{"name": "bench", "api_keys": [KEY]}],
        "front_door": {"num_cpus": 0.1, "autoscaling": None},
        "relay": {"num_cpus": 0.1, "autoscaling": None},
    })


@contextmanager
def served_app(port: int) -> Iterator[tuple[str, httpx.Client]]:
    """(base URL, an HTTP client with the bench key) of the app served on `port`; shut down on exit."""
    import ray
    from ray import serve

    from deployments.app import build_app

    ray.init(num_cpus=4, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config()), name="helios", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    try:
        yield base, http
    finally:
        http.close()
        serve.shutdown()
        ray.shutdown()


def started_session(http: httpx.Client, prompt: str) -> dict:
    """The creation answer of a running session (waits for the pool to warm up)."""
    for _ in range(240):  # the pool warms up in the background
        r = http.post("/v1/sessions", json={"model": "test-pattern"})
        if r.status_code == 201:
            break
        if r.status_code == 202:
            http.delete(f"/v1/sessions/{r.json()['session_id']}")
        time.sleep(0.5)
    body = r.json()
    sid = body["session_id"]
    http.post(f"/v1/sessions/{sid}/commands", json={"command": "set_prompt", "args": {"prompt": prompt}})
    http.post(f"/v1/sessions/{sid}/commands", json={"command": "start"})
    return body
