"""A queued session takes its set-up commands (kept, bounded) and applies them in order at admission.

The test-pattern pool of the `served` app has 2 slots and a queue of 1: two sessions fill
it, the third waits.
"""

from __future__ import annotations

import json

from tests.serve.test_api import read_sse

FILLERS = 28
"""set_prompt commands kept before the 4 that matter: 32 in all, the default max_queued_commands."""


def _post(served, sid: str, command: str, cid: str | None = None, **args):
    body = {"command": command, "args": args}
    if cid is not None:
        body["id"] = cid
    return served.http.post(f"/v1/sessions/{sid}/commands", json=body, headers=served.headers())


def _queued_session(served) -> tuple[str, dict, list[str]]:
    """(queued session id, its create answer, ids of the two sessions holding the slots)."""
    served.wait_free("test-pattern", 2)
    first = [served.create(model="test-pattern") for _ in range(2)]
    assert [r.status_code for r in first] == [201, 201], [r.text for r in first]
    queued = served.create(model="test-pattern")
    assert queued.status_code == 202, queued.text
    return queued.json()["session_id"], queued.json(), [r.json()["session_id"] for r in first]


def test_set_up_commands_of_a_queued_session_are_applied_in_order_at_admission(served):
    from websockets.sync.client import connect

    sid, created, holders = _queued_session(served)
    try:
        # Over the WebSocket too: kept, and said so on the socket at once.
        ws_url = served.base_url.replace("http", "ws", 1) + created["urls"]["ws"]
        with connect(ws_url, additional_headers=served.headers(), open_timeout=60) as ws:
            ws.send(json.dumps({"command": "set_prompt", "args": {"prompt": "from the socket"}, "id": "w0"}))
            ack = json.loads(ws.recv(timeout=60))
        assert ack["type"] == "ack" and ack["data"]["queued"] is True and ack["data"]["id"] == "w0", ack

        ids = ["w0"]
        for i in range(FILLERS - 1):
            r = _post(served, sid, "set_prompt", f"f{i}", prompt=f"filler {i}")
            assert r.status_code == 202, r.text
            ids.append(f"f{i}")
        setup = [("set_prompt", "c1", {"prompt": "the fox"}), ("schedule_prompt", "c2", {"prompt": "the river", "chunk": 1000}),
                 ("set_seed", "c3", {"seed": 5}), ("start", "c4", {})]
        for command, cid, args in setup:
            r = _post(served, sid, command, cid, **args)
            assert r.status_code == 202, r.text
            assert r.json() == {"id": cid, "ok": True, "error": None, "result": None, "queued": True, "position": 1}
            ids.append(cid)

        # Refused at once, never kept: bad arguments (422 naming the field), other commands (409), the bound (429).
        bad = _post(served, sid, "set_seed", "b1", seed="x")
        assert bad.status_code == 422 and "args.seed" in bad.json()["detail"] and bad.json()["ack"]["ok"] is False, bad.text
        blank = _post(served, sid, "set_prompt", "b2", prompt="   ")
        assert blank.status_code == 422 and "prompt: must not be blank" in blank.json()["detail"], blank.text
        far = _post(served, sid, "schedule_prompt", "b3", prompt="x", chunk=20000)
        assert far.status_code == 422 and "max_chunks_ahead" in far.json()["detail"], far.text
        pause = _post(served, sid, "pause", "b4")
        assert pause.status_code == 409 and "queued" in pause.json()["detail"] and "set_prompt" in pause.json()["detail"]
        full = _post(served, sid, "set_prompt", "b5", prompt="one too many")
        assert full.status_code == 429, full.text
        assert full.json()["limit"] == "max_queued_commands" and "32" in full.json()["detail"]

        served.delete(holders.pop(0))
        served.wait_active(sid, timeout=60)

        # Their real acks, in the order they were sent, then the generation they set up.
        messages = read_sse(served.http, created["urls"]["events"], lambda m: m["data"].get("event") == "chunk_complete")
        acks = [m["data"] for _, m in messages if m["type"] == "ack"]
        assert [a["id"] for a in acks] == ids and all(a["ok"] for a in acks), acks
        started = [m["data"] for _, m in messages if m["data"].get("event") == "generation_started"]
        assert started == [{"event": "generation_started", "prompt": "the fox"}]

        state = served.get(sid)["state"]
        assert state["running"] is True and state["current_prompt"] == "the fox" and state["seed"] == 5, state
        assert state["scheduled_prompts"] == {"1000": "the river"}, state
        # Once admitted, every command goes straight to the session again.
        r = _post(served, sid, "pause", "a1")
        assert r.status_code == 200 and r.json()["queued"] is False, r.text
    finally:
        for s in holders + [sid]:
            served.delete(s)


def test_commands_to_a_session_that_ended_while_queued_are_409(served):
    sid, _, holders = _queued_session(served)
    try:
        assert _post(served, sid, "set_prompt", prompt="kept").status_code == 202
        assert served.delete(sid).status_code == 200  # leaves the queue, its kept commands with it
        r = _post(served, sid, "set_prompt", prompt="too late")
        assert r.status_code == 409 and "ended" in r.json()["detail"], r.text
    finally:
        for s in holders:
            served.delete(s)
