"""Fixtures shared by the whole suite: one local Ray cluster and one tiny pipeline folder per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

DIRECT_INGRESS = os.environ.get("HELIOS_DIRECT_INGRESS") == "1"
"""Serve in direct-ingress mode (HAProxy, replicas serve HTTP): set before Ray starts, so every worker
reads it (scripts/test.sh runs the backpressure test this way, in its own pytest process)."""
if DIRECT_INGRESS:
    from deployments.ingress_env import direct_ingress_env

    os.environ.update(direct_ingress_env(int(os.environ.get("HELIOS_TEST_PORT", "8765"))))
    # HAProxy's manager and the fallback proxy start together with everything else: on a loaded
    # 2-core machine Serve's 5 s readiness check of a proxy can time out and restart it.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")

MULTINODE = os.environ.get("HELIOS_MULTINODE") == "1"
"""Run tests/cluster: a multi-node Ray cluster of its own (`ray.cluster_utils.Cluster`), so its own pytest
process (scripts/test.sh). With it set every other test is skipped; without it tests/cluster is."""
CLUSTER_TESTS = REPO_ROOT / "tests" / "cluster"


def pytest_collection_modifyitems(config, items) -> None:
    """One Ray cluster per pytest process: the multi-node tests and the rest never run together."""
    for item in items:
        if (CLUSTER_TESTS in Path(str(item.path)).parents) != MULTINODE:
            reason = ("multi-node cluster test: needs HELIOS_MULTINODE=1 (scripts/test.sh runs it in its own process)"
                      if not MULTINODE else "HELIOS_MULTINODE=1 runs tests/cluster only")
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    """Artifacts a person may want to look at after a run (screenshots, mp4s)."""
    out = REPO_ROOT / "test-output"
    out.mkdir(exist_ok=True)
    return out


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A complete tiny random diffusers-format Helios pipeline folder, built once per test session."""
    from helios.pipeline.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny-helios"), seed=0)


@pytest.fixture(scope="session")
def ray_cluster():
    """The one local Ray cluster of the test session (DEVELOPERS rules: 4 CPUs, 256 MiB store)."""
    import ray

    from deployments.local_ray import start_local_ray

    if not ray.is_initialized():
        start_local_ray(
            tries=3,
            # Always a private cluster: a bare init() attaches to whatever `ray start` (or a
            # ray.cluster_utils.Cluster) on this machine last wrote to /tmp/ray/ray_current_cluster.
            address="local",
            num_cpus=4,
            object_store_memory=256 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}},
        )
    yield ray
    from ray import serve

    try:
        serve.shutdown()  # a no-op when Serve never started; a real failure shows in the teardown
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def helios_server(ray_cluster, tiny_pipeline_dir):
    """URL and API key of the real Helios Serve app (test-pattern + helios-tiny), for client and browser tests."""
    import importlib.util
    import sys

    name = "helios_tests_live_server"  # one module name, so the app is deployed once per session
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests" / "client" / "live_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].live_server(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def sensitive_vae():
    """Builds a tiny Wan VAE with diffusers' default init (same weights each call; `dtype` optional).

    Its frames follow the latents by far more than a level (DESIGN 9), unlike the tiny
    preset's well-conditioned decoder, so a frame comparison that uses it can fail.
    """
    import torch
    from diffusers import AutoencoderKLWan

    def build(dtype=None):
        torch.manual_seed(0)
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
        return vae.to(dtype) if dtype is not None else vae

    return build
