"""The front door's guards without a cluster: body limit (chunked too), strict numbers, static
paths, security headers, CORS, the metrics cache, key digests and config errors.

The middleware and helpers are the ones the FastAPI app installs (deployments/http/ingress.py),
run here in a small app under TestClient; the same holes are probed over real HTTP in
test_guards_e2e.py.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from deployments.app import prepare_config
from deployments.auth import Authenticator
from deployments.config import ServingConfig, key_digest
from deployments.config_keys import with_env_keys
from deployments.http.errors import install_error_handlers
from deployments.http.headers import API_CSP, PAGE_CSP, Cors, SecurityHeaders
from deployments.http.middleware import BodyLimit
from deployments.http.params import MAX_COUNT, parse_count
from deployments.http.routes_ops import static_file
from deployments.metrics import FrontDoorMetrics
from deployments.protocol import InvalidField, InvalidPath, SessionRecord, SessionStats
from deployments.stats_cache import TimedCache

LIMIT = 1024
KEY = "k" * 20


class Body(BaseModel):
    pad: str = ""


def _app(origins: list[str] | None = None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit_of=lambda: LIMIT)
    app.add_middleware(Cors, origins_of=lambda: origins or [])
    app.add_middleware(SecurityHeaders)

    @app.post("/v1/echo")
    async def echo(b: Body):
        return {"len": len(b.pad)}

    @app.get("/v1/count")
    async def count(request: Request):
        return {"n": parse_count(request.headers.get("last-event-id", "0"), "Last-Event-ID")}

    @app.get("/")
    async def page():
        return {"page": True}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


def _chunks(total: int, piece: int = 300):
    """A JSON body of about `total` bytes, streamed in pieces (so it goes out chunked)."""
    yield b'{"pad": "'
    for _ in range(total // piece):
        yield b"x" * piece
    yield b'"}'


# ---- body limit ---------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413_naming_the_limit(client):
    """No Content-Length: the body streams in; before, FastAPI turned the overflow into a 400."""
    r = client.post("/v1/echo", content=_chunks(5 * LIMIT), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": f"body: request body over the {LIMIT}-byte limit (max_body_bytes)", "field": "body"}


def test_chunked_body_under_the_limit_is_read_whole(client):
    body = b'{"pad": "' + b"y" * 700 + b'"}'
    r = client.post("/v1/echo", content=iter([body[:100], body[100:400], body[400:]]), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"len": 700}


def test_declared_body_over_the_limit_is_413(client):
    r = client.post("/v1/echo", json={"pad": "z" * 2 * LIMIT})
    assert r.status_code == 413 and r.json()["field"] == "body"


# ---- numbers ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["²", "٣", "1_000", "+1", "-1", "0x1f", "1e3", "", " ", "5" * 5000, str(MAX_COUNT + 1), "1.0"])
def test_strict_numbers_refuse_what_int_would_take_or_choke_on(raw):
    with pytest.raises(InvalidField) as info:
        parse_count(raw, "Last-Event-ID")
    assert info.value.field == "Last-Event-ID" and info.value.detail.startswith("Last-Event-ID: must be a whole number")
    assert len(info.value.detail) < 200  # 5,000 digits are not echoed back


@pytest.mark.parametrize(("raw", "value"), [("0", 0), ("42", 42), (" 7 ", 7), (str(MAX_COUNT), MAX_COUNT)])
def test_strict_numbers_accept_plain_digits(raw, value):
    assert parse_count(raw, "after") == value


def test_bad_number_header_is_422_naming_it(client):
    for raw in ["²".encode("latin-1"), "²".encode(), b"9" * 5000]:  # bytes: the header as a client sends it
        r = client.get("/v1/count", headers={"last-event-id": raw})
        assert r.status_code == 422 and r.json()["field"] == "Last-Event-ID", r.text


# ---- static paths ------------------------------------------------------------------------
@pytest.fixture
def web(tmp_path):
    (tmp_path / "app.js").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.css").write_text("y")
    (tmp_path / ".secret").write_text("z")
    (tmp_path.parent / "outside.txt").write_text("no")
    return tmp_path


@pytest.mark.parametrize("path", ["\x00", "app.js\x00.png", "../outside.txt", "sub/../../outside.txt", "/etc/passwd", "..",
                                  "sub\\a.css", "%2e%2e/outside.txt", "app%00.js", ".secret", "sub//a.css", "sub/", "é.js",
                                  "\u202eapp.js", "a" * 500, "\n", "C:\\windows"])
def test_malformed_static_paths_are_invalid(web, path):
    with pytest.raises(InvalidPath) as info:
        static_file(web, path)
    assert info.value.field == "path" and info.value.detail.startswith("path:")


def test_static_paths_name_files_under_the_root_only(web):
    assert static_file(web, "app.js") == (web / "app.js").resolve()
    assert static_file(web, "sub/a.css") == (web / "sub" / "a.css").resolve()
    assert static_file(web, "missing.js") is None and static_file(web, "sub") is None


def test_static_symlink_out_of_the_root_is_not_served(web):
    (web / "link.txt").symlink_to(web.parent / "outside.txt")
    assert static_file(web, "link.txt") is None


# ---- security headers and CORS -------------------------------------------------------------
def test_security_headers_on_page_api_and_errors(client):
    for path, csp in [("/", PAGE_CSP), ("/v1/count", API_CSP), ("/nowhere", API_CSP)]:
        r = client.get(path)
        assert r.headers["content-security-policy"] == csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in csp
        assert r.headers["referrer-policy"] == "no-referrer"
    r = client.post("/v1/echo", json={"pad": "z" * 2 * LIMIT})  # answered by the body limit itself
    assert r.status_code == 413 and r.headers["x-content-type-options"] == "nosniff"


def test_page_csp_allows_nothing_inline_or_foreign():
    directives = dict(d.strip().split(" ", 1) for d in PAGE_CSP.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert "unsafe-inline" not in PAGE_CSP and "unsafe-eval" not in PAGE_CSP and "http" not in PAGE_CSP


def test_cors_is_closed_by_default(client):
    r = client.get("/v1/count", headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/echo", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert pre.status_code == 403 and pre.json()["field"] == "origin" and "cors_allowed_origins" in pre.json()["detail"]
    assert "access-control-allow-origin" not in pre.headers


def test_cors_allows_listed_origins_only():
    c = TestClient(_app(["https://app.example.com"]))
    ok = "https://app.example.com"
    pre = c.options("/v1/echo", headers={"origin": ok, "access-control-request-method": "POST",
                                         "access-control-request-headers": "authorization,content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == ok
    assert "Authorization" in pre.headers["access-control-allow-headers"]
    r = c.get("/v1/count", headers={"origin": ok})
    assert r.headers["access-control-allow-origin"] == ok and r.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in c.get("/v1/count", headers={"origin": "http://app.example.com"}).headers
    assert c.options("/v1/echo", headers={"origin": "https://app.example.com.evil", "access-control-request-method": "POST"}).status_code == 403


def test_cors_origins_are_validated():
    with pytest.raises(ValidationError, match="cors_allowed_origins"):
        _config(cors_allowed_origins=["https://app.example.com/path"])
    assert _config(cors_allowed_origins=["*", "http://localhost:8080"]).cors_allowed_origins == ["*", "http://localhost:8080"]


# ---- metrics cache and privacy ---------------------------------------------------------------
def test_metrics_cache_fetches_once_per_ttl_whatever_the_callers():
    now = [100.0]
    calls = []

    async def fetch():
        calls.append(now[0])
        await asyncio.sleep(0)  # let the other callers pile up on the lock
        return len(calls)

    async def scenario():
        cache = TimedCache(fetch, ttl_s=5.0, clock=lambda: now[0])
        first = await asyncio.gather(*(cache.get() for _ in range(50)))
        now[0] += 4.9
        again = await cache.get()
        now[0] += 0.2
        later = await cache.get()
        return first, again, later, cache.fetches

    first, again, later, fetches = asyncio.run(scenario())
    assert first == [1] * 50 and again == 1 and later == 2 and fetches == 2


def test_metrics_cache_does_not_keep_a_failure():
    state = {"fail": True}

    async def fetch():
        if state["fail"]:
            raise RuntimeError("registry down")
        return "ok"

    async def scenario():
        cache = TimedCache(fetch, ttl_s=60.0)
        with pytest.raises(RuntimeError):
            await cache.get()
        state["fail"] = False
        return await cache.get()

    assert asyncio.run(scenario()) == "ok"


def test_metrics_name_no_tenant_and_no_session():
    sid = "a" * 32
    stats = {
        "tenants": {"acme-secret-customer": {"active": 1, "queued": 1}},
        "models": {"m1": {"free": 0, "leased": 1, "building": 0, "queued": 1, "failed_builds": 0, "last_error": None}},
        "sessions": {sid: {"tenant": "acme-secret-customer", "model": "m1", "status": "active"},
                     "b" * 32: {"tenant": "acme-secret-customer", "model": "m1", "status": "queued"}},
        "counters": {"sessions_created": 2},
        "shutting_down": False,
    }
    info = SessionStats(sid, "acme-secret-customer", "m1", {}, False, None, 3, 12.5, [10.0, 11.0, 12.0], 1)
    text = FrontDoorMetrics().render(stats, [info]).decode()
    assert "acme" not in text and sid not in text and "b" * 32 not in text
    assert 'helios_sessions_active{model="m1"} 1.0' in text and 'helios_sessions_queued{model="m1"} 1.0' in text
    assert 'helios_effective_fps{model="m1",stat="mean"} 12.5' in text and "helios_tenants_with_sessions 1.0" in text
    names = {pair.split("=")[0] for line in text.splitlines() if "{" in line and not line.startswith("#")
             for pair in line.split("{")[1].split("}")[0].split(",")}
    assert names <= {"model", "state", "stat", "counter", "format", "kind", "le"}, names


# ---- viewer token expiry ---------------------------------------------------------------------------
def test_viewer_token_expires_at_end_plus_grace_or_ttl():
    rec = SessionRecord("s" * 32, "t", "m", "tok", None, "a")
    assert rec.token_expires_at(600) is None  # running: no end yet
    assert rec.token_expires_at(600, ttl_s=60) == pytest.approx(rec.token_issued_at + 60)
    rec.end("deleted")
    assert rec.token_expires_at(600) == pytest.approx(rec.ended_at + 600)
    assert rec.token_expires_at(600, ttl_s=60) == pytest.approx(rec.token_issued_at + 60)


# ---- keys ---------------------------------------------------------------------------------------------
def _config(**extra) -> ServingConfig:
    return ServingConfig.model_validate({"models": {"t": {"kind": "test-pattern"}}, **extra})


def test_short_key_is_a_config_error_naming_the_tenant_not_the_key():
    key = "shortsecret1"
    with pytest.raises(ValidationError) as info:
        _config(tenants=[{"name": "acme", "api_keys": [KEY]}, {"name": "beta", "api_keys": [key]}])
    text = str(info.value)
    assert "'beta'" in text and "min_api_key_chars (16)" in text and key not in text and KEY not in text


def test_min_key_length_is_configurable():
    assert _config(min_api_key_chars=8, tenants=[{"name": "a", "api_keys": ["12345678"]}]).tenants[0].name == "a"


def test_key_of_two_tenants_is_a_config_error():
    with pytest.raises(ValidationError) as info:
        _config(tenants=[{"name": "acme", "api_keys": [KEY]}, {"name": "beta", "api_keys": [KEY]}])
    assert "mapped to two tenants ('acme' and 'beta')" in str(info.value) and KEY not in str(info.value)
    with pytest.raises(ValidationError, match="two tenants"):  # a digest of another tenant's key counts too
        _config(tenants=[{"name": "acme", "api_keys": [KEY]}, {"name": "beta", "api_key_digests": [key_digest(KEY)]}])


def test_env_keys_obey_the_same_rules():
    cfg = _config(tenants=[{"name": "acme", "api_keys": [KEY]}])
    with pytest.raises(ValidationError, match="two tenants"):
        with_env_keys(cfg, {"HELIOS_API_KEYS": f"beta:{KEY}"})
    with pytest.raises(ValidationError) as info:
        with_env_keys(cfg, {"HELIOS_API_KEYS": "beta:tiny-key"})
    assert "'beta'" in str(info.value) and "tiny-key" not in str(info.value)
    merged = with_env_keys(cfg, {"HELIOS_API_KEYS": "beta:" + "b" * 20})
    assert [t.name for t in merged.tenants] == ["acme", "beta"]


def test_prepared_config_holds_digests_only(monkeypatch):
    monkeypatch.delenv("HELIOS_API_KEYS", raising=False)
    env_key = "e" * 24
    monkeypatch.setenv("HELIOS_API_KEYS", f"beta:{env_key}")
    cfg = prepare_config(_config(tenants=[{"name": "acme", "api_keys": [KEY]}]))
    blob = pickle.dumps(cfg)  # what Ray ships to the front door and the registry
    assert KEY.encode() not in blob and env_key.encode() not in blob
    assert all(not t.api_keys for t in cfg.tenants)
    auth = Authenticator(cfg.digest_table())
    assert auth.tenant_of(KEY) == "acme" and auth.tenant_of(env_key) == "beta"
    assert auth.tenant_of("k" * 19) is None and auth.tenant_of(key_digest(KEY)) is None  # a digest is not a key


def test_digests_in_the_config_authenticate():
    cfg = _config(tenants=[{"name": "acme", "api_key_digests": [key_digest(KEY)]}])
    assert Authenticator(cfg.digest_table()).tenant_of(KEY) == "acme"
    with pytest.raises(ValidationError, match="api_key_digests"):
        _config(tenants=[{"name": "acme", "api_key_digests": ["not-hex"]}])


def test_generated_default_key_is_kept_as_a_digest(monkeypatch, capsys):
    monkeypatch.delenv("HELIOS_API_KEYS", raising=False)
    cfg = prepare_config(_config())
    shown = capsys.readouterr().err.split("tenant 'default':")[1].split()[0]
    assert Authenticator(cfg.digest_table()).tenant_of(shown) == "default" and shown.encode() not in pickle.dumps(cfg)


def test_record_round_trips_token_fields():
    rec = SessionRecord("s" * 32, "t", "m", "tok", None, "a")
    copy = pickle.loads(pickle.dumps(rec.public()))
    assert copy.token_issued_at == rec.token_issued_at and copy.viewer_token == "tok"


def test_last_states_keep_the_most_recently_read_sessions_and_forget_ended_ones():
    from deployments.http.last_states import LastStates

    states = LastStates(size=2)
    states.put("a", {"current_chunk": 1})
    states.put("b", {"current_chunk": 2})
    assert states.get("a")[0] == {"current_chunk": 1}  # read: most recently used now
    states.put("c", {"current_chunk": 3})  # over the bound: the least recently used ("b") goes
    assert states.get("b") is None and len(states) == 2
    state, age = states.get("c")
    assert state == {"current_chunk": 3} and 0 <= age < 60
    states.forget("a")
    assert states.get("a") is None and len(states) == 1
