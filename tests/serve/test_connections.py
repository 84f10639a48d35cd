"""Connection caps and the command rate over real HTTP (DESIGN section 10, docs/limits.md).

Readers of one session (video streams of every format + SSE + WebSocket) are capped at
`max_viewers_per_session`; a tenant's video streams and message streams at its quota's
`max_streams` / `max_event_streams`; commands at the session's token bucket. Over a cap:
429 with a JSON body naming it, and nothing else is affected (healthz answers, the
admitted readers keep reading).
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.serve.conftest import MAX_VIEWERS, wait_for

pytestmark = pytest.mark.e2e

FLOOD = MAX_VIEWERS + 4
"""SSE connections opened on one viewer token: the cap plus a few refused ones."""


class Sse(threading.Thread):
    """One SSE connection held open; records its status (and body, when refused)."""

    def __init__(self, base_url: str, url: str):
        super().__init__(daemon=True)
        self.base_url, self.url = base_url, url
        self.status: int | None = None
        self.body: dict | None = None
        self.lines = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as http, http.stream("GET", self.url) as r:
            self.status = r.status_code
            if r.status_code != 200:
                self.body = json.loads(r.read())
                return
            for _ in r.iter_lines():
                self.lines += 1
                if self.stop.is_set():
                    return


def _session(served, tenant: str = "alice") -> tuple[str, dict]:
    r = served.create(tenant, model="test-pattern")
    assert r.status_code == 201, r.text
    return r.json()["session_id"], r.json()["urls"]


def test_sse_flood_on_one_viewer_token_is_capped_and_healthz_answers(served):
    sid, urls = _session(served)
    readers = [Sse(served.base_url, urls["events"]) for _ in range(FLOOD)]
    try:
        for rd in readers:
            rd.start()
        wait_for(lambda: all(rd.status is not None for rd in readers), 120, "every SSE connection answered")
        statuses = sorted(rd.status for rd in readers)
        assert statuses.count(200) == MAX_VIEWERS and statuses.count(429) == FLOOD - MAX_VIEWERS, statuses
        refused = next(rd for rd in readers if rd.status == 429)
        assert refused.body["limit"] == "max_viewers_per_session" and "max_viewers_per_session" in refused.body["detail"]
        # During the flood the server stays healthy and answers at once (no queueing behind the streams).
        started = time.monotonic()
        health = served.http.get("/healthz", timeout=30)
        assert health.status_code == 200, health.text
        print(json.dumps({"healthz_during_flood_s": round(time.monotonic() - started, 3), "connections": FLOOD}))
        # One more video viewer is a reader too: refused while the SSE readers hold the session.
        with served.http.stream("GET", urls["stream_msgpack"]) as r:
            assert r.status_code == 429 and json.loads(r.read())["limit"] == "max_viewers_per_session"
        # A WebSocket over the cap is closed before it is accepted, with 4000 + 429.
        with pytest.raises(Exception) as info:
            with ws_connect(f"{served.base_url.replace('http', 'ws')}/v1/sessions/{sid}/ws?token={urls['events'].split('token=')[1]}") as ws:
                ws.recv(timeout=30)
        assert "4429" in str(info.value) and "max_viewers_per_session" in str(info.value), info.value
    finally:
        for rd in readers:
            rd.stop.set()
        served.delete(sid)
    # Closing the readers frees their places: a new reader is admitted again.
    sid2, urls2 = _session(served)
    try:
        again = Sse(served.base_url, urls2["events"])
        again.start()
        wait_for(lambda: again.status is not None, 60, "a reader on a fresh session")
        assert again.status == 200
        again.stop.set()
    finally:
        served.delete(sid2)


def test_tenant_stream_caps_name_their_limit(served):
    sid, urls = _session(served, "bob")  # bob: max_streams 1, max_event_streams 1
    first = Sse(served.base_url, urls["events"])
    try:
        for cmd, args in (("set_prompt", {"prompt": "caps"}), ("start", {})):
            assert served.command(sid, cmd, "bob", **args).status_code == 200
        first.start()
        wait_for(lambda: first.status is not None, 60, "bob's first SSE")
        assert first.status == 200
        r = served.http.get(urls["events"], timeout=30)
        assert r.status_code == 429 and r.json()["limit"] == "max_event_streams", r.text
        assert r.headers["retry-after"] == "2"
        with served.http.stream("GET", urls["stream_msgpack"], timeout=60) as one:
            assert one.status_code == 200
            two = served.http.get(urls["stream_mjpeg"], timeout=30)
            assert two.status_code == 429 and two.json()["limit"] == "max_streams", two.text
    finally:
        first.stop.set()
        served.delete(sid, "bob")


def test_a_reader_of_a_queued_session_starts_at_admission(served):
    served.wait_free("test-pattern", 2)
    running = [_session(served)[0] for _ in range(2)]  # the test-pattern pool is 2 slots, its queue 1
    queued = served.create(model="test-pattern")
    assert queued.status_code == 202, queued.text
    sid = queued.json()["session_id"]
    reader = Sse(served.base_url, queued.json()["urls"]["events"])
    open_before = served.stats()["readers"]["open"]
    try:
        reader.start()
        wait_for(lambda: served.stats()["readers"]["open"] > open_before, 60, "the queued session's reader counted")
        assert reader.status is None  # held by the registry's long poll: nothing is answered before admission
        served.delete(running.pop(0))
        wait_for(lambda: reader.status == 200 and reader.lines > 0, 60, "the reader's first messages after admission")
        assert served.get(sid)["status"] == "active"
    finally:
        reader.stop.set()
        for s in running + [sid]:
            served.delete(s)
