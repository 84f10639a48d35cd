"""The admin API on the served test app: admin keys only (401 without one, 403 for a tenant's key),
every tenant's sessions with their nodes and groups, every model's pool; documented in the OpenAPI."""

from __future__ import annotations

import pytest

from tests.serve.conftest import KEYS

pytestmark = pytest.mark.e2e

ADMIN_ROUTES = ["/v1/admin/pool", "/v1/admin/sessions"]


def _node_ids() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


@pytest.mark.parametrize("route", ADMIN_ROUTES)
def test_admin_routes_take_admin_keys_only(served, route):
    none = served.http.get(route)
    assert none.status_code == 401 and none.json()["field"] == "authorization" and none.headers["www-authenticate"] == "Bearer"
    wrong = served.http.get(route, headers={"Authorization": "Bearer not-a-key-of-anyone-0123"})
    assert wrong.status_code == 401 and "wrong admin key" in wrong.json()["detail"]
    for tenant in KEYS:
        refused = served.http.get(route, headers=served.headers(tenant))
        assert refused.status_code == 403, refused.text
        assert refused.json()["field"] == "authorization" and "admin key" in refused.json()["detail"]
    ok = served.http.get(route, headers=served.admin_headers())
    assert ok.status_code == 200, ok.text
    # An admin key is no tenant key: it opens nothing of the tenant API.
    assert served.http.post("/v1/sessions", json={"model": "test-pattern"}, headers=served.admin_headers()).status_code == 401


def test_admin_sessions_lists_every_tenants_sessions_with_nodes_and_groups(served):
    served.settle()
    made = []
    try:
        for tenant, model in (("alice", "helios-tiny"), ("bob", "test-pattern")):
            r = served.create(tenant, model=model)
            assert r.status_code == 201, r.text
            made.append((tenant, r.json()["session_id"]))
        body = served.http.get("/v1/admin/sessions", headers=served.admin_headers()).json()
        by_id = {s["session_id"]: s for s in body["sessions"]}
        assert set(by_id) == {sid for _, sid in made}
        nodes = _node_ids()
        tiny, pattern = by_id[made[0][1]], by_id[made[1][1]]
        assert (tiny["tenant"], tiny["model"], tiny["status"]) == ("alice", "helios-tiny", "active")
        assert (pattern["tenant"], pattern["model"], pattern["status"]) == ("bob", "test-pattern", "active")
        assert tiny["node_id"] in nodes and pattern["node_id"] in nodes  # the session actors' nodes
        assert tiny["group_id"] and tiny["group_node_id"] in nodes  # its shard group and that group's node
        assert "viewer_token" not in tiny
        # The same group is leased to that session in the pool view.
        pool = served.http.get("/v1/admin/pool", headers=served.admin_headers()).json()["models"]["helios-tiny"]
        leased = [g for g in pool["groups"] if g["state"] == "leased"]
        assert [(g["group_id"], g["session_id"], g["node_id"]) for g in leased] == [
            (tiny["group_id"], tiny["session_id"], tiny["group_node_id"])
        ]
    finally:
        for tenant, sid in made:
            served.delete(sid, tenant)
    served.settle()
    assert served.http.get("/v1/admin/sessions", headers=served.admin_headers()).json() == {"sessions": []}


def test_admin_pool_describes_every_models_groups(served):
    served.settle()
    body = served.http.get("/v1/admin/pool", headers=served.admin_headers()).json()
    assert set(body["models"]) == set(served.config.models)
    nodes = _node_ids()
    for name, pool in body["models"].items():
        assert pool["min_groups"] <= pool["target"] <= pool["max_groups"], (name, pool)
        assert pool["queued"] == 0
        assert pool["groups"] and all(g["state"] == "free" and g["session_id"] is None for g in pool["groups"]), pool
    tiny = body["models"]["helios-tiny"]["groups"]
    assert len(tiny) == 2 and all(g["group_id"] and g["node_id"] in nodes for g in tiny)


def test_admin_routes_are_in_the_openapi(served):
    spec = served.http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for route, schema in (("/v1/admin/pool", "AdminPools"), ("/v1/admin/sessions", "AdminSessions")):
        ok = spec["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{schema}"}
    groups = schemas["AdminGroup"]["properties"]
    assert groups["state"]["enum"] == ["building", "free", "leased", "broken"]
    assert {"min_groups", "max_groups", "target", "queued", "groups"} <= set(schemas["AdminPool"]["properties"])
