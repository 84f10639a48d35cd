"""Per-session command rate over real HTTP and WebSocket: 429 + Retry-After, a WS `error`,
the session keeps running, another session of the same tenant is unaffected.

Tenant dave's quota (tests/serve/conftest.py) allows a burst of 3 commands and then one
per 100 s, so the 4th command is over the rate on any machine.
"""

from __future__ import annotations

import json

import pytest

from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e

TENANT = "dave"


def _session(served) -> str:
    r = served.create(TENANT, model="test-pattern")
    assert r.status_code in (201, 202), r.text
    sid = r.json()["session_id"]
    served.wait_active(sid, TENANT)
    return sid


def _chunk(served, sid: str) -> int:
    return served.get(sid, TENANT)["state"].get("current_chunk", 0)


def test_commands_over_the_rate_get_429_and_the_session_keeps_running(served):
    sid = _session(served)
    other = None
    try:
        ok = [served.command(sid, "set_prompt", TENANT, prompt="a slow river"),
              served.command(sid, "start", TENANT),
              served.command(sid, "set_seed", TENANT, seed=11)]
        assert [r.status_code for r in ok] == [200, 200, 200], [r.text for r in ok]

        over = served.command(sid, "set_seed", TENANT, seed=12)
        assert over.status_code == 429, over.text
        body = over.json()
        assert body["limit"] == "command_rate" and body["field"] == "command"
        assert body["detail"].startswith("command_rate: over 0.01 commands/s (burst 3)")
        assert 90 <= body["retry_after_s"] <= 100
        assert 90 <= int(over.headers["retry-after"]) <= 100
        assert served.command(sid, "pause", TENANT).status_code == 429  # still over: nothing was taken

        # The session keeps generating, and the refused command never reached it.
        before = _chunk(served, sid)
        wait_for(lambda: _chunk(served, sid) > before + 1, 60, "two more chunks after the refusals")
        state = served.get(sid, TENANT)["state"]
        assert state["seed"] == 11 and state["paused"] is False

        # Another session of the same tenant has its own bucket.
        other = _session(served)
        assert served.command(other, "set_prompt", TENANT, prompt="unaffected").status_code == 200
    finally:
        for s in (sid, other):
            if s:
                served.delete(s, TENANT)


def test_commands_over_the_rate_on_the_websocket_get_an_error_and_a_failed_ack(served):
    from websockets.sync.client import connect

    sid = _session(served)
    url = served.base_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws"
    try:
        with connect(url, additional_headers=served.headers(TENANT), open_timeout=60) as ws:
            commands = [{"command": "set_prompt", "args": {"prompt": "over the socket"}, "id": "1"},
                        {"command": "start", "id": "2"},
                        {"command": "get_state", "id": "3"},
                        {"command": "pause", "id": "4"}]
            for cmd in commands:
                ws.send(json.dumps(cmd))
            acks: dict[str, dict] = {}
            errors: list[str] = []
            while len(acks) < 4:
                msg = json.loads(ws.recv(timeout=60))
                if msg["type"] == "ack":
                    acks[msg["data"]["id"]] = msg["data"]
                elif msg["data"].get("event") == "error":
                    errors.append(msg["data"]["message"])
            assert [acks[i]["ok"] for i in "123"] == [True, True, True], acks
            assert acks["4"]["ok"] is False and acks["4"]["error"].startswith("command_rate: over 0.01 commands/s")
            assert errors == [acks["4"]["error"]]
            # The socket stays open and the session keeps streaming to it.
            while True:
                msg = json.loads(ws.recv(timeout=60))
                if msg["data"].get("event") == "chunk_complete":
                    break
        assert served.get(sid, TENANT)["state"]["paused"] is False
    finally:
        served.delete(sid, TENANT)
