"""The served app the serving benchmarks flood: a local Ray cluster, `serve.run(build_app(...))`, one session.

Test-pattern model only (no model time), one tenant with `KEY`, default limits.
Benchmarks run as scripts (`python bench/x.py`), so they import this module by name.
"""

from __future__ import annotations

import argparse
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


CPU_CLUSTER = {"num_cpus": 4, "object_store_memory": 256 * 1024**2}
"""Resources of the local cluster on a CPU-only machine (the benchmarks share it with other work)."""


@contextmanager
def local_cluster(**init) -> Iterator[None]:
    """A local Ray cluster (`ray.init(**init)`, no dashboard); Serve and Ray are shut down on exit."""
    import ray
    from ray import serve

    from deployments.local_ray import start_local_ray

    start_local_ray(tries=5, **{"address": "local", **init}, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@contextmanager
def served_app(port: int) -> Iterator[tuple[str, httpx.Client]]:
    """(base URL, an HTTP client with the bench key) of the app served on `port`; shut down on exit."""
    from ray import serve

    from deployments.app import build_app

    with local_cluster(**CPU_CLUSTER):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config()), name="helios", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            yield base, http


def bench_args(**defaults) -> argparse.Namespace:
    """The command line of a served benchmark: one `--name` option per keyword, typed and defaulted by its value."""
    ap = argparse.ArgumentParser()
    for name, default in defaults.items():
        ap.add_argument(f"--{name}", type=type(default), default=default)
    return ap.parse_args()


def active_session(http: httpx.Client, model: str, headers: dict[str, str], poll_s: float) -> dict:
    """Create a session of `model` (seed 1) and poll every `poll_s` until it is active (it may be queued first): its body."""
    r = http.post("/v1/sessions", json={"model": model, "seed": 1}, headers=headers)
    r.raise_for_status()
    body = r.json()
    while body["status"] != "active":
        time.sleep(poll_s)
        body = {**body, **http.get(f"/v1/sessions/{body['session_id']}", headers=headers).json()}
    return body


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
