"""The cluster manifests, checked offline: generated from the serving config, valid as KubeRay and Ray read them.

- cluster/rayservice.yaml against KubeRay's published RayService CRD (v1 openAPIV3Schema, vendored in
  data/, see data/README.md), made strict the way the API server's field validation is (an unknown
  field is an error, not silently dropped);
- cluster/launcher-aws.yaml against the cluster-launcher schema shipped inside the installed ray;
- serveConfigV2 equal to the serving config it is generated from, parsed by the strict ServingConfig
  and by Serve's own deploy schema;
- the committed files equal what `python scripts/gen_cluster.py` writes now (they never drift), and the
  generator refuses what a cluster cannot run.
No cluster, no network.
"""

from __future__ import annotations

import ast
import copy
import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deployments.config import ServingConfig
from deployments.ingress_env import direct_ingress_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
KUBERAY_UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}
"""RayServiceUpgradeType of KubeRay v1.7.0 (apis/ray/v1/rayservice_types.go); the CRD types it as a bare string."""


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_cluster", REPO_ROOT / "scripts" / "gen_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_cluster"] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists properties (structural-schema pruning made an error)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    with gzip.open(DATA / "ray.io_rayservices.yaml.gz", "rt") as f:
        return yaml.load(f, Loader=yaml.CSafeLoader)  # 1 MB of YAML: libyaml, not the pure-Python parser


@pytest.fixture(scope="module")
def rayservice_validator(crd: dict[str, Any]) -> jsonschema.Draft7Validator:
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def launcher_validator() -> jsonschema.Draft7Validator:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / gen.RAYSERVICE).read_text())


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / gen.LAUNCHER).read_text())


@pytest.fixture(scope="module")
def values() -> Any:
    return gen.load_values()


def _errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _containers(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for p in pods for c in p["spec"]["containers"]]


# ---- one source of truth ------------------------------------------------------------------------------------
def test_committed_manifests_are_what_the_generator_writes() -> None:
    assert gen.stale() == [], "run `python scripts/gen_cluster.py` and commit cluster/"


def test_stale_names_an_edited_manifest(tmp_path: Path) -> None:
    for rel in (gen.VALUES, Path("configs/serving"), gen.RAYSERVICE, gen.LAUNCHER):
        src = REPO_ROOT / rel
        dst = tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            for f in src.glob("*.yaml"):
                (dst / f.name).parent.mkdir(parents=True, exist_ok=True)
                (dst / f.name).write_text(f.read_text())
        else:
            dst.write_text(src.read_text())
    assert gen.stale(tmp_path) == []
    edited = tmp_path / gen.RAYSERVICE
    edited.write_text(edited.read_text().replace("maxReplicas: 4", "maxReplicas: 5", 1))
    assert gen.stale(tmp_path) == [gen.RAYSERVICE]


def test_serve_config_v2_is_the_serving_config(rayservice: dict[str, Any], values: Any) -> None:
    embedded = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    source = yaml.safe_load((REPO_ROOT / values.serving_config).read_text())
    assert embedded == source
    (app,) = embedded["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    # Serve options come from build_app's args (as in serve_config.yaml), never from a `deployments:` override.
    assert "deployments" not in app
    config = ServingConfig.model_validate(app["args"]["config"])
    assert "helios-14b-distilled" in config.models


def test_serve_config_v2_passes_serves_deploy_schema(rayservice: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))


# ---- RayService as KubeRay's CRD documents it ---------------------------------------------------------------
def test_rayservice_matches_kuberay_crd(crd: dict[str, Any], rayservice_validator: jsonschema.Draft7Validator,
                                        rayservice: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert rayservice["kind"] == crd["spec"]["names"]["kind"]
    assert K8S_NAME.fullmatch(rayservice["metadata"]["name"])
    assert _errors(rayservice_validator, rayservice) == []


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda d: d["spec"]["upgradeStrategy"].update(kind="None"), "spec/upgradeStrategy"),
        (lambda d: d["spec"]["rayClusterConfig"].update(enableInTreeAutoscaling="yes"), "spec/rayClusterConfig/enableInTreeAutoscaling"),
        (lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(maxReplicas="4"),
         "spec/rayClusterConfig/workerGroupSpecs/1/maxReplicas"),
        (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(readyProbe={}),
         "spec/rayClusterConfig/headGroupSpec/template/spec/containers/0"),
    ],
)
def test_the_crd_check_refuses_unknown_fields_and_wrong_types(rayservice_validator: jsonschema.Draft7Validator,
                                                              rayservice: dict[str, Any], edit: Any, where: str) -> None:
    broken = copy.deepcopy(rayservice)
    edit(broken)
    errors = _errors(rayservice_validator, broken)
    assert errors and all(e.startswith(where) for e in errors), errors


def test_rayservice_upgrade_strategy_keeps_the_cluster(rayservice: dict[str, Any]) -> None:
    spec = rayservice["spec"]
    assert spec["upgradeStrategy"]["type"] in KUBERAY_UPGRADE_TYPES
    # None: KubeRay never builds a second RayCluster and switches traffic away from live sessions;
    # serveConfigV2 changes are applied in place (cluster/README.md#upgrades-and-live-sessions).
    assert spec["upgradeStrategy"]["type"] == "None"


def test_rayservice_autoscaling_and_groups(rayservice: dict[str, Any], values: Any) -> None:
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    groups = _groups(rayservice)
    assert set(groups) == {values.serve_group.name, values.gpu_group.name}
    for g in groups.values():
        assert g["minReplicas"] < g["maxReplicas"]
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["requests"] == c["resources"]["limits"]  # Guaranteed QoS: never evicted first
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])


def test_gpu_group_is_sized_for_whole_shard_groups(rayservice: dict[str, Any], values: Any) -> None:
    config = ServingConfig.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
    gpu = _groups(rayservice)[values.gpu_group.name]
    gpus = int(gpu["rayStartParams"]["num-gpus"])
    (c,) = gpu["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    model = config.models["helios-14b-distilled"]
    assert gpus % model.tp_size == 0 and gpus // model.tp_size == 2  # two TP=4 groups per 8-GPU node
    # The GPU node advertises exactly the CPUs its groups' bundles reserve: no room for Serve replicas there.
    assert int(gpu["rayStartParams"]["num-cpus"]) == gpus * model.cpus_per_worker
    serve = _groups(rayservice)[values.serve_group.name]
    assert serve["rayStartParams"]["num-gpus"] == "0"


def test_readiness_is_the_apps_readyz(rayservice: dict[str, Any]) -> None:
    port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    ops = ast.parse((REPO_ROOT / "deployments/http/routes_ops.py").read_text())
    (ops_timeout,) = [n.value.value for n in ops.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "OPS_TIMEOUT_S"]
    assert '@router.get("/readyz"' in (REPO_ROOT / "deployments/http/routes_ops.py").read_text()
    for g in _groups(rayservice).values():
        (c,) = g["template"]["spec"]["containers"]
        probe = c["readinessProbe"]
        assert probe["httpGet"] == {"path": "/readyz", "port": port}
        assert probe["timeoutSeconds"] > ops_timeout  # a slow registry reads as 503, not as a probe timeout
        assert {"name": "serve", "containerPort": port} in c["ports"]
    # The head cannot wait on /readyz (KubeRay deploys the app once the head is ready): out of the serve Service.
    assert rayservice["spec"]["excludeHeadPodFromServeSvc"] is True


def test_every_ray_container_gets_the_keys_and_the_ingress_mode(rayservice: dict[str, Any], values: Any) -> None:
    port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    for c in _containers(rayservice):
        env = {e["name"]: e for e in c["env"]}
        assert env["HELIOS_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": values.api_keys_secret, "key": "HELIOS_API_KEYS"}
        assert {k: env[k]["value"] for k in direct_ingress_env(port)} == direct_ingress_env(port)


def test_weights_come_from_a_mounted_volume(rayservice: dict[str, Any], values: Any) -> None:
    config = ServingConfig.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
    pod = _groups(rayservice)[values.gpu_group.name]["template"]["spec"]
    (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert {k: v for k, v in models.items() if k != "name"} == values.weights.kubernetes_volume
    (c,) = pod["containers"]
    assert {"name": "models", "mountPath": values.weights.mount_path, "readOnly": True} in c["volumeMounts"]
    (check,) = pod["initContainers"]
    for spec in config.models.values():
        if spec.kind == "helios":
            assert Path(values.weights.mount_path) in Path(spec.path).parents
            assert f"{spec.path}/model_index.json" in check["command"][-1]


# ---- Ray cluster launcher ------------------------------------------------------------------------------------
def test_launcher_matches_rays_schema(launcher_validator: jsonschema.Draft7Validator, launcher: dict[str, Any]) -> None:
    assert _errors(launcher_validator, launcher) == []
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = [t for n, t in types.items() if n != launcher["head_node_type"]]
    assert all(t["min_workers"] < t["max_workers"] for t in workers)
    assert sum(t["max_workers"] for t in workers) <= launcher["max_workers"]
    assert types[launcher["head_node_type"]]["resources"]["GPU"] == 0


def test_the_launcher_check_refuses_unknown_fields(launcher_validator: jsonschema.Draft7Validator, launcher: dict[str, Any]) -> None:
    broken = copy.deepcopy(launcher)
    broken["available_node_types"]["gpu"]["gpus"] = 8
    assert any(e.startswith("available_node_types/gpu") for e in _errors(launcher_validator, broken))


def test_launcher_mounts_weights_and_deploys_the_same_serving_config(launcher: dict[str, Any], values: Any, rayservice: dict[str, Any]) -> None:
    gpu = launcher["available_node_types"][values.gpu_group.name]
    kube_gpu = _groups(rayservice)[values.gpu_group.name]["rayStartParams"]
    assert gpu["resources"] == {"CPU": int(kube_gpu["num-cpus"]), "GPU": int(kube_gpu["num-gpus"])}
    init = "\n".join(gpu["initialization_commands"])
    assert values.weights.nfs_export in init and "model_index.json" in init
    assert f"-v {values.weights.mount_path}:{values.weights.mount_path}:ro" in gpu["docker"]["worker_run_options"]
    (deploy,) = [c for c in launcher["head_start_ray_commands"] if "serve deploy" in c]
    assert f"{gen.IMAGE_REPO_DIR}/{values.serving_config}" in deploy
    for cmd in (launcher["head_start_ray_commands"][1], launcher["worker_start_ray_commands"][1]):
        assert "deployments.ingress_env" in cmd and "helios-api-keys.env" in cmd and "ray start" in cmd


# ---- the generator refuses what a cluster cannot run ---------------------------------------------------------
def _write_case(tmp_path: Path, values: Any, edit_model: dict[str, Any]) -> Any:
    serve = yaml.safe_load((REPO_ROOT / values.serving_config).read_text())
    serve["applications"][0]["args"]["config"]["models"]["helios-14b-distilled"].update(edit_model)
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(serve))
    return values.model_copy(update={"serving_config": "serving.yaml"})


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"tp_size": 3}, "tp_size 3 does not divide gpu_group.gpus 8"),
        ({"path": None, "preset": "tiny"}, "needs `path` on the weights volume"),
        ({"path": "/data/Helios-Distilled"}, "is not under weights.mount_path"),
        ({"device": "cpu", "dtype": "float32"}, "device must be 'cuda'"),
        ({"max_groups": 9}, "pools at max_groups need 36 GPUs"),
    ],
)
def test_generator_refuses_what_the_cluster_cannot_run(tmp_path: Path, values: Any, edit: dict[str, Any], message: str) -> None:
    case = _write_case(tmp_path, values, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        gen.make_plan(case, tmp_path)


def test_generator_accepts_the_committed_config(tmp_path: Path, values: Any) -> None:
    plan = gen.make_plan(_write_case(tmp_path, values, {}), tmp_path)
    assert plan.gpu_node_cpus == 16 and plan.model_dirs == ("/models/Helios-Distilled",)


def test_values_refuse_a_group_that_cannot_scale(values: Any) -> None:
    raw = values.model_dump()
    raw["gpu_group"]["min_nodes"] = raw["gpu_group"]["max_nodes"]
    with pytest.raises(ValueError, match="min_nodes .* must be below max_nodes"):
        gen.ClusterValues.model_validate(raw)


def test_dockerfile_matches_the_values(values: Any, rayservice: dict[str, Any]) -> None:
    text = (REPO_ROOT / "cluster/Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{values.ray_version}-" in text
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == values.ray_version
    assert f"WORKDIR {gen.IMAGE_REPO_DIR}\n" in text  # where the launcher's `serve deploy` finds the serving config
    for folder in ("helios/", "deployments/", "configs/", "web/"):
        assert f"COPY --chown=ray:users {folder} {folder}\n" in text
