"""Lifecycle: sessions outlive front-door replicas; deleting the app ends every session and frees everything."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import ray

from tests.serve.conftest import KEYS, wait_for
from tests.serve.fault_clients import MsgpackViewer, record, resume

pytestmark = pytest.mark.e2e


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_the_front_door_replica_keeps_sessions_streaming(served, test_output_dir):
    sid = served.create(model="test-pattern").json()["session_id"]
    served.command(sid, "set_prompt", prompt="survive the restart")
    served.command(sid, "start")
    viewer = MsgpackViewer(served, sid, 0)  # streaming through the replica that dies
    viewer.start()
    wait_for(lambda: viewer.chunks, 60, "first chunk at the viewer")
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "FrontDoor" in a["name"] and a["namespace"] == "serve"]
    assert len(replicas) == 1, replicas
    t0 = time.monotonic()
    ray.kill(ray.get_actor(replicas[0]["name"], namespace="serve"), no_restart=True)
    viewer.join(120)
    # Its connection went with the replica (an error, or an end without an end map): never a false "ended".
    assert not viewer.is_alive() and (viewer.last is None or viewer.last["type"] == "interrupted"), viewer.last

    def new_replica() -> bool:
        now = [a for a in ray.util.list_named_actors(all_namespaces=True) if "FrontDoor" in a["name"] and a["namespace"] == "serve"]
        return bool(now) and now[0]["name"] != replicas[0]["name"] and _healthy(served.http)

    wait_for(new_replica, 120, "a new front-door replica")
    info = served.get(sid)
    assert info["status"] == "active"
    before = info["state"]["current_chunk"]
    wait_for(lambda: served.get(sid)["state"]["current_chunk"] > before, 60, "the session to keep generating")
    # The viewer reconnects through the new replica from the chunk after its last one.
    last = viewer.chunks[-1]
    resumed, _ = resume(served, sid, last)
    wait_for(lambda: resumed.chunks or not resumed.is_alive(), 120, "a chunk after the reconnect")
    if resumed.status == 200:
        assert resumed.chunks[0] == last + 1, (last, resumed.chunks)
        record(test_output_dir, f"front-door replica killed: kill -> next chunk at a reconnected viewer "
                                f"{resumed.arrived[0] - t0:.1f} s; resumed at chunk {last + 1} (nothing lost)")
    else:  # down longer than the session's ring: the refusal names the chunks still kept
        assert resumed.status == 422 and resumed.body["field"] == "from", resumed.body
    served.delete(sid)
    served.wait_ready()
    served.assert_nothing_leaked()


def test_deleting_the_app_ends_sessions_and_frees_groups(served, tiny_pipeline_dir):
    """A second app (its own registry and pool) is deleted while a session runs."""
    from ray import serve

    from deployments.app import build_app
    from deployments.naming import NAMESPACE, registry_actor_name
    from tests.serve.conftest import serving_config

    cfg = serving_config(str(tiny_pipeline_dir)).model_copy(update={"app_name": "helios-down"})
    cfg.models["helios-tiny"] = cfg.models["helios-tiny"].model_copy(update={"tp_size": 1, "pool_size": 1})
    cfg.models["test-pattern"] = cfg.models["test-pattern"].model_copy(update={"pool_size": 1})
    serve.run(build_app(cfg), name="helios-down", route_prefix="/down")
    registry = ray.get_actor(registry_actor_name("helios-down"), namespace=NAMESPACE)
    ray.get(registry.wait_warm.remote(240))
    http = httpx.Client(base_url=served.base_url + "/down", timeout=60, headers={"Authorization": f"Bearer {KEYS['alice']}"})
    r = http.post("/v1/sessions", json={"model": "test-pattern"})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    http.post(f"/v1/sessions/{sid}/commands", json={"command": "set_prompt", "args": {"prompt": "bye"}})
    http.post(f"/v1/sessions/{sid}/commands", json={"command": "start"})
    group_pgs = {p["placement_group_id"] for p in ray.util.placement_group_table().values()
                 if p["state"] == "CREATED" and "helios-down" in (p.get("name") or "")}
    assert len(group_pgs) == 1
    actor = ray.get_actor(f"helios-session-{sid}", namespace=NAMESPACE)
    ended: list[dict] = []

    def watch():  # read the session's own message log: the HTTP front door goes away with the app
        after = 0
        while not ended:
            out = ray.get(actor.wait_messages.remote(after, 10))
            for item in out.messages:
                after = item.seq
                if item.message["data"].get("event") == "session_ended":
                    ended.append(item.message["data"])

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    serve.delete("helios-down")
    t.join(120)
    assert ended == [{"event": "session_ended", "reason": "server_shutdown"}]

    def gone(name: str) -> bool:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
            return False
        except ValueError:
            return True

    wait_for(lambda: gone(f"helios-session-{sid}") and gone(registry_actor_name("helios-down")), 60, "session and registry exit")
    wait_for(
        lambda: not any(p["placement_group_id"] in group_pgs and p["state"] == "CREATED" for p in ray.util.placement_group_table().values()),
        60,
        "the app's shard group placement group removed",
    )
    http.close()
