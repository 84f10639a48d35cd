"""Hostile input against the real served app: every probe gets a 4xx with a JSON body naming the
problem, and the session it aimed at keeps running (issue 11, items 4-6).

Sessions use the test-pattern model (no model time). The served config sets
`viewer_token_grace_s: 10` so expiry is observable within a test.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def session(served):
    """A running test-pattern session of alice: (id, viewer token); deleted afterwards."""
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    assert served.command(sid, "set_prompt", prompt="a lighthouse at dusk").status_code == 200
    start = served.command(sid, "start")
    assert start.status_code == 200, start.text
    yield sid, r.json()["viewer_token"]
    served.delete(sid)


def assert_running(served, sid: str) -> None:
    """The session still answers commands and is active: the probe affected nothing."""
    ack = served.command(sid, "get_state")
    assert ack.status_code == 200 and ack.json()["ok"] is True, ack.text
    assert served.get(sid)["status"] == "active"


def assert_error(r: httpx.Response, status: int, field: str, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body.get("field", field) == field and body["detail"].startswith(f"{field}:"), body
    for w in words:
        assert w in body["detail"], body
    return body


def ws_url(served, sid: str, query: str = "") -> str:
    return served.base_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws" + (f"?{query}" if query else "")


# ---- item 4: input limits -----------------------------------------------------------------------------
def test_chunked_command_body_over_the_limit_is_413(served, session):
    sid, _ = session
    limit = served.config.max_body_bytes

    def body():
        yield b'{"command": "set_prompt", "args": {"prompt": "'
        for _ in range(limit // 8192 + 2):
            yield b"x" * 8192
        yield b'"}}'

    r = served.http.post(f"/v1/sessions/{sid}/commands", content=body(),
                         headers={**served.headers(), "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body", f"{limit}-byte limit", "max_body_bytes")
    assert_running(served, sid)


def test_websocket_frame_over_the_limit_closes_1009(served, session):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    sid, _ = session
    limit = served.config.max_body_bytes
    with connect(ws_url(served, sid), additional_headers=served.headers(), open_timeout=60, max_size=None) as ws:
        ws.send(json.dumps({"command": "get_state", "id": "small"}))
        wait_for(lambda: json.loads(ws.recv(timeout=60)).get("data", {}).get("id") == "small", 60, "the small frame's ack", poll=0)
        ws.send(b"\x00binary")  # binary frames are refused with an ack, the socket stays open
        wait_for(lambda: "binary" in (json.loads(ws.recv(timeout=60)).get("data", {}).get("error") or ""), 60, "binary refusal", poll=0)
        ws.send(json.dumps({"command": "set_prompt", "args": {"prompt": "x" * (limit + 10)}}))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=60)
    assert ws.close_code == 1009 and "max_body_bytes" in (ws.close_reason or ""), (ws.close_code, ws.close_reason)
    assert_running(served, sid)


@pytest.mark.parametrize("raw", ["²".encode("latin-1"), "²".encode(), b"9" * 5000, b"-1", b"1e3", b"0x10"],
                         ids=["superscript", "utf8-superscript", "5000-digits", "negative", "exponent", "hex"])
def test_bad_last_event_id_is_422_naming_it(served, session, raw):
    sid, token = session
    r = served.http.get(f"/v1/sessions/{sid}/events", params={"token": token}, headers={"Last-Event-ID": raw})
    body = assert_error(r, 422, "Last-Event-ID", "whole number")
    assert len(body["detail"]) < 200
    assert_running(served, sid)


@pytest.mark.parametrize(("route", "name", "value"), [
    ("events", "after", "²"), ("events", "after", "9" * 5000), ("events", "after", "-3"),
    ("stream", "from", "²"), ("stream", "from", "9" * 5000), ("stream", "from", "x"),
])
def test_bad_numeric_query_is_422_naming_it(served, session, route, name, value):
    sid, token = session
    r = served.http.get(f"/v1/sessions/{sid}/{route}", params={"token": token, name: value, "format": "mjpeg"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{name}:"), r.text
    assert_running(served, sid)


def test_bad_websocket_after_is_refused_before_accept(served, session):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sid, _ = session
    for value in ["%C2%B2", "9" * 5000]:
        with pytest.raises(InvalidStatus) as info:  # closed before accept: the handshake is answered 403
            with connect(ws_url(served, sid, f"after={value}"), additional_headers=served.headers(), open_timeout=60):
                pass
        assert 400 <= info.value.response.status_code < 500, info.value
    assert_running(served, sid)


@pytest.mark.parametrize(("path", "status"), [
    ("/static/%00", 400), ("/static/app.js%00.png", 400), ("/static/%2e%2e/%2e%2e/etc/passwd", 400),
    ("/static/..%2f..%2fetc%2fpasswd", 400), ("/static/%252e%252e/x", 400), ("/static/%2Fetc%2Fpasswd", 400),
    ("/static/a%5Cb.js", 400), ("/static/%C0%AE%C0%AE/x", 400), ("/static/.hidden", 400), ("/static/nothing-here.js", 404),
])
def test_static_paths_are_validated(served, path, status):
    r = served.http.get(path)
    assert_error(r, status, "path")


def test_static_path_with_a_line_break_matches_no_route(served):
    """`{path:path}` does not match a newline: the router's own JSON 404, no header injected."""
    r = served.http.get("/static/%0d%0aSet-Cookie:x=1")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"} and "set-cookie" not in r.headers


def test_static_file_is_served_with_page_headers(served):
    r = served.http.get("/static/app.js")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]


# ---- item 5: tokens and keys ----------------------------------------------------------------------------
def test_api_key_in_the_query_string_is_refused(served, session):
    sid, token = session
    key = served.keys["alice"]
    for params in ({"token": key}, {"api_key": key}, {"api_key": "anything"}):
        r = served.http.get(f"/v1/sessions/{sid}", params=params)
        body = assert_error(r, 401, next(iter(params)), "query string", "Authorization: Bearer")
        assert key not in body["detail"]
    # Even beside a good header (the key in the URL has leaked already: say so).
    assert_error(served.http.get(f"/v1/sessions/{sid}", params={"token": key}, headers=served.headers()), 401, "token")
    assert_error(served.http.post(f"/v1/sessions/{sid}/commands", params={"api_key": key}, json={"command": "get_state"}),
                 401, "api_key")
    assert served.http.get(f"/v1/sessions/{sid}", params={"token": token}).status_code == 200  # a viewer token still works
    assert_running(served, sid)


def test_api_key_as_websocket_query_token_is_refused(served, session):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sid, _ = session
    with pytest.raises(InvalidStatus):
        with connect(ws_url(served, sid, f"token={served.keys['alice']}"), open_timeout=60):
            pass
    assert_running(served, sid)


def test_owner_rotates_the_viewer_token(served, session):
    sid, old = session
    r = served.http.post(f"/v1/sessions/{sid}/viewer-token", headers=served.headers())
    assert r.status_code == 200, r.text
    body = r.json()
    new = body["viewer_token"]
    assert new != old and body["session_id"] == sid and body["expires_at"] is None and f"token={new}" in body["urls"]["events"]
    assert_error(served.http.get(f"/v1/sessions/{sid}", params={"token": old}), 401, "token", "rotated")
    assert_error(served.http.get(f"/v1/sessions/{sid}/stream", params={"token": old, "format": "mjpeg"}), 401, "token")
    assert served.http.get(f"/v1/sessions/{sid}", params={"token": new}).status_code == 200
    assert served.get(sid)["viewer_token"] == new and served.get(sid)["urls"]["player"].endswith(f"token={new}")
    # Only the owner rotates: a viewer token, another tenant and no key are refused.
    assert_error(served.http.post(f"/v1/sessions/{sid}/viewer-token", params={"token": new}), 401, "authorization")
    assert_error(served.http.post(f"/v1/sessions/{sid}/viewer-token", headers=served.headers("bob")), 404, "session_id")
    assert_error(served.http.post(f"/v1/sessions/{'0' * 32}/viewer-token", headers=served.headers()), 404, "session_id")
    assert_running(served, sid)


def test_viewer_token_expires_after_the_session_ends(served):
    r = served.create(model="test-pattern")
    sid, token = r.json()["session_id"], r.json()["viewer_token"]
    served.delete(sid)
    grace = served.config.viewer_token_grace_s

    def expired():
        got = served.http.get(f"/v1/sessions/{sid}", params={"token": token})
        return got if got.status_code == 401 else None

    r = wait_for(expired, grace + 60, "the viewer token to expire")
    assert_error(r, 401, "token", "expired", "viewer_token_grace_s")
    assert served.get(sid)["status"] == "ended"  # the owner's key still reads the ended session


# ---- item 6: operator surfaces -----------------------------------------------------------------------------
def test_security_headers_on_page_and_api(served):
    page = served.http.get("/")
    api = served.http.get("/v1/models")
    for r in (page, api):
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert api.headers["content-security-policy"].startswith("default-src 'none'")


def test_cors_is_closed(served, session):
    sid, _ = session
    r = served.http.get(f"/v1/sessions/{sid}", headers={**served.headers(), "Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = served.http.options(f"/v1/sessions/{sid}/commands",
                              headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert_error(pre, 403, "origin", "cors_allowed_origins")


def test_metrics_name_no_tenant_and_no_session(served, session):
    sid, _ = session

    def scrape():
        text = served.http.get("/metrics").text
        return text if 'helios_sessions_active{model="test-pattern"}' in text and "test-pattern\",stat=\"mean\"" in text else None

    text = wait_for(scrape, 60, "metrics with the test-pattern session")
    assert sid not in text and "alice" not in text and "tenant=" not in text and "session=" not in text
    assert 'helios_shard_groups{model="helios-tiny",state="free"}' in text
