"""API fuzzing in CI: schemathesis against the app's live /openapi.json on the shared served app.

A small, derandomized run (the same cases every time, so CI never fails on a new random
case): every operation with a few positive and negative cases, then a few stateful
scenarios along the schema's OpenAPI links (create -> command -> stream -> delete).
Zero 5xx, every 4xx a JSON body naming the problem, every answer as the schema says
(tests/serve/api_fuzz.py). bench/fuzz_api.py runs the same checks far longer with random
seeds. The fuzzer has a tenant of its own (`fuzz`, 2 sessions) and the admin key for the
read-only admin routes; it deletes every session it creates.
"""

from __future__ import annotations

import pytest

from tests.serve.api_fuzz import ApiFuzzer, FuzzTarget
from tests.serve.conftest import ADMIN_KEY, KEYS

STATELESS_EXAMPLES = 4
"""Cases per operation and generation mode (positive, negative)."""
STATEFUL_SCENARIOS = 4
STATEFUL_STEPS = 6


@pytest.fixture
def fuzzer(served):
    served.wait_free("test-pattern", 2)  # what an earlier module left ending is gone: creations are admitted
    f = ApiFuzzer(FuzzTarget(base_url=served.base_url, tenant_key=KEYS["fuzz"], admin_key=ADMIN_KEY))
    yield f
    f.close()
    assert not f.live


def test_every_operation_fuzzed_answers_as_documented(fuzzer):
    fuzzer.run_stateless(STATELESS_EXAMPLES)
    report = fuzzer.report
    operations = {result.ok().label for result in fuzzer.schema.get_all_operations()}
    assert set(report.operations) == operations and len(operations) >= 16, report.summary()  # every one was reached
    assert not report.failures, f"{report.summary()}\n\n{report.describe_failures()}"
    assert report.sessions_created >= 1, report.summary()  # creation itself was fuzzed, not only refused


def test_stateful_scenarios_along_the_links_answer_as_documented(fuzzer):
    assert fuzzer.schema.statistic.transitions.total >= 20  # create -> every session route, command/stream -> ...
    fuzzer.run_stateful(STATEFUL_SCENARIOS, steps=STATEFUL_STEPS)
    report = fuzzer.report
    assert not report.failures, f"{report.summary()}\n\n{report.describe_failures()}"
    assert report.sessions_created >= 1 and report.statuses[200] >= 1, report.summary()


def test_openapi_documents_the_error_body_and_the_session_links():
    """The published schema (what the fuzzer reads): FastAPI's default 422 shape was not what the app answers, 401/404
    were undocumented, and there were no links from a created session to its routes."""
    from deployments.http.ingress import app

    spec = app.openapi()
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    session_routes = {op["operationId"] for path, ops in spec["paths"].items() if "{session_id}" in path for op in ops.values()}
    created = spec["paths"]["/v1/sessions"]["post"]["responses"]
    for status in ("201", "202"):
        links = created[status]["links"]
        assert {link["operationId"] for link in links.values()} == session_routes
        assert all(link["parameters"] == {"session_id": "$response.body#/session_id"} for link in links.values())
    after_command = spec["paths"]["/v1/sessions/{session_id}/commands"]["post"]["responses"]["200"]["links"]
    assert after_command["Stream"]["parameters"] == {"session_id": "$request.path.session_id"}
    after_stream = spec["paths"]["/v1/sessions/{session_id}/stream"]["get"]["responses"]["200"]["links"]
    assert after_stream["DeleteSession"]["operationId"] == "delete_session"
