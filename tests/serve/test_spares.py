"""Spare session actors (deployments/spares.py): an admitted session takes a parked actor, a new
spare replaces it, and a spare no registry owns exits (nothing of it is left behind)."""

from __future__ import annotations

import uuid

import pytest
import ray

from deployments.naming import NAMESPACE, session_actor_name
from helios.media import framing
from tests.serve.conftest import wait_for
from tests.serve.test_session_idle import session_actor

pytestmark = pytest.mark.e2e


def _exists(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def test_an_admitted_session_starts_on_a_spare_and_a_new_spare_replaces_it(served):
    registry = served.registry()
    wait_for(lambda: ray.get(registry.spare_counts.remote())["test-pattern"] >= 1, 120, "a parked spare")
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    body = r.json()
    sid = body["session_id"]
    try:
        assert served.command(sid, "set_prompt", prompt="on a spare").status_code == 200
        assert served.command(sid, "start").status_code == 200
        with served.http.stream("GET", body["urls"]["stream_msgpack"] + "&from=0", headers=served.headers()) as resp:
            assert resp.status_code == 200
            first = next(framing.unpack_stream(resp.iter_bytes()))
        timing = first["timing"]
        assert first["chunk"] == 0 and timing.get("spare") == 1.0, timing
        assert timing["admitted_at"] <= timing["start_command_at"] <= timing["first_chunk_at"] <= timing["relay_got_at"]
        stats = ray.get(ray.get_actor(session_actor_name(sid), namespace=NAMESPACE).info.remote())
        assert stats.tenant == "alice" and stats.session_id == sid  # the spare became this tenant's session
        wait_for(lambda: ray.get(registry.spare_counts.remote())["test-pattern"] >= 1, 120, "a new spare")
    finally:
        served.delete(sid)
    wait_for(lambda: not _exists(session_actor_name(sid)), 120, "the session's actor to exit after its end")


def test_a_spare_that_no_registry_owns_exits(ray_cluster):
    sid = uuid.uuid4().hex
    actor = session_actor(sid, 600.0, tenant="", registry_name="no-such-registry", spare=True)
    ray.get(actor.park.remote(), timeout=60)
    wait_for(lambda: not _exists(session_actor_name(sid)), 60, "the unowned spare to exit")


def test_a_spare_never_parked_exits_once_no_registry_owns_it(ray_cluster):
    """Its registry died between creating it and parking it: nobody calls `park`, and it still exits."""
    sid = uuid.uuid4().hex
    actor = session_actor(sid, 600.0, tenant="", registry_name="no-such-registry", spare=True)
    assert ray.get(actor.info.remote(), timeout=60).session_id == sid  # up, and never parked
    wait_for(lambda: not _exists(session_actor_name(sid)), 60, "the never-parked spare to exit")


def test_a_spare_being_started_is_owned_by_its_registry(served):
    """A spare asks from birth, maybe before its registry has it parked: the registry says yes meanwhile."""
    registry = served.registry()
    sid = uuid.uuid4().hex
    assert not ray.get(registry.owns_spare.remote(sid))
    ray.get(registry.__ray_call__.remote(lambda self: self.spares.making.__setitem__(sid, "test-pattern")))
    try:
        assert ray.get(registry.owns_spare.remote(sid))
    finally:
        ray.get(registry.__ray_call__.remote(lambda self: self.spares.making.pop(sid, None)))
