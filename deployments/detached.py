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


def start_detached(
    actor_class: type, name: str, *args: Any, resources: dict[str, float], get_if_exists: bool = False, max_restarts: int = 0
) -> Any:
    """The handle of a new detached actor `actor_class(*args)` named `name`, on a node that has
    `resources` (the config's `control_plane_resources`; {}: any node); with `get_if_exists`,
    the live one of that name if there is one. `max_restarts` -1: Ray restarts it for ever (its
    tasks are not retried unless a method says so with `ray.method(max_task_retries=...)`)."""
    return (
        ray.remote(actor_class)
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
