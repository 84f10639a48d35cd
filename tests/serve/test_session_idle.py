"""Idle timeout of a session actor: chunk feeds (the recording) are not viewers; touch() is."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

from deployments.config import ModelSpec
from deployments.naming import NAMESPACE, session_actor_name
from deployments.protocol import SessionActorArgs, SessionAssignment
from deployments.session_actor import SessionActor

pytestmark = pytest.mark.e2e

IDLE_S = 3.0


def session_actor(sid: str, idle_timeout_s: float, tenant: str = "tenant", registry_name: str = "no-registry", spare: bool = False):
    """A test-pattern session actor named for `sid`, not started (tests/serve/test_spares.py parks one)."""
    return (
        ray.remote(SessionActor)
        .options(name=session_actor_name(sid), namespace=NAMESPACE, num_cpus=0, max_concurrency=100)
        .remote(
            SessionActorArgs(
                sid, "test-pattern", ModelSpec(kind="test-pattern"), registry_name, ring_size=4, message_log_size=64,
                linger_s=0.2, assignment=SessionAssignment(tenant, None, 0, idle_timeout_s, 600.0, None, None), spare=spare,
            )
        )
    )


def _session(idle_timeout_s: float):
    actor = session_actor(uuid.uuid4().hex, idle_timeout_s)
    ray.get(actor.start.remote(), timeout=60)
    return actor


def _poll_chunks_until_ended(actor, limit_s: float, touch: bool) -> dict:
    """Act like a relay feed (long-poll chunks) for at most `limit_s`, optionally announcing a viewer."""
    deadline = time.monotonic() + limit_s
    out: dict = {"ended": False}
    while time.monotonic() < deadline and not out["ended"]:
        if touch:
            ray.get(actor.touch.remote(), timeout=10)
        out = vars(ray.get(actor.wait_chunks.remote(-1, 0.3), timeout=30))
    return out


def test_a_chunk_feed_alone_does_not_keep_a_session_alive(ray_cluster):
    actor = _session(IDLE_S)
    out = _poll_chunks_until_ended(actor, limit_s=IDLE_S * 10, touch=False)
    assert out["ended"] and out["end_reason"] == "idle_timeout"


def test_a_touching_viewer_keeps_the_session_alive(ray_cluster):
    actor = _session(IDLE_S)
    out = _poll_chunks_until_ended(actor, limit_s=IDLE_S * 2.5, touch=True)
    assert not out["ended"], out
    ray.get(actor.stop.remote("deleted"), timeout=60)
