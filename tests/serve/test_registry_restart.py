"""A registry that dies comes back with its state: sessions, queue, set-up commands, quotas, groups.

Its own small app ("helios-recover" at /recover, a one-group helios-tiny pool and a
one-slot test-pattern pool), so killing its registry leaves the shared app alone. Every
wait is on the asserted condition, with a deadline.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
import ray

from tests.serve.conftest import KEYS, TenantApi, serving_config, wait_for
from tests.serve.fault_clients import MsgpackViewer

pytestmark = pytest.mark.e2e

APP = "helios-recover"
PREFIX = "/recover"


class RecoverApp(TenantApi):
    """HTTP client and registry access of the test's own app."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url + PREFIX, timeout=60)

    def create(self, model: str, tenant: str = "alice") -> httpx.Response:  # type: ignore[override]
        return super().create(tenant, model=model)

    def registry(self):
        from deployments.naming import NAMESPACE, registry_actor_name

        return ray.get_actor(registry_actor_name(APP), namespace=NAMESPACE)

    def stats(self) -> dict:
        return ray.get(self.registry().stats.remote(), timeout=60)


@pytest.fixture(scope="module")
def recover_app(served, tiny_pipeline_dir):
    from ray import serve

    from deployments.app import build_app

    cfg = serving_config(str(tiny_pipeline_dir)).model_copy(update={"app_name": APP, "queue_size": 2})
    cfg.models["helios-tiny"] = cfg.models["helios-tiny"].model_copy(update={"pool_size": 1})
    cfg.models["test-pattern"] = cfg.models["test-pattern"].model_copy(update={"pool_size": 1})
    serve.run(build_app(cfg), name=APP, route_prefix=PREFIX)
    app = RecoverApp(served.base_url)
    ray.get(app.registry().wait_warm.remote(240))
    yield app
    serve.delete(APP)
    app.http.close()


@pytest.fixture(autouse=True)
def no_session_left(recover_app):
    """Each test starts and ends with no session of the test app (a failed one must not fail the next)."""
    yield
    registry = recover_app.registry()
    for sid in ray.get(registry.stats.remote())["sessions"]:
        ray.get(registry.end_session.remote(sid, "test_cleanup"))
    wait_for(lambda: not recover_app.stats()["sessions"], 120, "the test app's sessions ended")


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=10)


def _kill_and_time(app: RecoverApp, expect_sessions: set[str]) -> float:
    """Kill the registry (Ray restarts it); seconds until it answers with every expected session back."""
    registry = app.registry()
    ray.get(registry.persisted.remote())  # every change so far is stored (a crash loses only a write in flight)
    old_pid = _pid(registry)
    t0 = time.monotonic()
    ray.kill(registry, no_restart=False)

    def back() -> bool:  # a new process (a call right after the kill may still reach the old one) with the state
        try:
            handle = app.registry()
            return _pid(handle) != old_pid and set(ray.get(handle.stats.remote(), timeout=10)["sessions"]) == expect_sessions
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ValueError):
            return False

    wait_for(back, 120, "the restarted registry answering with its sessions", poll=0.05)
    return time.monotonic() - t0


def _chunks_after(sid: str, after: int) -> int:
    from deployments.naming import NAMESPACE, session_actor_name

    actor = ray.get_actor(session_actor_name(sid), namespace=NAMESPACE)
    batch = ray.get(actor.wait_chunks.remote(after, 30), timeout=60)
    return batch.latest


def test_killed_registry_restarts_with_sessions_queue_commands_quotas_and_groups(recover_app, served, test_output_dir):
    app = recover_app
    # An active helios-tiny session (the one group), streaming.
    r = app.create("helios-tiny")
    assert r.status_code == 201, r.text
    tiny = r.json()["session_id"]
    assert app.command(tiny, "set_prompt", prompt="before the crash").status_code == 200
    assert app.command(tiny, "start").status_code == 200
    # bob's one session (his quota is 1) holds the test-pattern slot; two more wait in its queue.
    r = app.create("test-pattern", tenant="bob")
    assert r.status_code == 201, r.text
    bobs = r.json()["session_id"]
    queued = []
    for _ in range(2):
        r = app.create("test-pattern")
        assert r.status_code == 202, r.text
        queued.append(r.json()["session_id"])
    for command, args in (("set_prompt", {"prompt": "kept while queued"}), ("start", {})):
        r = app.command(queued[0], command, **args)
        assert r.status_code == 202, r.text
    r = app.create("helios-tiny")
    assert r.status_code == 202, r.text
    tiny_queued = r.json()["session_id"]
    # An open reader lease counts against bob's one stream.
    lease = ray.get(app.registry().open_reader.remote(bobs, "stream"))
    latest = _chunks_after(tiny, -1)
    before = app.stats()
    group_id = ray.get(app.registry().get_session.remote(tiny)).group_id
    workers = ray.get(app.registry().group_workers.remote(group_id))
    worker_ids = [w._actor_id.hex() for w in workers]

    restart_s = _kill_and_time(app, {tiny, bobs, *queued, tiny_queued})
    (test_output_dir / "registry_restart.txt").write_text(f"registry restart (kill -> first answer with its state back): {restart_s:.2f} s\n")

    after = app.stats()
    assert after["sessions"] == before["sessions"]
    assert after["tenants"] == before["tenants"]
    assert after["counters"] == before["counters"]
    assert after["readers"]["open"] == before["readers"]["open"] == 1
    assert after["models"]["helios-tiny"]["leased"] == 1 and after["models"]["helios-tiny"]["free"] == 0
    assert after["models"]["helios-tiny"]["building"] == 0  # the warm group came back: nothing rebuilt
    assert after["models"]["test-pattern"]["queued"] == 2
    # The same group, same ranks, still leased to the same session.
    assert ray.get(app.registry().get_session.remote(tiny)).group_id == group_id
    assert [w._actor_id.hex() for w in ray.get(app.registry().group_workers.remote(group_id))] == worker_ids
    # Queue order and positions, through the front door (its registry handle survives the restart).
    assert [app.get(s)["position"] for s in queued] == [1, 2]
    assert app.get(tiny_queued)["position"] == 1
    # Quotas: bob still holds his one session, and his one stream.
    r = app.create("test-pattern", tenant="bob")
    assert r.status_code == 429, r.text
    with pytest.raises(ray.exceptions.RayTaskError, match="max_streams"):
        ray.get(app.registry().open_reader.remote(bobs, "stream"))
    ray.get(app.registry().close_reader.remote(lease))
    # The session kept streaming through the crash.
    assert _chunks_after(tiny, latest) > latest
    # Ending bob's session admits the first queued one, with the command it kept.
    assert app.http.delete(f"/v1/sessions/{bobs}", headers=app.headers("bob")).status_code == 200
    info = wait_for(lambda: (s := app.get(queued[0]))["status"] == "active" and s, 60, "the first queued session admitted")
    assert app.get(queued[1])["position"] == 1
    state = wait_for(lambda: (st := app.get(queued[0])["state"]).get("running") and st, 60, "its kept start applied")
    assert state["current_prompt"] == "kept while queued", state
    assert info["status"] == "active"
    for sid in (tiny, tiny_queued, *queued):
        app.http.delete(f"/v1/sessions/{sid}", headers=app.headers())
    wait_for(lambda: not app.stats()["sessions"], 60, "every session ended")
    ray.get(app.registry().wait_warm.remote(240))
    served.assert_nothing_leaked()  # the old incarnation's spares exited, no group built twice


def test_a_registry_that_is_replaced_is_resolved_again_by_the_front_door(recover_app):
    """Killed for good (no restart): the front door's next call finds it dead, makes it again by name,
    and the new registry reads the state back."""
    app = recover_app
    r = app.create("test-pattern")
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    registry = app.registry()
    ray.get(registry.persisted.remote())
    old_id = registry._actor_id.hex()
    ray.kill(registry, no_restart=True)
    wait_for(lambda: app.http.get(f"/v1/sessions/{sid}", headers=app.headers()).status_code == 200, 120,
             "GET answered by a new registry")
    assert app.registry()._actor_id.hex() != old_id
    assert app.get(sid)["status"] == "active"
    assert sid in app.stats()["sessions"]
    assert app.http.delete(f"/v1/sessions/{sid}", headers=app.headers()).status_code == 200
    wait_for(lambda: not app.stats()["sessions"] and app.stats()["models"]["test-pattern"]["free"] == 1, 60,
             "the slot back after the session ended")


def _group_ids(app_name: str, model: str) -> set[str]:
    from deployments.naming import placement_group_name, shard_group_id

    prefix = placement_group_name(shard_group_id(app_name, model, ""))
    return {p["name"][len("helios-group-"):] for p in ray.util.placement_group_table().values()
            if p["state"] == "CREATED" and (p.get("name") or "").startswith(prefix)}


def _sse_events(app: RecoverApp, sid: str, out: list[dict]) -> None:
    """Read the session's SSE stream into `out` until session_ended (a thread)."""
    import json

    with app.http.stream("GET", f"/v1/sessions/{sid}/events", headers=app.headers(), timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                out.append(message)
                if message.get("data", {}).get("event") == "session_ended":
                    return


def test_the_watchdog_ends_a_session_whose_actor_died_and_admits_the_next(recover_app, served):
    import threading

    from deployments.naming import NAMESPACE, session_actor_name
    from deployments.watchdog import SESSION_ACTOR_DIED

    app = recover_app
    wait_for(lambda: app.stats()["models"]["helios-tiny"]["free"] == 1, 240, "the helios-tiny group free")
    r = app.create("helios-tiny")
    assert r.status_code == 201, r.text
    victim = r.json()["session_id"]
    assert app.command(victim, "set_prompt", prompt="about to die").status_code == 200
    assert app.command(victim, "start").status_code == 200
    r = app.create("helios-tiny")
    assert r.status_code == 202, r.text
    waiting = r.json()["session_id"]
    alice_before = app.stats()["tenants"]["alice"]
    events: list[dict] = []
    reader = threading.Thread(target=_sse_events, args=(app, victim, events), daemon=True)
    reader.start()
    wait_for(lambda: events, 60, "the SSE stream's first message")
    viewer = MsgpackViewer(app, victim, 0)
    viewer.start()
    wait_for(lambda: viewer.chunks or not viewer.is_alive(), 120, "a chunk at the video viewer")
    assert viewer.chunks, (viewer.status, viewer.body, viewer.error)
    ray.kill(ray.get_actor(session_actor_name(victim), namespace=NAMESPACE), no_restart=True)

    ended = wait_for(lambda: (s := app.get(victim))["status"] == "ended" and s, 60, "the dead session ended by the watchdog")
    assert ended["end_reason"] == SESSION_ACTOR_DIED
    reader.join(60)
    assert events[-1]["data"] == {"event": "session_ended", "reason": SESSION_ACTOR_DIED}
    # The video viewer's stream ends with the relay's reason; reconnecting, it is told the registry's.
    viewer.join(60)
    assert viewer.last == {"type": "end", "reason": "session actor gone"}, (viewer.last, viewer.error)
    gone = MsgpackViewer(app, victim, viewer.chunks[-1] + 1)
    gone.run()
    assert gone.status == 410 and SESSION_ACTOR_DIED in gone.body["detail"], (gone.status, gone.body)
    # Its quota is free, and the queued session got the group (reused: its ranks answered).
    wait_for(lambda: app.get(waiting)["status"] == "active", 120, "the queued session admitted")
    assert app.stats()["tenants"]["alice"] == {"active": alice_before["active"], "queued": alice_before["queued"] - 1}
    assert app.http.delete(f"/v1/sessions/{waiting}", headers=app.headers()).status_code == 200
    wait_for(lambda: not app.stats()["sessions"], 60, "every session ended")
    served.assert_nothing_leaked()


def test_the_watchdog_rebuilds_a_free_group_whose_rank_died(recover_app):
    from deployments.naming import NAMESPACE, shard_worker_name

    app = recover_app
    wait_for(lambda: app.stats()["models"]["helios-tiny"]["free"] == 1, 240, "the helios-tiny group free")
    (old,) = _group_ids(APP, "helios-tiny")
    rebuilt = app.stats()["counters"]["groups_rebuilt"]
    ray.kill(ray.get_actor(shard_worker_name(old, 1), namespace=NAMESPACE), no_restart=True)
    wait_for(lambda: app.stats()["counters"]["groups_rebuilt"] == rebuilt + 1, 60, "the dead group noticed")
    wait_for(lambda: (m := app.stats()["models"]["helios-tiny"])["free"] == 1 and m["building"] == 0, 240, "a new group warm")
    (new,) = _group_ids(APP, "helios-tiny")
    assert new != old
    r = app.create("helios-tiny")
    assert r.status_code == 201, r.text  # the new group serves
    assert app.http.delete(f"/v1/sessions/{r.json()['session_id']}", headers=app.headers()).status_code == 200
