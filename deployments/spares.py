"""Spare session actors: per model, actors started ahead of their session so admission skips start-up.

Starting a Ray actor (a worker process, imports, the constructor) is most of a session's
time to first frame (seconds on a loaded host; the model itself builds in milliseconds).
So the registry keeps `spare_session_actors` parked actors per model, each already named
for the session id it will carry: a session admitted at once takes one (its id is the
spare's), gets its tenant, group, seed and quotas in `start`, and a new spare is started
behind it. A queued session, whose id was given out before, gets a new actor as before.

A spare asks its registry every few seconds, from its constructor on (a registry that
dies between creating a spare and parking it never parks it), whether it is still owned
and exits on a positive "no" (or when no registry by its name exists); a failed call (the
registry restarting) is no answer and it asks again. A spare still being started is owned.
Spares are not persisted: a restarted registry answers "no" for its predecessor's spares and starts its own (they cost only a
process each, and a session admitted meanwhile simply starts a new actor). The registry
kills its spares at shutdown. Nothing of a spare outlives the registry that made it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import ray

from deployments.config import ServingConfig
from deployments.detached import start_detached
from deployments.naming import session_actor_name
from deployments.protocol import SessionActorArgs, SessionAssignment
from deployments.session_actor import SessionActor

logger = logging.getLogger(__name__)


def assignment_for(
    config: ServingConfig, tenant: str, group: Any, seed: int | None, admitted_at: float | None
) -> SessionAssignment:
    """The session part of a session actor's arguments: `tenant`'s quotas from `config`."""
    quota = config.quota_of(tenant)
    return SessionAssignment(tenant, group, seed, config.idle_timeout_s, quota.max_session_s, quota.command_rate, admitted_at)


def session_actor_args(
    config: ServingConfig, registry_name: str, session_id: str, model: str, assignment: SessionAssignment, spare: bool = False
) -> SessionActorArgs:
    """Everything a session actor of `model` is created with: sizes from `config`, then `assignment`."""
    return SessionActorArgs(
        session_id, model, config.models[model], registry_name,
        config.ring_size, config.message_log_size, config.session_linger_s, assignment, spare,
    )


def create_session_actor(args: SessionActorArgs, resources: dict[str, float]) -> Any:
    """The session actor of `args`, named for its session, on a node with `resources` (deployments/detached.py)."""
    return start_detached(SessionActor, session_actor_name(args.session_id), args, resources=resources)


class SpareActors:
    """The parked actors of every model of one app (owned by the registry; `spawn` runs its refills)."""

    def __init__(self, config: ServingConfig, registry_name: str, spawn: Callable[[Coroutine], None]):
        self.config = config
        self.registry_name = registry_name
        self.target = config.spare_session_actors
        self.ready: dict[str, list[tuple[str, Any]]] = {m: [] for m in config.models}
        """Model -> parked (session id, handle), oldest first."""
        self.making: dict[str, str] = {}
        """Session id -> model of the spares being started: owned already (each asks from birth, maybe
        before it is parked), and counted by `_fill` against the target."""
        self.closed = False
        self._spawn = spawn

    def start(self) -> None:
        """Start the missing spares of every model in the background (idempotent)."""
        for model in self.config.models:
            self._fill(model)

    def take(self, model: str) -> tuple[str, Any] | None:
        """A parked (session id, handle) of `model`, or None. The caller calls `start` once the session
        has started: a replacement starting up meanwhile would compete with it for the CPU."""
        if self.closed or not self.ready[model]:
            return None
        return self.ready[model].pop(0)

    def full(self) -> bool:
        """Every model has its spares parked (or they are off: target 0, or closed)."""
        return self.closed or all(len(spares) >= self.target for spares in self.ready.values())

    def owns(self, session_id: str) -> bool:
        """Whether `session_id` is one of the parked spares (asked by the spare itself)."""
        if self.closed:
            return False
        return session_id in self.making or any(sid == session_id for spares in self.ready.values() for sid, _ in spares)

    def close(self) -> None:
        """Start no more and kill every parked spare (at shutdown)."""
        self.closed = True
        for spares in self.ready.values():
            for sid, handle in spares:
                try:
                    ray.kill(handle, no_restart=True)
                except ValueError as exc:  # already gone
                    logger.debug("spare %s: %s", sid, exc)
            spares.clear()

    def _fill(self, model: str) -> None:
        while not self.closed and len(self.ready[model]) + sum(m == model for m in self.making.values()) < self.target:
            sid = uuid.uuid4().hex
            self.making[sid] = model
            self._spawn(self._make(model, sid))

    async def _make(self, model: str, sid: str) -> None:
        """Start spare `sid` and wait until it is up (parked); a failure is logged, the next take retries."""
        handle = None
        try:
            placeholder = assignment_for(self.config, "", None, None, None)
            handle = create_session_actor(
                session_actor_args(self.config, self.registry_name, sid, model, placeholder, spare=True),
                self.config.control_plane_resources,
            )
            await handle.park.remote()
        except (ray.exceptions.RayError, ValueError) as exc:
            logger.warning("a spare session actor for %s did not start: %s", model, exc)
            if handle is not None:
                ray.kill(handle, no_restart=True)
            return
        finally:
            self.making.pop(sid, None)
        if self.closed:
            ray.kill(handle, no_restart=True)
            return
        self.ready[model].append((sid, handle))
