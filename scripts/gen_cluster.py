#!/usr/bin/env python
"""Write the cluster manifests (KubeRay RayService, Ray cluster launcher) from one serving config.

Why a generator: the RayService's `serveConfigV2` must be the very serving config that `serve run`
takes (configs/serving/*.yaml), and the node shapes must fit its shard groups (GPUs per node a
multiple of tp_size, the CPUs a GPU node advertises equal to what its groups' bundles reserve).
Copied by hand they drift; derived here they cannot, and a config a cluster cannot run is refused
with the field to fix. Inputs: cluster/values.yaml and the serving config it names. Outputs:
cluster/rayservice.yaml and cluster/launcher-aws.yaml (both committed; the tests check them).

    python scripts/gen_cluster.py            # (re)write both
    python scripts/gen_cluster.py --check    # exit 1, naming the files, when a committed one differs
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python scripts/gen_cluster.py`: this checkout's deployments/
    sys.path.insert(0, str(REPO_ROOT))

from deployments.config import ServingConfig, load_config  # noqa: E402
from deployments.ingress_env import direct_ingress_env  # noqa: E402

logger = logging.getLogger("gen_cluster")

VALUES = Path("cluster/values.yaml")
RAYSERVICE = Path("cluster/rayservice.yaml")
LAUNCHER = Path("cluster/launcher-aws.yaml")
GIB = 1024**3
SHM_MARGIN_GIB = 8
"""/dev/shm above the object store: NCCL and PyTorch use it too."""
WEIGHTS_MARKER = "model_index.json"
"""A file every diffusers-format pipeline folder has: missing means the weights are not on the node."""
READY_PATH = "/readyz"
"""The app's readiness answer (deployments/http/routes_ops.py): 200 once every model has a warm group."""
PROBE_TIMEOUT_S = 10
"""Above routes_ops.OPS_TIMEOUT_S (5 s, its longest wait for the registry), so a slow registry reads as 503."""
IMAGE_REPO_DIR = "/home/ray/helios-serve"
"""Where cluster/Dockerfile puts the checkout (editable install)."""
VM_KEYS_FILE = "~/helios-api-keys.env"
"""On every VM (inside the container): the launcher's copy of vm.api_keys_file."""
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeShape(_Strict):
    """One node (VM) or pod shape."""

    instance_type: str = Field(..., description="VM instance type (launcher); on Kubernetes, the node pool the pods need.")
    cpu: int = Field(..., ge=1, description="CPUs the pod requests (and limits to).")
    memory_gib: int = Field(..., ge=1, description="Memory the pod requests (and limits to), GiB.")
    object_store_gib: int = Field(..., ge=1, description="Ray object store, GiB; the pod's /dev/shm is this plus a margin.")


class WorkerGroup(NodeShape):
    """A worker group (KubeRay) / worker node type (launcher)."""

    name: str = Field(..., pattern=K8S_NAME, description="Group name (a Kubernetes name).")
    min_nodes: int = Field(..., ge=0, description="Fewest nodes, kept even when idle.")
    max_nodes: int = Field(..., ge=1, description="Most nodes the autoscaler may start.")
    idle_timeout_s: int = Field(..., ge=0, description="A node using no Ray resource is removed after this long.")
    gpus: int = Field(0, ge=0, description="GPUs per node; 0 for a CPU group.")

    @model_validator(mode="after")
    def _bounds(self) -> "WorkerGroup":
        if self.min_nodes >= self.max_nodes:
            raise ValueError(f"{self.name}: min_nodes ({self.min_nodes}) must be below max_nodes ({self.max_nodes}) so it can scale")
        return self


class Weights(_Strict):
    """How the model folders reach the nodes: a pre-populated shared volume, never a download."""

    mount_path: str = Field(..., pattern=r"^/", description="Where the volume is mounted; every helios model `path` is below it.")
    kubernetes_volume: dict[str, Any] = Field(..., description="A Kubernetes volume source (persistentVolumeClaim, hostPath, nfs, csi...).")
    nfs_export: str = Field(..., description="VMs: the NFS export (`host:/path`) mounted read-only at mount_path on GPU nodes.")

    @model_validator(mode="after")
    def _one_source(self) -> "Weights":
        if len(self.kubernetes_volume) != 1:
            raise ValueError(f"weights.kubernetes_volume: exactly one volume source, got {sorted(self.kubernetes_volume)}")
        return self


class VmSettings(_Strict):
    """The cluster launcher's provider settings."""

    provider: Literal["aws"] = Field(..., description="Cloud provider of the launcher YAML.")
    region: str
    availability_zone: str
    image_id: str = Field(..., description="AMI with Docker and the NVIDIA container toolkit.")
    ssh_user: str
    api_keys_file: str = Field(..., description="File on the launching machine with HELIOS_API_KEYS=...; synced to every node.")


class ClusterValues(_Strict):
    """cluster/values.yaml."""

    name: str = Field(..., pattern=K8S_NAME, description="RayService / cluster name.")
    serving_config: str = Field(..., description="Serving config (repository-relative) embedded as serveConfigV2 and deployed on VMs.")
    image: str = Field(..., description="Container image with the project installed (cluster/Dockerfile).")
    ray_version: str = Field(..., description="Ray version inside the image.")
    direct_ingress: bool = Field(..., description="Serve's direct ingress (HAProxy), as scripts/serve.sh.")
    api_keys_secret: str = Field(..., pattern=K8S_NAME, description="Kubernetes Secret whose key HELIOS_API_KEYS holds the tenants' keys.")
    weights: Weights
    head: NodeShape
    serve_group: WorkerGroup
    gpu_group: WorkerGroup
    vm: VmSettings

    @model_validator(mode="after")
    def _groups(self) -> "ClusterValues":
        if self.gpu_group.gpus < 1:
            raise ValueError("gpu_group.gpus: the GPU group needs at least one GPU per node")
        if self.serve_group.gpus:
            raise ValueError("serve_group.gpus: the serve group holds no GPU (front door and relay need none)")
        if self.serve_group.name == self.gpu_group.name:
            raise ValueError(f"serve_group.name and gpu_group.name are both {self.gpu_group.name!r}")
        return self


@dataclass(frozen=True)
class Plan:
    """What the manifests take from the serving config, checked against the node shapes."""

    serve_text: str
    """The serving config file (trailing blanks stripped): serveConfigV2 verbatim, comments included."""
    serving: ServingConfig
    http_port: int
    gpu_node_cpus: int
    """Logical CPUs a GPU node advertises: exactly its shard bundles' (gpus x cpus_per_worker)."""
    model_dirs: tuple[str, ...]
    """Weights folders every GPU node must hold."""


def load_values(root: Path = REPO_ROOT) -> ClusterValues:
    return ClusterValues.model_validate(yaml.safe_load((root / VALUES).read_text()))


def make_plan(values: ClusterValues, root: Path = REPO_ROOT) -> Plan:
    """Read the serving config and check the cluster can run it; ValueError names what to change."""
    path = root / values.serving_config
    text = "\n".join(line.rstrip() for line in path.read_text().splitlines()) + "\n"
    serve = yaml.safe_load(text)
    serving = load_config(path)
    if serve.get("proxy_location") != "EveryNode":
        raise ValueError(f"{values.serving_config}: proxy_location must be EveryNode (proxies next to the serve group's replicas)")
    gpu = values.gpu_group
    helios = {n: m for n, m in serving.models.items() if m.kind == "helios"}
    if not helios:
        raise ValueError(f"{values.serving_config}: no helios model, nothing for the GPU group to run")
    mount = PurePosixPath(values.weights.mount_path)
    for name, m in helios.items():
        if m.path is None:
            raise ValueError(f"models.{name}: a cluster model needs `path` on the weights volume (a `preset` is made on one node's disk)")
        if m.device != "cuda":
            raise ValueError(f"models.{name}: device must be 'cuda' on a cluster (CPU shard groups could land on nodes without the weights)")
        if mount not in PurePosixPath(m.path).parents:
            raise ValueError(f"models.{name}: path {m.path!r} is not under weights.mount_path {values.weights.mount_path!r}")
        if gpu.gpus % m.tp_size:
            raise ValueError(f"models.{name}: tp_size {m.tp_size} does not divide gpu_group.gpus {gpu.gpus} (a group never spans nodes)")
    need = sum(m.group_bounds()[1] * m.tp_size * m.worker_gpus() for m in helios.values())
    if need > gpu.max_nodes * gpu.gpus:
        raise ValueError(
            f"pools at max_groups need {need:g} GPUs; gpu_group holds at most {gpu.max_nodes * gpu.gpus} (max_nodes x gpus)"
        )
    replica_cpus = sum(_max_replicas(d) * d.num_cpus for d in (serving.front_door, serving.relay))
    if replica_cpus > values.serve_group.max_nodes * values.serve_group.cpu:
        raise ValueError(
            f"front_door + relay at max_replicas need {replica_cpus} CPUs; serve_group holds at most "
            f"{values.serve_group.max_nodes * values.serve_group.cpu} (max_nodes x cpu)"
        )
    return Plan(
        serve_text=text,
        serving=serving,
        http_port=int(serve.get("http_options", {}).get("port", 8000)),
        gpu_node_cpus=math.ceil(gpu.gpus * max(m.cpus_per_worker for m in helios.values())),
        model_dirs=tuple(sorted({m.path for m in helios.values()})),
    )


def _max_replicas(spec: Any) -> int:
    return 1 if spec.autoscaling is None else max(spec.autoscaling.max_replicas, spec.autoscaling.min_replicas)


# ---- KubeRay -------------------------------------------------------------------------------------------------
def _env(values: ClusterValues, plan: Plan) -> list[dict[str, Any]]:
    """Every Ray container's environment: the tenants' keys (a Secret) and Serve's ingress mode."""
    env: list[dict[str, Any]] = [
        {"name": "HELIOS_API_KEYS", "valueFrom": {"secretKeyRef": {"name": values.api_keys_secret, "key": "HELIOS_API_KEYS"}}},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if values.direct_ingress:
        env += [{"name": k, "value": v} for k, v in direct_ingress_env(plan.http_port).items()]
    return env


def _resources(shape: NodeShape, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(shape.cpu), "memory": f"{shape.memory_gib}Gi"}
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _readiness(port: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": READY_PATH, "port": port},
        "initialDelaySeconds": 10,
        "periodSeconds": 5,
        "timeoutSeconds": PROBE_TIMEOUT_S,
        "successThreshold": 1,
        "failureThreshold": 2,
    }


def _start_params(shape: NodeShape, cpus: int, gpus: int) -> dict[str, str]:
    return {"num-cpus": str(cpus), "num-gpus": str(gpus), "object-store-memory": str(shape.object_store_gib * GIB)}


def _pod(
    values: ClusterValues, plan: Plan, shape: NodeShape, container: str, *, gpus: int = 0, serves: bool, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    """A Ray pod template: the image, env, resources, /dev/shm; the weights volume and its check on GPU pods."""
    mounts: list[dict[str, Any]] = [{"name": "shm", "mountPath": "/dev/shm"}]
    shm = {"medium": "Memory", "sizeLimit": f"{shape.object_store_gib + SHM_MARGIN_GIB}Gi"}
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": shm}]
    ray: dict[str, Any] = {
        "name": container, "image": values.image, "env": _env(values, plan), "ports": ports, "resources": _resources(shape, gpus)
    }
    if serves:
        ray["readinessProbe"] = _readiness(plan.http_port)
    spec: dict[str, Any] = {}
    if gpus:
        weights = {"name": "models", "mountPath": values.weights.mount_path, "readOnly": True}
        mounts.append(weights)
        volumes.append({"name": "models", **values.weights.kubernetes_volume})
        missing = " ".join(f"{d}/{WEIGHTS_MARKER}" for d in plan.model_dirs)
        spec["initContainers"] = [{
            "name": "check-weights",
            "image": values.image,
            "command": ["sh", "-c", f'for f in {missing}; do test -f "$f" || {{ echo "weights missing: $f (pre-populate the '
                        f'weights volume; nothing is downloaded)" >&2; exit 1; }}; done'],
            "volumeMounts": [weights],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}},
        }]
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    ray["volumeMounts"] = mounts
    spec["containers"] = [ray]
    spec["volumes"] = volumes
    return {"spec": spec}


def _worker_group(values: ClusterValues, plan: Plan, group: WorkerGroup, cpus: int) -> dict[str, Any]:
    return {
        "groupName": group.name,
        "replicas": group.min_nodes,
        "minReplicas": group.min_nodes,
        "maxReplicas": group.max_nodes,
        "idleTimeoutSeconds": group.idle_timeout_s,
        "rayStartParams": _start_params(group, cpus, group.gpus),
        # Every worker pod answers readiness with the app's /readyz through its own proxy: a pod with no
        # proxy (a GPU node holding only shard workers) is never in the serve Service.
        "template": _pod(values, plan, group, "ray-worker", gpus=group.gpus, serves=True,
                         ports=[{"name": "serve", "containerPort": plan.http_port}]),
    }


def rayservice(values: ClusterValues, plan: Plan) -> dict[str, Any]:
    """The KubeRay RayService (apiVersion ray.io/v1)."""
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": plan.http_port},
    ]
    head_params = {**_start_params(values.head, 0, 0), "dashboard-host": "0.0.0.0"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": values.name, "labels": {"app.kubernetes.io/name": "helios-serve"}},
        "spec": {
            # None: KubeRay never replaces the RayCluster under live sessions (cluster/README.md#upgrades).
            "upgradeStrategy": {"type": "None"},
            # The head's readiness cannot wait on /readyz (KubeRay deploys the app only once the head is
            # ready), so users reach the app through the worker pods that answer /readyz.
            "excludeHeadPodFromServeSvc": True,
            "serveConfigV2": plan.serve_text,
            "rayClusterConfig": {
                "rayVersion": values.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "version": "v2",
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": values.serve_group.idle_timeout_s,
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
                },
                "headGroupSpec": {
                    "rayStartParams": head_params,
                    "template": _pod(values, plan, values.head, "ray-head", serves=False, ports=head_ports),
                },
                "workerGroupSpecs": [
                    _worker_group(values, plan, values.serve_group, values.serve_group.cpu),
                    _worker_group(values, plan, values.gpu_group, plan.gpu_node_cpus),
                ],
            },
        },
    }


# ---- Ray cluster launcher ------------------------------------------------------------------------------------
def _start_env(values: ClusterValues, plan: Plan) -> str:
    """Shell prefix of `ray start`: the tenants' keys file and the ingress variables, exported."""
    keys = f"set -a && . {VM_KEYS_FILE} && set +a"
    ingress = f' && eval "$(python -m deployments.ingress_env {plan.http_port})"' if values.direct_ingress else ""
    return f"{keys}{ingress} && export RAY_USAGE_STATS_ENABLED=0 && ulimit -n 65536"


def launcher(values: ClusterValues, plan: Plan) -> dict[str, Any]:
    """The Ray cluster launcher config (`ray up`) for VMs on the configured provider."""
    vm, gpu, srv = values.vm, values.gpu_group, values.serve_group
    mount = values.weights.mount_path
    check = " && ".join(f"test -f {d}/{WEIGHTS_MARKER}" for d in plan.model_dirs)
    serve_config = f"{IMAGE_REPO_DIR}/{values.serving_config}"

    def disk(gib: int) -> list[dict[str, Any]]:
        return [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": gib, "VolumeType": "gp3"}}]

    return {
        "cluster_name": values.name,
        "max_workers": srv.max_nodes + gpu.max_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": max(1, math.ceil(srv.idle_timeout_s / 60)),
        "provider": {"type": vm.provider, "region": vm.region, "availability_zone": vm.availability_zone, "cache_stopped_nodes": False},
        "auth": {"ssh_user": vm.ssh_user},
        "docker": {
            "image": values.image,
            "container_name": "helios",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"],
        },
        "available_node_types": {
            "head": {
                "resources": {"CPU": 0, "GPU": 0},
                "node_config": {"InstanceType": values.head.instance_type, "ImageId": vm.image_id, "BlockDeviceMappings": disk(200)},
            },
            srv.name: {
                "min_workers": srv.min_nodes,
                "max_workers": srv.max_nodes,
                "idle_timeout_s": srv.idle_timeout_s,
                "resources": {"CPU": srv.cpu, "GPU": 0},
                "node_config": {"InstanceType": srv.instance_type, "ImageId": vm.image_id, "BlockDeviceMappings": disk(200)},
            },
            gpu.name: {
                "min_workers": gpu.min_nodes,
                "max_workers": gpu.max_nodes,
                "idle_timeout_s": gpu.idle_timeout_s,
                "resources": {"CPU": plan.gpu_node_cpus, "GPU": gpu.gpus},
                "node_config": {"InstanceType": gpu.instance_type, "ImageId": vm.image_id, "BlockDeviceMappings": disk(500)},
                # On the host, before Docker: mount the pre-populated weights read-only and refuse a node without them.
                "initialization_commands": [
                    "command -v mount.nfs4 >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq nfs-common)",
                    f"sudo mkdir -p {mount} && (mountpoint -q {mount} || sudo mount -t nfs4 -o nfsvers=4.1,ro,hard,noresvport "
                    f"{values.weights.nfs_export} {mount})",
                    f'{check} || {{ echo "weights missing under {mount} (pre-populate the NFS export; nothing is downloaded)" >&2; exit 1; }}',
                ],
                "docker": {"worker_run_options": [f"-v {mount}:{mount}:ro"]},
            },
        },
        "head_node_type": "head",
        "file_mounts": {VM_KEYS_FILE: vm.api_keys_file},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"{_start_env(values, plan)} && ray start --head --port=6379 --object-manager-port=8076 "
            f"--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0",
            # The app, from the serving config inside the image (the same file as serveConfigV2); retried while
            # the dashboard that `serve deploy` talks to comes up.
            f"for i in $(seq 1 30); do serve deploy --address http://127.0.0.1:8265 {serve_config} && exit 0; sleep 2; done; "
            f'echo "serve deploy failed" >&2; exit 1',
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{_start_env(values, plan)} && ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076",
        ],
    }


# ---- writing -------------------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks (serveConfigV2 stays readable YAML), no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def dump(document: dict[str, Any], header: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)
    return header + body


def _header(values: ClusterValues, what: str) -> str:
    return (
        f"# {what}. GENERATED by scripts/gen_cluster.py from cluster/values.yaml and {values.serving_config}:\n"
        f"# do not edit; change those and run `python scripts/gen_cluster.py`. Walkthrough: cluster/README.md.\n"
    )


def render(root: Path = REPO_ROOT) -> dict[Path, str]:
    """Repository-relative path -> the text it should hold."""
    values = load_values(root)
    plan = make_plan(values, root)
    return {
        RAYSERVICE: dump(rayservice(values, plan), _header(values, "KubeRay RayService for Helios Serve")),
        LAUNCHER: dump(launcher(values, plan), _header(values, f"Ray cluster launcher config ({values.vm.provider}) for Helios Serve")),
    }


def stale(root: Path = REPO_ROOT) -> list[Path]:
    """Committed manifests that differ from what render() writes."""
    return [p for p, text in render(root).items() if not (root / p).is_file() or (root / p).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a committed manifest is out of date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        out_of_date = stale()
        for p in out_of_date:
            logger.error("%s is out of date: run `python scripts/gen_cluster.py`", p)
        return 1 if out_of_date else 0
    for p, text in render().items():
        (REPO_ROOT / p).write_text(text)
        logger.info("wrote %s", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
