"""Schemathesis against the live OpenAPI of a served app: bounded transport, checks, stateless and stateful runs.

Shared by tests/serve/test_api_fuzz.py (a small derandomized run in CI) and bench/fuzz_api.py
(a long run with random seeds). What a run asserts, per response:

- no 5xx (`not_a_server_error`);
- every 4xx is JSON whose `detail` names the problem (`error_body_names_problem`, below);
- status code, content type and body conform to the published schema.

Sessions are created with the `test-pattern` model (no model time) and started, so the
stateful run (create -> command -> stream -> delete, along the schema's OpenAPI links)
reads real frames; every session the fuzzer creates is deleted again. Streams never end
by themselves: their bodies are read for at most `STREAM_READ_S` or `STREAM_READ_BYTES`.
Serve's own 429 for `max_queued_requests` is plain text by design (docs/limits.md): it is
counted, not checked.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.transport import STREAM_CUT_SHORT_ATTRIBUTE, Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from urllib3.exceptions import ReadTimeoutError

logger = logging.getLogger(__name__)

STREAM_OPERATIONS = frozenset({"session_events", "session_stream", "hls_playlist", "hls_media"})
"""Routes whose answer may wait for the session (admission, first chunk): their headers may not come at once."""
STREAM_READ_S = 1.5
"""Longest a response body is read (an SSE or video stream never ends by itself)."""
STREAM_READ_BYTES = 256 * 1024
HEADERS_TIMEOUT_S = 60.0
"""Longest wait for the headers of a plain route (a loaded 2-core machine is slow, but never this slow)."""
STREAM_HEADERS_TIMEOUT_S = 5.0
"""Longest wait for a stream's headers (a queued session's stream waits for admission: counted, not failed)."""
SERVE_BACKPRESSURE = b"Request dropped due to backpressure"
"""Serve's own plain-text 429 body (front_door.max_queued_requests), answered before the app runs."""


def error_body_names_problem(ctx: Any, response: Response, case: Any) -> None:
    """A 4xx (and, were there one, a 5xx) is JSON with a non-empty `detail` string (errors.py's one body shape)."""
    if response.status_code < 400:
        return None
    media = (response.headers.get("content-type") or [""])[0]
    if not media.startswith("application/json"):
        raise AssertionError(f"{response.status_code} is {media or 'no content type'}, not a JSON error body: {response.content[:200]!r}")
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} body is not JSON ({exc}): {response.content[:200]!r}") from None
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str) or not detail.strip():
        raise AssertionError(f"{response.status_code} body has no `detail` string naming the problem: {body!r:.300}")
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_body_names_problem,
]


@dataclass
class FuzzTarget:
    """Where the app runs and who the fuzzer is: a tenant key of its own, and the admin key for /v1/admin."""

    base_url: str
    tenant_key: str
    admin_key: str | None = None
    model: str = "test-pattern"


@dataclass
class FuzzReport:
    """What a run saw: cases sent, statuses, failures (each with enough to reproduce it)."""

    cases: int = 0
    statuses: Counter = field(default_factory=Counter)
    operations: Counter = field(default_factory=Counter)
    """Cases sent per operation (`METHOD /path`)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    waited: int = 0
    """Stream requests whose headers did not come within STREAM_HEADERS_TIMEOUT_S (a queued session's stream)."""
    serve_backpressure: int = 0
    sessions_created: int = 0

    def failure_kinds(self) -> Counter:
        return Counter(f["kind"] for f in self.failures)

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "server_errors": sum(n for s, n in self.statuses.items() if s >= 500),
            "failures": len(self.failures),
            "failure_kinds": dict(self.failure_kinds()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "operations": len(self.operations),
            "waited": self.waited,
            "serve_backpressure": self.serve_backpressure,
            "sessions_created": self.sessions_created,
        }

    def describe_failures(self, limit: int = 20) -> str:
        """One paragraph per distinct failure (kind and operation), for an assertion message."""
        seen: dict[tuple[str, str], dict] = {}
        for f in self.failures:
            seen.setdefault((f["kind"], f["operation"]), f)
        return "\n\n".join(
            f"{f['kind']} on {f['operation']} ({f['status']}): {f['message']}\n  {f['curl']}" for f in list(seen.values())[:limit]
        )


class ApiFuzzer:
    """Sends schemathesis cases with bounded reads, checks the answers, and deletes every session it created."""

    def __init__(self, target: FuzzTarget):
        self.target = target
        self.http = requests.Session()
        raw = self.http.get(f"{target.base_url}/openapi.json", timeout=HEADERS_TIMEOUT_S)
        raw.raise_for_status()
        self.schema = schemathesis.openapi.from_dict(raw.json())
        self.schema.config.update(base_url=target.base_url)
        self.report = FuzzReport()
        self.live: set[str] = set()
        """Sessions created and not yet deleted."""
        self.start_sessions = False
        """Start each session created (the stateful run: its streams then carry frames)."""

    # ---- one case ---------------------------------------------------------------------
    def _headers(self, case: Any) -> dict[str, str]:
        admin = case.path.startswith("/v1/admin/") and self.target.admin_key
        return {"Authorization": f"Bearer {self.target.admin_key if admin else self.target.tenant_key}"}

    def _steer_create(self, case: Any) -> None:
        """A session the fuzzer creates is a test-pattern one unless it names a model (the default costs model time)."""
        if case.operation.definition.raw.get("operationId") == "create_session" and isinstance(case.body, dict):
            if case.body.get("model") is None:
                case.body["model"] = self.target.model

    def send(self, case: Any) -> Response | None:
        """Send `case`; its body read for at most STREAM_READ_S / STREAM_READ_BYTES. None: a stream whose headers waited."""
        self._steer_create(case)
        kwargs = case.as_transport_kwargs(base_url=self.target.base_url, headers=self._headers(case))
        streaming = case.operation.definition.raw.get("operationId") in STREAM_OPERATIONS
        kwargs["timeout"] = (HEADERS_TIMEOUT_S, STREAM_HEADERS_TIMEOUT_S if streaming else HEADERS_TIMEOUT_S)
        kwargs["allow_redirects"] = False
        self.report.cases += 1
        self.report.operations[case.operation.label] += 1
        try:
            response = self.http.request(**kwargs, stream=True)
        except requests.exceptions.ReadTimeout:
            if streaming:
                self.report.waited += 1
            else:  # a plain route that does not answer is a bug, as a 5xx is
                self._record(case, None, "No answer", f"no headers within {HEADERS_TIMEOUT_S:.0f} s")
            return None
        except requests.exceptions.ConnectionError as exc:
            self._record(case, None, "Connection failed", str(exc)[:300])
            return None
        response._content = self._bounded_body(response)
        out = Response.from_requests(response, verify=True)
        self.report.statuses[out.status_code] += 1
        self._track_sessions(case, out)
        return out

    def _bounded_body(self, response: requests.Response) -> bytes:
        """At most STREAM_READ_BYTES of the body, read for at most about STREAM_READ_S; the connection is then closed."""
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(STREAM_READ_S)  # no read waits past this; the loop's deadline bounds them all
        deadline = time.monotonic() + STREAM_READ_S
        pieces: list[bytes] = []
        size = 0
        complete = False
        try:
            while size < STREAM_READ_BYTES and time.monotonic() < deadline:
                try:
                    piece = response.raw.read1(64 * 1024, decode_content=True)
                except (ReadTimeoutError, TimeoutError):  # nothing more came in time: a stream, cut here
                    break
                if not piece:
                    complete = True
                    break
                pieces.append(piece)
                size += len(piece)
        finally:
            response.close()
        if not complete:
            setattr(response, STREAM_CUT_SHORT_ATTRIBUTE, True)
        return b"".join(pieces)

    def _track_sessions(self, case: Any, response: Response) -> None:
        if case.operation.definition.raw.get("operationId") != "create_session" or response.status_code not in (201, 202):
            return
        sid = response.json()["session_id"]
        self.live.add(sid)
        self.report.sessions_created += 1
        if response.status_code == 201 and self.start_sessions:  # frames to read for the streams
            self.http.post(f"{self.target.base_url}/v1/sessions/{sid}/commands", json={"command": "start"},
                           headers=self._headers(case), timeout=HEADERS_TIMEOUT_S)

    def check(self, case: Any, response: Response) -> None:
        """Run CHECKS on the answer; failures are recorded (the run goes on), never raised."""
        if response.status_code == 429 and response.content.startswith(SERVE_BACKPRESSURE):
            self.report.serve_backpressure += 1
            return
        try:
            case.validate_response(response, checks=CHECKS, headers=self._headers(case))
        except FailureGroup as group:
            for failure in group.exceptions:
                self._record(case, response.status_code, failure.title, failure.message)
        except Failure as failure:
            self._record(case, response.status_code, failure.title, failure.message)

    def _record(self, case: Any, status: int | None, kind: str, message: str) -> None:
        self.report.failures.append({
            "kind": kind,
            "operation": case.operation.label,
            "status": status,
            "message": message[:500],
            "curl": case.as_curl_command(base_url=self.target.base_url)[:600],
        })

    def exercise(self, case: Any) -> Response | None:
        """send + check (None: nothing to check; a stream that waited, or a failure already recorded)."""
        response = self.send(case)
        if response is not None:
            self.check(case, response)
        return response

    def delete_live(self) -> None:
        """DELETE every session the fuzzer created and has not deleted (its own key: it owns them)."""
        for sid in sorted(self.live):
            r = self.http.delete(f"{self.target.base_url}/v1/sessions/{sid}",
                                 headers={"Authorization": f"Bearer {self.target.tenant_key}"}, timeout=HEADERS_TIMEOUT_S)
            if r.status_code not in (200, 404):
                logger.warning("delete of fuzzed session %s answered %d: %s", sid, r.status_code, r.text[:200])
        self.live.clear()

    # ---- runs -------------------------------------------------------------------------
    def settings(self, max_examples: int, seed: int | None, **extra: Any) -> settings:
        """Hypothesis settings of a run: derandomized unless `seed` is given, no shrinking (each step is a request)."""
        return settings(
            max_examples=max_examples,
            derandomize=seed is None,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            **extra,
        )

    def run_stateless(self, max_examples: int, seed: int | None = None,
                      modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)) -> None:
        """Every operation, `max_examples` cases per generation mode."""
        for result in self.schema.get_all_operations():
            operation = result.ok()
            for mode in modes:
                @self.settings(max_examples, seed)
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def one(case: Any) -> None:
                    try:
                        self.exercise(case)
                    finally:
                        self.delete_live()

                if seed is not None:
                    one = hypothesis.seed(seed)(one)
                try:
                    one()
                except hypothesis.errors.Unsatisfiable:  # nothing to negate (an operation without parameters)
                    logger.info("no %s cases for %s", mode.value, operation.label)

    def run_stateful(self, max_examples: int, steps: int = 6, seed: int | None = None) -> None:
        """Scenarios along the schema's links (create -> command -> stream -> delete ...), `steps` calls each."""
        fuzzer = self

        class Machine(self.schema.as_state_machine()):  # type: ignore[misc, valid-type]
            def call(self, case: Any, **kwargs: Any) -> Response:
                response = fuzzer.send(case)
                hypothesis.assume(response is not None)  # a stream that waited: nothing to chain from
                return response

            def validate_response(self, response: Response, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
                fuzzer.check(case, response)

            def teardown(self) -> None:
                fuzzer.delete_live()

        run = self.settings(max_examples, seed, stateful_step_count=steps)  # a seed: random scenarios, rules shuffled by it
        if seed is not None:
            Machine.rule_order_seed = seed
        self.start_sessions = True
        try:
            run_state_machine_as_test(Machine, settings=run)
        finally:
            self.start_sessions = False
            self.delete_live()

    def close(self) -> None:
        self.delete_live()
        self.http.close()
