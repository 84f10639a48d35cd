"""How the app starts its long-lived named actors (the registry, session actors and spares).

They outlive the replica or actor that starts them (detached), are found by name in the
`helios` namespace, reserve no CPU (they mostly wait) and serve many callers at once. None
is ever placed by its caller's placement group: a replica's or a shard group's bundle would
otherwise capture it (scheduling_strategy "DEFAULT" opts out). A session actor never
restarts (a lost session is reported by the registry's watchdog, never silently rebuilt);
the registry does (`max_restarts=-1`) and reads its state back (deployments/registry_state.py).
"""

from __future__ import annotations

from typing import Any

import ray

from deployments.naming import NAMESPACE

MAX_CONCURRENCY = 1000
"""Concurrent calls per actor (long polls of every viewer of a session wait at once)."""

_remote_classes: dict[type, Any] = {}
"""`ray.remote(cls)` once per class. Each `ray.remote` call is a new Ray actor class (its function id
carries a random uuid): made per session, every session exported another pickled class to the GCS
function table, and every process that got a session's handle (registry, front door, relay) loaded
and kept another copy of the class, about 0.2 MB per session in each (docs/soak.md)."""


def remote_class(actor_class: type) -> Any:
    """The one Ray actor class of `actor_class` in this process."""
    remote = _remote_classes.get(actor_class)
    if remote is None:
        remote = _remote_classes[actor_class] = ray.remote(actor_class)
    return remote


def loaded_actor_classes() -> int:
    """Actor classes this process has loaded (Ray keeps each for good): flat while sessions come and go."""
    manager = getattr(ray._private.worker.global_worker, "function_actor_manager", None)
    return len(getattr(manager, "_loaded_actor_classes", {}))


def start_detached(
    actor_class: type, name: str, *args: Any, resources: dict[str, float], get_if_exists: bool = False, max_restarts: int = 0
) -> Any:
    """The handle of a new detached actor `actor_class(*args)` named `name`, on a node that has
    `resources` (the config's `control_plane_resources`; {}: any node); with `get_if_exists`,
    the live one of that name if there is one. `max_restarts` -1: Ray restarts it for ever (its
    tasks are not retried unless a method says so with `ray.method(max_task_retries=...)`)."""
    return (
        remote_class(actor_class)
        .options(
            name=name,
            namespace=NAMESPACE,
            get_if_exists=get_if_exists,
            lifetime="detached",
            num_cpus=0,
            resources=dict(resources),
            max_restarts=max_restarts,
            max_concurrency=MAX_CONCURRENCY,
            scheduling_strategy="DEFAULT",
        )
        .remote(*args)
    )
