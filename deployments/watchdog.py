"""Liveness of session actors and shard-group ranks, for the registry's watchdog.

A session actor that dies (a crash, an OOM kill, its node lost) cannot say so: its group
would stay leased and its tenant's quota used until a DELETE. So the registry pings
every live session actor and every rank of every group each `watchdog_period_s` and acts
on positive death only: a `ActorDiedError` for the ping, or no actor by that name any
more. A ping that times out says nothing (a rank busy in a long step answers later) and
is never taken for death; at most one ping per actor is in flight, so a busy actor does
not pile them up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import ray

logger = logging.getLogger(__name__)

PING_TIMEOUT_S = 5.0
"""Longest wait for one ping in one round (no answer: alive as far as we know, asked again next round)."""
GROUP_PROBE_S = 30.0
"""Longest wait for every rank of a group whose session actor died to answer a call (else it is rebuilt)."""

SESSION_ACTOR_DIED = "error: session actor died"
NODE_LOST = "error: node lost"
SHARD_WORKER_DIED = "error: shard worker died"


def death_reason(exc: ray.exceptions.ActorDiedError, otherwise: str) -> str:
    """`NODE_LOST` when Ray says the actor's node died ("The actor died because its node has died.
    Node Id: ..." from the GCS), else `otherwise`: the death cause reaches Python as text only."""
    return NODE_LOST if "its node has died" in str(exc) else otherwise


class Pinger:
    """Pings actors by key; `dead(...)` is an end reason on positive death, else None."""

    def __init__(self, timeout_s: float = PING_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._inflight: dict[str, Any] = {}
        """Key -> the ObjectRef of its ping not answered yet (reused by the next round)."""

    async def dead(self, key: str, handle: Any | None, otherwise: str) -> str | None:
        """Why the actor `key` is dead (`handle` None: no actor by its name any more), or None."""
        if handle is None:
            self._inflight.pop(key, None)
            return otherwise
        ref = self._inflight.get(key)
        if ref is None:
            ref = self._inflight[key] = handle.__ray_ready__.remote()
        try:
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.timeout_s)
        except TimeoutError:
            return None  # busy or slow: not a death; the same ping is awaited next round
        except ray.exceptions.ActorDiedError as exc:
            self._inflight.pop(key, None)
            return death_reason(exc, otherwise)
        except ray.exceptions.RayError as exc:  # unavailable (restarting, network): not a death
            self._inflight.pop(key, None)
            logger.info("ping of %s: no answer (%s)", key, type(exc).__name__)
            return None
        self._inflight.pop(key, None)
        return None

    def forget(self, key: str) -> None:
        self._inflight.pop(key, None)


async def group_answers(workers: list[Any], timeout_s: float = GROUP_PROBE_S) -> bool:
    """Whether every rank answers a call in its default concurrency group within `timeout_s`.

    A rank left waiting in a collective (its session actor died between the ranks' calls)
    answers nothing: such a group is rebuilt, not handed to the next session.
    """
    try:
        await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(w.pid.remote().future()) for w in workers)), timeout_s)
    except (TimeoutError, ray.exceptions.RayError) as exc:
        logger.warning("a shard group does not answer (%s): rebuilding it", type(exc).__name__)
        return False
    return True


class RegistryWatchdog:
    """The SessionRegistry's watchdog (a mixin, as RegistryReaders): every `watchdog_period_s` it pings
    the live session actors and every rank of every group, ends the session of a dead actor with a
    reason (quota freed, viewers told through `wait_ended`), gives its group back once the group
    answers (else rebuilds it), rebuilds a group with a dead rank (ending its session, if leased),
    and admits the next queued session."""

    config: Any
    sessions: dict[str, Any]
    pools: Any
    _shutting_down: bool
    _pinger: Pinger
    _session_actors: Any
    """ActorCache of session actors (deployments/lookup.py)."""
    _ending: set[str]
    """Sessions whose death is being handled (not checked again meanwhile)."""
    _spawn: Callable[[Coroutine], None]
    _persist: Callable[[], None]
    _end_record: Callable[[str, str | None], Any]
    _give_back: Callable[[Any, str | None], None]
    end_session: Callable[..., Awaitable[Any]]

    async def _watchdog(self) -> None:
        while not self._shutting_down:
            await asyncio.sleep(self.config.watchdog_period_s)  # a period, not a synchronisation
            try:
                await self._watch_once()
            except Exception:  # noqa: BLE001 - a failed round is logged; the next one runs regardless
                logger.exception("watchdog round failed")

    async def _watch_once(self) -> None:
        from deployments.protocol import SessionStatus

        live = [r for r in self.sessions.values() if r.status is SessionStatus.ACTIVE and r.session_id not in self._ending]
        groups = [(model, g) for model, pool in self.pools.by_model.items() for g in pool.groups()]
        found = await asyncio.gather(*(self._session_death(r) for r in live), *(self._group_death(g) for _, g in groups),
                                     return_exceptions=True)
        for rec, why in zip(live, found[: len(live)]):
            if isinstance(why, str) and self.sessions.get(rec.session_id) is rec:
                logger.warning("session %s: %s", rec.session_id, why)
                self._spawn(self._end_dead_session(rec, why))
        for (model, group), why in zip(groups, found[len(live):]):
            if isinstance(why, str):
                holder = self.pools.discard(model, group.group_id, why)
                if holder is not None and holder in self.sessions:
                    self._spawn(self.end_session(holder, why))
                self._persist()
        for why in found:
            if isinstance(why, BaseException):
                logger.info("watchdog: a liveness check failed (%s): asked again next round", why)

    async def _session_death(self, rec: Any) -> str | None:
        handle = await self._session_actors.get(rec.actor_name)
        why = await self._pinger.dead(rec.session_id, handle, SESSION_ACTOR_DIED)
        if why is not None or rec.session_id not in self.sessions:  # dead, or ended during the ping: not kept
            self._session_actors.forget(rec.actor_name)
        return why

    async def _group_death(self, group: Any) -> str | None:
        whys = await asyncio.gather(*(self._pinger.dead(f"{group.group_id}/{rank}", w, SHARD_WORKER_DIED) for rank, w in enumerate(group.workers)))
        why = next((w for w in whys if w is not None), None)
        if why is not None:
            for rank in range(len(group.workers)):
                self._pinger.forget(f"{group.group_id}/{rank}")
        return why

    async def _end_dead_session(self, rec: Any, why: str) -> None:
        """End it now (quota freed, viewers told); its group goes back once every rank answers, else is rebuilt."""
        sid = rec.session_id
        self._ending.add(sid)
        try:
            group = self.pools.by_model[rec.model].leased.get(sid)
            if self._end_record(sid, why) is None:
                return
            broken = None
            if group is not None and not await group_answers(group.workers):
                broken = f"its ranks did not answer after session {sid}'s actor died"
            self._give_back(rec, broken)
        finally:
            self._ending.discard(sid)

