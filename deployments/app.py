"""`build_app(config)`: the one place that turns a serving config into a Ray Serve application.

`serve run serve_config.yaml` calls it with the YAML's `args` (an inline serving config
under `config`, or a `config_path`); tests call it with a `ServingConfig`.
"""

from __future__ import annotations

import sys
from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from deployments.config import DeploymentSpec, ServingConfig, load_config
from deployments.config_keys import ensure_some_key, with_env_keys
from deployments.http.ingress import FrontDoor
from deployments.naming import FRONT_DOOR_DEPLOYMENT, RELAY_DEPLOYMENT
from deployments.relay import Relay


def serve_options(spec: DeploymentSpec, name: str, retry_after_s: float = 5) -> dict[str, Any]:
    """Serve `.options()` of a stateless deployment from its spec."""
    opts: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": spec.num_cpus, **({"resources": dict(spec.resources)} if spec.resources else {})},
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        # Over max_queued_requests Serve itself answers (plain text, not our JSON body): make it a 429.
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=retry_after_s),
    }
    if spec.autoscaling is None:
        opts["num_replicas"] = 1
    else:
        a = spec.autoscaling
        opts["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": max(a.max_replicas, a.min_replicas),
            "initial_replicas": a.initial_replicas if a.initial_replicas is not None else max(1, a.min_replicas),
            "target_ongoing_requests": a.target_ongoing_requests,
        }
    return opts


def prepare_config(config: ServingConfig | dict | str) -> ServingConfig:
    """Validate, merge HELIOS_API_KEYS, make a key when there is none (shown once, on stderr),
    and keep only the keys' digests: the deployments and the registry never hold a key."""
    cfg = config if isinstance(config, ServingConfig) else load_config(config)
    cfg = with_env_keys(cfg)
    cfg, generated = ensure_some_key(cfg)
    if generated:
        # Shown once to the operator who started the server; never logged.
        print(
            f"\nHelios Serve: no API keys configured; generated one for tenant 'default':\n\n    {generated}\n\n"
            "Use it as 'Authorization: Bearer <key>'. Set HELIOS_API_KEYS=tenant:key,... to choose your own.\n",
            file=sys.stderr,
            flush=True,
        )
    return cfg.with_hashed_keys()


def build_app(args: Any) -> Application:
    """Serve application: the relay and the front door (the ingress), configured from `args`."""
    cfg = prepare_config(args)
    relay_args = {**cfg.relay.args, "recording_retention_s": cfg.recording_retention_s, "recording_uri": cfg.recording_uri}
    relay = Relay.options(**serve_options(cfg.relay, RELAY_DEPLOYMENT, cfg.retry_after_s)).bind(relay_args)
    return FrontDoor.options(**serve_options(cfg.front_door, FRONT_DOOR_DEPLOYMENT, cfg.retry_after_s)).bind(cfg, relay)
