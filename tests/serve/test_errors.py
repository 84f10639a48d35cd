"""The error mapping of the front door: each typed exception -> its status and a JSON body naming the field.

Pure tests (no Ray cluster): the handlers run in a small FastAPI app under TestClient,
and Ray's wrapping of an actor's exception is built the way Ray builds it.
"""

from __future__ import annotations

import inspect
import math
import pickle

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from ray.exceptions import RayTaskError

from deployments import protocol as P
from deployments.http.errors import error_response, install_error_handlers, status_of, ws_close_code
from deployments.http.middleware import BodyLimit
from deployments.protocol import ServeError, cause_of

CASES = [
    (P.InvalidField("format: 'flv' is not one of ['mjpeg', 'mp4', 'msgpack']", field="format"), 422, "format"),
    (P.UnknownModel("model: 'x' is not offered; choose one of ['helios-tiny']"), 422, "model"),
    (P.BadCommand("args.prompt: Field required", ack={"id": "c1", "ok": False, "error": "args.prompt: Field required", "result": None}),
     422, "command"),
    (P.Unauthorized("authorization: wrong API key"), 401, "authorization"),
    (P.ViewerTokenRejected("token: wrong API key or viewer token"), 401, "token"),
    (P.ViewerTokenExpired("token: the viewer token expired at 2026-12-01T00:00:00+00:00"), 401, "token"),
    (P.ApiKeyInQuery("token: that is an API key, and API keys are not accepted in the query string"), 401, "token"),
    (P.ApiKeyInQuery("api_key: API keys are not accepted in the query string", field="api_key"), 401, "api_key"),
    (P.OriginNotAllowed("origin: 'https://evil.example' may not call this API from a browser (cors_allowed_origins)"), 403, "origin"),
    (P.AdminOnly("authorization: a tenant's API key does not open the admin API; send an admin key (admin_keys)"), 403, "authorization"),
    (P.InvalidPath("path: '..' is not a static file name"), 400, "path"),
    (P.SessionNotFound("session_id: no session 'abc'"), 404, "session_id"),
    (P.RecordingNotFound("recording: no recording for session 'abc' yet"), 404, "recording"),
    (P.SegmentNotFound("segment: 9.m4s is not in the playlist"), 404, "segment"),
    (P.BadDirective("_HLS_part: needs _HLS_msn", field="_HLS_part"), 400, "_HLS_part"),
    (P.PlaylistNotReady("_HLS_msn: segment 9 did not appear within 6s", retry_after_s=2.0), 503, "_HLS_msn"),
    (P.NotFound("path: no static file 'x.js'"), 404, "path"),
    (P.SessionQueued("session_id: session is queued (position 2)", position=2), 409, "session_id"),
    (P.SessionEnded("session_id: session has ended (deleted)", end_reason="deleted"), 409, "session_id"),
    (P.StreamEnded("session_id: session has ended (deleted); see recording.mp4"), 410, "session_id"),
    (P.BodyTooLarge("body: request body over the 1024-byte limit"), 413, "body"),
    (P.RangeNotSatisfiable("range: 'bytes=99-' is outside the 10 bytes recorded so far", length=10), 416, "range"),
    (P.QuotaExceeded("tenant 'bob' already holds 1 sessions (max_concurrent_sessions)", retry_after_s=2), 429, "tenant"),
    (P.ConnectionLimitExceeded("connections: session has 64 viewers, the max_viewers_per_session limit", limit="max_viewers_per_session"),
     429, "connections"),
    (P.LimitExceeded("request: over some limit"), 429, "request"),
    (P.NoCapacity("model: all 'm' groups are busy and the queue is full", retry_after_s=2), 429, "model"),
    (P.QueuedCommandsFull("command: 32 commands already wait for this queued session; the max_queued_commands limit is 32"),
     429, "command"),
    (P.CommandRateLimited("command: over the tenant's command_rate of 5/s", retry_after_s=0.4), 429, "command"),
    (P.ShuttingDown("server: the server is shutting down", retry_after_s=5), 503, "server"),
    (P.SessionStartFailed("session: session could not start: boom", retry_after_s=5), 503, "session"),
    (P.RelayUnavailable("stream: relay failed (RuntimeError: x)"), 503, "stream"),
    (P.RecordingUnavailable("recording: the recording store RecordingStorage('s3://b/r') failed: timeout", retry_after_s=5), 503, "recording"),
    (P.CommandTimeout("command: no ack within 30s"), 504, "command"),
]


class Body(BaseModel):
    seed: int


def _app() -> FastAPI:
    """An app whose one route raises the error it is told to (by index into CASES)."""

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_of=lambda: 1024)

    @app.get("/raise/{i}")
    async def raise_case(i: int, wrapped: bool = False):
        exc = CASES[i][0]
        if wrapped:  # as an actor's exception reaches the caller
            raise RayTaskError("actor_method", "Traceback ...", exc).as_instanceof_cause()
        raise exc

    @app.post("/body")
    async def body(b: Body):
        return {"seed": b.seed}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


@pytest.mark.parametrize("wrapped", [False, True], ids=["raised", "ray-wrapped"])
@pytest.mark.parametrize(("i", "status", "field"), [(i, s, f) for i, (_, s, f) in enumerate(CASES)],
                         ids=[type(c[0]).__name__ for c in CASES])
def test_each_error_has_its_status_and_a_body_naming_the_field(client, i, status, field, wrapped):
    exc = CASES[i][0]
    r = client.get(f"/raise/{i}", params={"wrapped": wrapped})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and body["detail"] == exc.detail
    if isinstance(exc, P.BadCommand):  # the session's refusal names the argument; `field` says it was the command
        assert body["detail"].startswith("args.prompt:")
        assert body["ack"] == exc.ack and body["ack"]["ok"] is False
    else:
        assert field in body["detail"] and "ack" not in body
    assert body.get("limit") == (exc.limit if isinstance(exc, P.LimitExceeded) else None)
    if isinstance(exc, P.LimitExceeded):
        assert body.get("retry_after_s") == exc.retry_after_s
    if exc.retry_after_s is not None:
        assert r.headers["retry-after"] == str(max(1, math.ceil(exc.retry_after_s)))  # whole seconds, never 0
    else:
        assert "retry-after" not in r.headers
    assert (r.headers.get("www-authenticate") == "Bearer") == (status == 401)
    assert (r.headers.get("content-range") == "bytes */10") == (status == 416)


def test_every_protocol_error_is_mapped():
    errors = [c for _, c in inspect.getmembers(P, inspect.isclass) if issubclass(c, ServeError) and c is not ServeError]
    assert {type(c[0]) for c in CASES} == set(errors), "a protocol error without a case here"
    for cls in errors:
        assert status_of(cls("x")) < 500 or cls in (
            P.ShuttingDown, P.SessionStartFailed, P.RelayUnavailable, P.CommandTimeout, P.PlaylistNotReady, P.RecordingUnavailable
        ), cls
    assert status_of(ServeError("unmapped")) == 500


@pytest.mark.parametrize("i", range(len(CASES)), ids=[type(c[0]).__name__ for c in CASES])
def test_errors_cross_ray_intact(i):
    exc = CASES[i][0]
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc) and vars(copy) == vars(exc) and str(copy) == exc.detail
    wrapped = RayTaskError("m", "tb", copy).as_instanceof_cause()
    assert isinstance(wrapped, type(exc))  # `except P.SessionNotFound:` still catches it
    nested = RayTaskError("outer", "tb", wrapped)
    assert cause_of(nested) is copy and vars(cause_of(wrapped)) == vars(exc)
    assert error_response(wrapped).status_code == status_of(exc)


def test_bad_input_errors_are_value_errors():
    """The relay's callers (and its tests) catch bad input as ValueError."""
    assert issubclass(P.InvalidField, ValueError) and issubclass(P.SessionNotFound, ValueError)
    assert not issubclass(P.QuotaExceeded, ValueError)


def test_unknown_attribute_is_refused():
    with pytest.raises(TypeError, match="position"):
        P.SessionEnded("x", position=3)


def test_ws_close_codes():
    assert ws_close_code(P.Unauthorized("authorization: x")) == 4401
    assert ws_close_code(P.ViewerTokenRejected("token: x")) == 4401
    assert ws_close_code(P.SessionNotFound("session_id: x")) == 4404


def test_validation_and_body_limit_name_the_field(client):
    r = client.post("/body", json={"seed": "nope"})
    assert r.status_code == 422 and r.json()["detail"].startswith("seed:")
    r = client.post("/body", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"] and r.json()["field"] == "body"
    r = client.post("/body", content=b'{"seed": 1, "pad": "' + b"x" * 2000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"detail": "body: request body over the 1024-byte limit (max_body_bytes)", "field": "body"}
    assert client.get("/nowhere").status_code == 404 and "detail" in client.get("/nowhere").json()


def test_a_json_body_that_is_not_utf8_is_a_422_naming_the_body(client):
    """Found by the API fuzzer: FastAPI answered 400 "There was an error parsing the body" (undocumented, no field)."""
    r = client.post("/body", content=b'{"seed": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "body" and body["detail"].startswith("body: malformed JSON (not UTF-8")


def test_validation_errors_name_their_first_field(client):
    r = client.post("/body", json={"seed": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "seed"
    r = client.post("/body", json=None)
    assert r.status_code == 422 and r.json()["field"] == "body"
