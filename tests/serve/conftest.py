"""One served Helios app for every serving test: the real `build_app`, tiny model at TP=2 on CPU.

Sizes are kept small for a 2-core machine: one helios-tiny pool of 2 groups x 2 ranks
(0.25 CPU each), a test-pattern pool of 2 slots with a queue of 1 (admission tests use
it: no model time), tenants with different quotas.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import DIRECT_INGRESS

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789", "carol": "carol-key-0123456789",
        "dave": "dave-key-0123456789", "fuzz": "fuzz-key-0123456789"}
ADMIN_KEY = "admin-key-0123456789"
"""The served test app's admin key (admin_keys): GET /v1/admin/..."""
APP_NAME = "helios"
MAX_VIEWERS = 8
VIEWER_STALL_TIMEOUT_S = 20.0
"""viewer_stall_timeout_s of the served test app (fires only under direct ingress: tests/serve/test_backpressure.py)."""
"""max_viewers_per_session of the served test app (small: a flood test needs only a few more)."""


def recording_folder(tiny_path: str) -> Path:
    """Where the served test app keeps recordings (its `recording_uri` is this folder as a file:// URL)."""
    return Path(tiny_path).parent / "recordings"


def serving_config(tiny_path: str):
    from deployments.config import ServingConfig

    return ServingConfig.model_validate(
        {
            "app_name": APP_NAME,
            "recording_uri": f"file://{recording_folder(tiny_path)}",
            "admin_keys": [ADMIN_KEY],
            "default_model": "helios-tiny",
            "models": {
                "helios-tiny": {"kind": "helios", "path": tiny_path, "tp_size": 2, "pool_size": 2, "cpus_per_worker": 0.25,
                                "options": {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}},
                "test-pattern": {"kind": "test-pattern", "pool_size": 2, "options": {"height": 64, "width": 96}},
            },
            "tenants": [
                {"name": "alice", "api_keys": [KEYS["alice"]], "quota": {"max_concurrent_sessions": 4}},
                {"name": "bob", "api_keys": [KEYS["bob"]],
                 "quota": {"max_concurrent_sessions": 1, "max_streams": 1, "max_event_streams": 1}},
                {"name": "carol", "api_keys": [KEYS["carol"]], "quota": {"max_concurrent_sessions": 2, "max_session_s": 4}},
                # 3 commands, then one per 100 s: the 4th is refused whatever the machine's speed.
                {"name": "dave", "api_keys": [KEYS["dave"]],
                 "quota": {"max_concurrent_sessions": 2, "command_rate": {"rate_per_s": 0.01, "burst": 3}}},
                # The API fuzzer's own tenant (tests/serve/test_api_fuzz.py): its sessions never count against another's quota.
                {"name": "fuzz", "api_keys": [KEYS["fuzz"]], "quota": {"max_concurrent_sessions": 2}},
            ],
            "queue_size": 1,
            "retry_after_s": 2,
            "idle_timeout_s": 90,
            "ring_size": 8,
            "session_linger_s": 2,
            "max_viewers_per_session": MAX_VIEWERS,
            "viewer_token_grace_s": 10,
            "viewer_stall_timeout_s": VIEWER_STALL_TIMEOUT_S,
            "front_door": {"num_cpus": 0.1, "autoscaling": None},
            "relay": {"num_cpus": 0.1, "autoscaling": None},
        }
    )


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    """Poll `predicate` until truthy (returns its value) or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


class TenantApi:
    """The session calls of a tenant over HTTP (`http` is the app's client; KEYS name the tenants)."""

    http: httpx.Client

    def headers(self, tenant: str = "alice") -> dict:
        return {"Authorization": f"Bearer {KEYS[tenant]}"}

    def create(self, tenant: str = "alice", **body) -> httpx.Response:
        return self.http.post("/v1/sessions", json=body, headers=self.headers(tenant))

    def command(self, sid: str, command: str, tenant: str = "alice", **args) -> httpx.Response:
        return self.http.post(f"/v1/sessions/{sid}/commands", json={"command": command, "args": args}, headers=self.headers(tenant))

    def get(self, sid: str, tenant: str = "alice") -> dict:
        r = self.http.get(f"/v1/sessions/{sid}", headers=self.headers(tenant))
        assert r.status_code == 200, r.text
        return r.json()

    def delete(self, sid: str, tenant: str = "alice") -> httpx.Response:
        return self.http.delete(f"/v1/sessions/{sid}", headers=self.headers(tenant))


class Served(TenantApi):
    """Handle on the running app: base URL, config, keys and helpers."""

    def __init__(self, base_url: str, config):
        self.base_url = base_url
        self.config = config
        self.keys = KEYS
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def admin_headers(self) -> dict:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def wait_active(self, sid: str, tenant: str = "alice", timeout: float = 120) -> dict:
        return wait_for(lambda: (s := self.get(sid, tenant))["status"] == "active" and s, timeout, f"session {sid} active")

    def registry(self):
        import ray

        from deployments.naming import NAMESPACE, registry_actor_name

        return ray.get_actor(registry_actor_name(APP_NAME), namespace=NAMESPACE)

    def stats(self) -> dict:
        import ray

        return ray.get(self.registry().stats.remote())

    def settle(self, timeout: float = 180) -> None:
        """End every session still known to the registry and wait until no slot is leased or queued.

        Tests share one app whose test-pattern pool has 2 slots and a queue of 1; a test that
        fills the pool must start from an idle one, not from what an earlier test left ending.
        """
        import ray

        for sid in self.stats()["sessions"]:
            ray.get(self.registry().end_session.remote(sid, "test_cleanup"))

        def idle() -> bool:
            stats = self.stats()
            return not stats["sessions"] and all(m["leased"] == 0 and m["queued"] == 0 for m in stats["models"].values())

        wait_for(idle, timeout, "every session ended and every slot given back")

    def wait_ready(self, timeout: float = 240) -> None:
        """Wait until the app is whole again after a fault: /readyz 200 and every pool and spare warm."""
        import ray

        def ready() -> bool:
            try:
                return self.http.get("/readyz", timeout=30).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "/readyz 200", poll=0.5)
        ray.get(self.registry().wait_warm.remote(timeout), timeout=timeout + 30)

    def assert_nothing_leaked(self, timeout: float = 180) -> float:
        """tests/serve/leaks.py against the baseline taken when the app was first warm; seconds it waited."""
        from tests.serve.leaks import assert_nothing_leaked

        return assert_nothing_leaked(self.baseline, timeout)

    def wait_free(self, model: str, slots: int, timeout: float = 180) -> None:
        """Wait until `model` has `slots` free slots and an empty queue (earlier sessions may still be ending)."""
        wait_for(lambda: (m := self.stats()["models"][model])["free"] >= slots and m["queued"] == 0, timeout,
                 f"{slots} free {model} slots")


def _haproxy_routes_to_replicas(port: int) -> bool:
    """True once HAProxy's generated config sends the app to a front-door replica's own port; until
    then it sends requests to Serve's fallback Python proxy, where `send` never blocks."""
    from deployments.ingress_env import direct_ingress_env

    base = Path(direct_ingress_env(port)["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    return any(f"SERVE_REPLICA_{APP_NAME}-" in cfg.read_text() for cfg in base.glob("*/haproxy.cfg"))


@pytest.fixture(scope="session")
def served(ray_cluster, tiny_pipeline_dir):
    """The real app (`build_app`) under `serve.run`, pools warm before the first test."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from deployments.app import build_app

    config = serving_config(str(tiny_pipeline_dir))
    port = int(os.environ.get("HELIOS_TEST_PORT", "8765"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    s = Served(f"http://127.0.0.1:{port}", config)
    stats = ray.get(s.registry().wait_warm.remote(240))
    if DIRECT_INGRESS:
        wait_for(lambda: _haproxy_routes_to_replicas(port), 120, "HAProxy routing to the front door's own HTTP server")
    assert all(m["free"] >= 1 for m in stats["models"].values()), stats
    s.settle()  # the client and browser tests may have used this app first
    from tests.serve.leaks import take_baseline

    s.baseline = take_baseline(recording_folder(str(tiny_pipeline_dir)))
    _started.append(s)
    yield s
    _started.remove(s)
    s.http.close()
    try:
        serve.delete(APP_NAME)
    except RayServeException as exc:  # Serve was already shut down by a test: nothing to delete
        logging.getLogger(__name__).info("serve.delete(%s) at teardown: %s", APP_NAME, exc)



_started: list[Served] = []
"""The shared app once `served` has started it (module clean-up never starts it just to clean up)."""


@pytest.fixture(scope="module", autouse=True)
def sessions_ended_after_each_module():
    """After each module, nothing it started on the shared app is left running for the next one."""
    yield
    for served_app in _started:
        served_app.settle()
