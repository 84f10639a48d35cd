"""Readiness is not liveness: /readyz is 200 only once every model has a warm shard group."""

from __future__ import annotations

import ray


def test_readyz_on_the_warm_app(served):
    r = served.http.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["not_ready"] == [] and body["detail"] is None
    assert set(body["models"]) == {"helios-tiny", "test-pattern"}
    assert all(m["ready"] for m in body["models"].values())
    health = served.http.get("/healthz").json()
    assert health["status"] == "ok" and health["ready"] is True


def test_a_fresh_registry_is_ready_once_its_first_group_is_built(ray_cluster, tiny_pipeline_dir):
    """A registry of its own (no Serve app): not ready while the helios group builds, ready once it is built."""
    from deployments.config import ServingConfig
    from deployments.registry import get_or_create_registry

    config = ServingConfig.model_validate(
        {
            "app_name": "readiness-test",
            "models": {
                "helios-tiny": {"kind": "helios", "path": str(tiny_pipeline_dir), "tp_size": 1, "pool_size": 1,
                                "cpus_per_worker": 0.1, "options": {"height": 64, "width": 64, "pyramid_steps": [1, 1, 1]}},
                "test-pattern": {"kind": "test-pattern", "pool_size": 1},
            },
        }
    )
    registry = get_or_create_registry(config)
    try:
        first = ray.get(registry.ready.remote())  # starts the pools and answers before any build can finish
        assert first["ready"] is False
        assert first["models"]["helios-tiny"]["ready"] is False and first["models"]["helios-tiny"]["free"] == 0
        assert first["models"]["test-pattern"]["ready"] is True  # plain slots exist at once
        warm = ray.get(registry.wait_warm.remote(240))
        assert warm["models"]["helios-tiny"]["free"] == 1, warm
        assert warm["ready"] is True and all(m["ready"] for m in warm["models"].values())
    finally:
        ray.get(registry.shutdown.remote("test_done", exit_actor=True))
