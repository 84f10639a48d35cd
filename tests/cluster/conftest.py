"""A local multi-node Ray cluster on this one machine, and the real app deployed on it.

`ray.cluster_utils.Cluster` starts a head and `WORKER_NODES` worker nodes, each a raylet with its
own CPUs, logical GPUs and object store (DESIGN 11). The head declares no GPU and the custom
resource `HEAD_RESOURCE`: Serve's controller and its only proxy (`proxy_location: HeadOnly`),
the front door and the relay (their `resources`), the registry and the session actors (the
config's `control_plane_resources`) live on it. A shard group's bundles need a CPU share the
head does not have: `gpus_per_worker: 1` on device cpu asks each bundle for a logical GPU, so
every group is placed on a worker node. A worker node holds two groups (4 GPUs): spreading them
over nodes is the pool's choice, not forced by the sizes.

Its own pytest process (another Ray cluster than the rest of the suite):
`HELIOS_MULTINODE=1 pytest tests/cluster` (scripts/test.sh does it; tests/conftest.py skips
tests/cluster otherwise). Sizes are for a 2-core machine: tiny Helios at 128x128, TP=2.
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from tests.serve.conftest import ADMIN_KEY, APP_NAME, KEYS, Served, wait_for

logger = logging.getLogger(__name__)

HEAD_RESOURCE = "helios_head"
HEAD_SHARE = 0.001
"""What each head-pinned actor asks of `HEAD_RESOURCE` (the head has 1000 of it: no limit in practice)."""
WORKER_NODES = 3
GPUS_PER_NODE = 4
CPUS_PER_NODE = 1
TP_SIZE = 2
CPUS_PER_WORKER = 0.25
"""A group's two bundles: 0.5 CPU and 2 logical GPUs together, so two groups fit on a worker node."""
MIN_GROUPS = 2
MAX_GROUPS = 3
SCALE_DOWN_DELAY_S = 3.0
MODEL = "helios-tiny"
OBJECT_STORE_BYTES = 96 * 1024 * 1024
NODE_DEATH_S = 1.0
"""GCS health-check period (s); 3 misses mark a node dead (Ray's default is 3 s x 5)."""


def cluster_config(tiny_path: str):
    """The served config: tiny Helios on shard groups (worker nodes), a test-pattern model (no group)."""
    from deployments.config import ServingConfig

    return ServingConfig.model_validate(
        {
            "app_name": APP_NAME,
            "admin_keys": [ADMIN_KEY],
            "default_model": MODEL,
            "models": {
                # headroom 0: the pool holds min_groups when idle and grows only for leased and queued sessions.
                MODEL: {"kind": "helios", "path": tiny_path, "tp_size": TP_SIZE, "min_groups": MIN_GROUPS,
                        "max_groups": MAX_GROUPS, "headroom": 0, "scale_down_delay_s": SCALE_DOWN_DELAY_S,
                        "gpus_per_worker": 1, "cpus_per_worker": CPUS_PER_WORKER,
                                "options": {"height": 128, "width": 128, "pyramid_steps": [1, 1, 1]}},
                "test-pattern": {"kind": "test-pattern", "pool_size": 1, "options": {"height": 64, "width": 96}},
            },
            "tenants": [
                {"name": "alice", "api_keys": [KEYS["alice"]], "quota": {"max_concurrent_sessions": 6}},
                {"name": "bob", "api_keys": [KEYS["bob"]], "quota": {"max_concurrent_sessions": 2}},
            ],
            "queue_size": 2,
            "retry_after_s": 2,
            "idle_timeout_s": 300,
            "ring_size": 8,
            "session_linger_s": 2,
            "control_plane_resources": {HEAD_RESOURCE: HEAD_SHARE},
            "front_door": {"num_cpus": 0.1, "autoscaling": None, "resources": {HEAD_RESOURCE: HEAD_SHARE}},
            "relay": {"num_cpus": 0.1, "autoscaling": None, "resources": {HEAD_RESOURCE: HEAD_SHARE}},
        }
    )


class MultiNode(Served):
    """The served app on the multi-node cluster: `Served`'s helpers plus the cluster's nodes."""

    def __init__(self, base_url: str, config, cluster, head_id: str, workers: dict):
        super().__init__(base_url, config)
        self.cluster = cluster
        self.head_id = head_id
        self.workers: dict = workers
        """Node id (hex) -> `ray._private.node.Node` of each worker node still in the cluster."""

    def remove_worker(self, node_id: str) -> None:
        """Take a worker node away as a machine loss would: its raylet and every process on it, killed."""
        node = self.workers.pop(node_id)
        self.cluster.remove_node(node, allow_graceful=False)

    def admin_pool(self, model: str = MODEL) -> dict:
        r = self.http.get("/v1/admin/pool", headers=self.admin_headers())
        assert r.status_code == 200, r.text
        return r.json()["models"][model]

    def admin_sessions(self) -> dict[str, dict]:
        r = self.http.get("/v1/admin/sessions", headers=self.admin_headers())
        assert r.status_code == 200, r.text
        return {s["session_id"]: s for s in r.json()["sessions"]}

    def placement_nodes(self) -> dict[str, str]:
        """Group id -> node id of every placed shard group, from the GCS placement-group table (not the app's word)."""
        import ray

        from deployments.naming import placement_group_name

        prefix = placement_group_name("")
        out = {}
        for info in ray.util.placement_group_table().values():
            if info["state"] != "CREATED" or not info["name"].startswith(prefix):
                continue
            nodes = set(info["bundles_to_node_id"].values())
            assert len(nodes) == 1, f"placement group {info['name']} spans nodes {nodes}"  # STRICT_PACK
            out[info["name"][len(prefix):]] = nodes.pop()
        return out


def alive_actor_nodes() -> dict[str, set[str]]:
    """Actor class name -> the nodes its live actors are on (GCS actor table: Serve's and ours)."""
    import ray

    out: dict[str, set[str]] = {}
    for info in ray._private.state.actors().values():
        if info["State"] == "ALIVE":
            out.setdefault(info["ActorClassName"], set()).add(info["Address"]["NodeID"])
    return out


@pytest.fixture(scope="session")
def multinode(tiny_pipeline_dir):
    """Head + `WORKER_NODES` worker nodes, the app deployed with real HTTP, the pool warm."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.app import build_app

    port = int(os.environ.get("HELIOS_TEST_PORT", "8765"))
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")  # a loaded 2-core machine
    t0 = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": CPUS_PER_NODE,
            "num_gpus": 0,
            "resources": {HEAD_RESOURCE: 1000},
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": int(NODE_DEATH_S * 1000),
                "health_check_timeout_ms": int(NODE_DEATH_S * 1000),
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = {}
    for _ in range(WORKER_NODES):
        node = cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE, object_store_memory=OBJECT_STORE_BYTES)
        workers[node.node_id] = node
    cluster.wait_for_nodes(timeout=180)  # Ray's default 30 s is short for raylets starting on a loaded 2-core machine
    ray.init(
        address=cluster.address,
        log_to_driver=True,
        runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}},
    )
    logger.info("cluster of %d nodes up in %.1fs", 1 + WORKER_NODES, time.monotonic() - t0)
    try:
        config = cluster_config(str(tiny_pipeline_dir))
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        s = MultiNode(f"http://127.0.0.1:{port}", config, cluster, cluster.head_node.node_id, workers)
        stats = ray.get(s.registry().wait_warm.remote(300))
        assert all(m["free"] >= 1 for m in stats["models"].values()), stats
        wait_for(lambda: s.http.get("/readyz").status_code == 200, 60, "the app ready over HTTP")
        logger.info("app deployed and warm on the cluster %.1fs after start", time.monotonic() - t0)
        yield s
        s.http.close()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
