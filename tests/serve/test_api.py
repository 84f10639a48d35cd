"""HTTP API of the front door against the real served app: auth, admission, quotas, bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e


def read_sse(client: httpx.Client, url: str, until, headers=None, timeout: float = 120) -> list[tuple[int, dict]]:
    """Messages from an SSE stream until `until(message)` holds (inclusive)."""
    out = []
    with client.stream("GET", url, headers=headers or {}, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        seq = None
        for line in r.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                msg = json.loads(line[6:])
                out.append((seq, msg))
                if until(msg):
                    break
    return out


def test_health_models_docs(served):
    assert served.http.get("/healthz").json()["status"] == "ok"
    names = {m["name"] for m in served.http.get("/v1/models").json()}
    assert names == {"helios-tiny", "test-pattern"}
    assert served.http.get("/docs").status_code == 200
    spec = served.http.get("/openapi.json").json()
    assert "/v1/sessions/{session_id}/commands" in spec["paths"]


def test_session_lifecycle_over_http(served):
    r = served.create(model="test-pattern", seed=3)
    assert r.status_code == 201, r.text
    body = r.json()
    sid = body["session_id"]
    assert body["status"] == "active" and body["viewer_token"] and body["urls"]["events"].startswith(f"/v1/sessions/{sid}/events")
    ack = served.command(sid, "set_prompt", prompt="a red fox")
    assert ack.status_code == 200 and ack.json()["ok"] is True, ack.text
    assert served.command(sid, "start").status_code == 200
    msgs = read_sse(served.http, body["urls"]["events"], lambda m: m["data"].get("event") == "chunk_complete")
    events = [m["data"].get("event") for _, m in msgs if m["type"] == "event"]
    assert "generation_started" in events and events[-1] == "chunk_complete"
    seqs = [s for s, _ in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    info = served.get(sid)
    assert info["status"] == "active" and info["state"]["running"] is True
    d = served.delete(sid)
    assert d.status_code == 200 and d.json()["end_reason"] == "deleted"
    tail = read_sse(served.http, body["urls"]["events"] + f"&after={seqs[-1]}", lambda m: m["data"].get("event") == "session_ended")
    assert tail[-1][1]["data"] == {"event": "session_ended", "reason": "deleted"}
    assert served.get(sid)["status"] == "ended"


def _cleanup(served, sids, tenant="alice"):
    for sid in sids:
        served.delete(sid, tenant)


def test_auth_missing_wrong_and_foreign(served):
    assert served.http.post("/v1/sessions", json={}).status_code == 401
    r = served.http.post("/v1/sessions", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "authorization" in r.json()["detail"]
    assert r.headers.get("www-authenticate") == "Bearer"
    sid = served.create(model="test-pattern").json()["session_id"]
    try:
        # Another tenant cannot see, command or delete it.
        assert served.http.get(f"/v1/sessions/{sid}", headers=served.headers("bob")).status_code == 404
        assert served.command(sid, "start", tenant="bob").status_code == 404
        assert served.delete(sid, tenant="bob").status_code == 404
        # The viewer token reads but cannot command.
        token = served.get(sid)["viewer_token"]
        viewer = served.http.get(f"/v1/sessions/{sid}", params={"token": token})
        assert viewer.status_code == 200 and viewer.json()["viewer_token"] is None
        assert served.http.get(f"/v1/sessions/{sid}", params={"token": "wrong"}).status_code == 401
        assert served.http.post(f"/v1/sessions/{sid}/commands", params={"token": token}, json={"command": "start"}).status_code == 401
    finally:
        _cleanup(served, [sid])


def test_admission_queue_position_and_429(served):
    served.wait_free("test-pattern", 2)
    first = [served.create(model="test-pattern") for _ in range(2)]
    assert [r.status_code for r in first] == [201, 201], [r.text for r in first]
    queued = served.create(model="test-pattern")
    assert queued.status_code == 202, queued.text
    q = queued.json()
    assert q["status"] == "queued" and q["position"] == 1 and queued.headers["retry-after"] == "2"
    full = served.create(model="test-pattern")
    assert full.status_code == 429 and full.headers["retry-after"] == "2" and "queue" in full.json()["detail"]
    sids = [r.json()["session_id"] for r in first]
    try:
        info = served.get(q["session_id"])
        assert info["status"] == "queued" and info["position"] == 1
        # Only set-up commands are kept for admission (tests/serve/test_queued_commands.py); others: 409.
        paused = served.command(q["session_id"], "pause")
        assert paused.status_code == 409 and "queued" in paused.json()["detail"], paused.text
        served.delete(sids.pop(0))
        served.wait_active(q["session_id"], timeout=60)
        sids.append(q["session_id"])
    finally:
        _cleanup(served, sids)


def test_tenant_quota_concurrent_sessions(served):
    one = served.create("bob", model="test-pattern")
    assert one.status_code == 201, one.text
    try:
        two = served.create("bob", model="test-pattern")
        assert two.status_code == 429 and "max_concurrent_sessions" in two.json()["detail"]
    finally:
        _cleanup(served, [one.json()["session_id"]], "bob")
    # Freed: the tenant may create again.
    again = served.create("bob", model="test-pattern")
    assert again.status_code == 201
    _cleanup(served, [again.json()["session_id"]], "bob")


def test_tenant_session_time_limit(served):
    r = served.create("carol", model="test-pattern")
    assert r.status_code == 201, r.text
    body = r.json()
    msgs = read_sse(served.http, body["urls"]["events"], lambda m: m["data"].get("event") == "session_ended", timeout=60)
    assert msgs[-1][1]["data"] == {"event": "session_ended", "reason": "time_limit"}
    assert served.get(body["session_id"], "carol")["end_reason"] == "time_limit"


def test_bad_http_input_gets_4xx_naming_the_problem(served):
    h = {**served.headers(), "Content-Type": "application/json"}
    bad_json = served.http.post("/v1/sessions", content=b"{not json", headers=h)
    assert bad_json.status_code == 422 and "malformed JSON" in bad_json.json()["detail"]
    wrong_type = served.create(model="test-pattern", seed="many")
    assert wrong_type.status_code == 422 and "seed" in wrong_type.json()["detail"]
    unknown_field = served.create(model="test-pattern", colour="red")
    assert unknown_field.status_code == 422 and "colour" in unknown_field.json()["detail"]
    bad_model = served.create(model="nope")
    assert bad_model.status_code == 422 and "model" in bad_model.json()["detail"]
    huge = served.http.post("/v1/sessions", content=b'{"seed": 1, "x": "' + b"a" * 300_000 + b'"}', headers=h)
    assert huge.status_code == 413 and "limit" in huge.json()["detail"]
    for bad_id in ("nope", "0" * 32):
        assert served.http.get(f"/v1/sessions/{bad_id}", headers=served.headers()).status_code == 404
        assert served.command(bad_id, "start").status_code == 404

    sid = served.create(model="test-pattern").json()["session_id"]
    try:
        unknown = served.command(sid, "dance")
        assert unknown.status_code == 422 and "unknown command" in unknown.json()["detail"]
        assert unknown.json()["ack"]["ok"] is False
        wrong_arg = served.command(sid, "set_prompt", prompt=5)
        assert wrong_arg.status_code == 422 and "prompt" in wrong_arg.json()["detail"]
        no_name = served.http.post(f"/v1/sessions/{sid}/commands", json={"args": {}}, headers=served.headers())
        assert no_name.status_code == 422 and "command" in no_name.json()["detail"]
        bad_fmt = served.http.get(f"/v1/sessions/{sid}/stream", params={"format": "gif"}, headers=served.headers())
        assert bad_fmt.status_code == 422 and "format" in bad_fmt.json()["detail"]
        bad_from = served.http.get(f"/v1/sessions/{sid}/stream", params={"format": "mp4", "from": -1}, headers=served.headers())
        assert bad_from.status_code == 422 and "from" in bad_from.json()["detail"]
        # Nothing else was disturbed: the session still takes commands.
        ok = served.command(sid, "set_prompt", prompt="still fine")
        assert ok.status_code == 200 and ok.json()["ok"] is True
        assert served.http.get("/healthz").status_code == 200
    finally:
        _cleanup(served, [sid])


def _gauge(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_exposes_sessions_and_latency(served):
    sid = served.create(model="test-pattern").json()["session_id"]
    try:
        # Numbers are cached for metrics_cache_s: wait for a scrape that has seen the session.
        text = wait_for(lambda: (t := served.http.get("/metrics").text) and _gauge(t, 'helios_sessions_active{model="test-pattern"}') >= 1 and t,
                        60, "a scrape counting the session")
        assert "alice" not in text and sid not in text
        assert "helios_chunk_latency_seconds_bucket" in text or "helios_chunk_latency_seconds" in text
        assert 'helios_shard_groups{model="helios-tiny",state="free"}' in text
    finally:
        _cleanup(served, [sid])
