"""Faults while streaming, on the shared app: what each loses, what its clients see, how they resume.

Each test has a test-pattern session streaming to a viewer, applies one fault, then
asserts what was lost (nothing, or only what the session's ring no longer holds), the
reason the client got, a reconnect that resumes from the chunk after the last one
received, and that nothing leaked (tests/serve/leaks.py). Recovery times are logged and
written to test-output/faults.txt (docs/serving.md, "What each fault loses", quotes them).

The other faults are tested where their set-up lives: a front-door replica
(test_lifecycle.py), the registry and a session actor (test_registry_restart.py, its own
app), a shard worker (test_e2e.py); each of those ends with the same leak check.
Every destructive test ends by waiting for /readyz and the warm pools, so later tests get
a whole app.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
import ray

from tests.serve.conftest import KEYS, MAX_VIEWERS, wait_for
from tests.serve.fault_clients import MsgpackViewer, record, resume, started

pytestmark = pytest.mark.e2e


def _replicas(deployment: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and f"#{deployment}#" in a["name"] and "helios#" in a["name"]]


def _finish(served, *sids: str) -> None:
    for sid in sids:
        served.delete(sid)
    served.wait_ready()
    served.assert_nothing_leaked()


def test_killing_the_relay_replica_interrupts_viewers_who_resume_from_their_next_chunk(served, test_output_dir):
    from ray import serve

    sid = started(served, "the relay dies")
    viewer = MsgpackViewer(served, sid, 0)
    viewer.start()
    wait_for(lambda: len(viewer.chunks) >= 2, 120, "2 chunks at the viewer")
    (old,) = _replicas("Relay")
    t0 = time.monotonic()
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)  # Serve's controller starts a new one
    viewer.join(120)
    assert not viewer.is_alive()
    # The viewer is told: the stream's last map says why, and it is not an end.
    assert viewer.error is None, viewer.error
    assert viewer.last is not None and viewer.last["type"] == "interrupted", viewer.last
    assert viewer.last["reason"].startswith("relay_unavailable"), viewer.last
    last = viewer.chunks[-1]
    assert viewer.chunks == list(range(last + 1))  # nothing missing before the fault
    resumed, refused = resume(served, sid, last)
    lost = None
    if resumed.status == 422:  # down longer than the session's ring: only the chunks it no longer holds are lost
        assert resumed.body["field"] == "from", resumed.body
        lost = resumed.body["detail"]
        resumed = MsgpackViewer(served, sid)  # from the live edge
        resumed.start()
    wait_for(lambda: resumed.chunks or resumed.error or not resumed.is_alive(), 120, "a chunk after the reconnect")
    assert resumed.error is None and resumed.chunks, (resumed.status, resumed.body, resumed.error)
    recovery_s = resumed.arrived[0] - t0
    if lost is None:
        assert resumed.chunks[0] == last + 1, (last, resumed.chunks)  # resumed exactly where it broke off
    record(test_output_dir, f"relay replica killed: kill -> next chunk at a reconnected viewer {recovery_s:.1f} s; viewer had "
                            f"chunks 0..{last}, refused {refused} while down, resumed at chunk {resumed.chunks[0]} ({lost or 'nothing lost'})")
    assert served.get(sid)["status"] == "active"  # the session never noticed
    assert _replicas("Relay") and _replicas("Relay") != [old]
    # A viewer of a later session gets the live stream from the new replica.
    assert serve.get_deployment_handle("Relay", "helios").stats.remote().result(timeout_s=60)["sessions"].get(sid)
    _finish(served, sid)
    resumed.join(60)
    assert resumed.last == {"type": "end", "reason": "deleted"}, resumed.last


def test_killing_the_serve_controller_keeps_sessions_streaming_and_the_app_answering(served, test_output_dir):
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.schema import ApplicationStatus

    sid = started(served, "the controller dies")
    viewer = MsgpackViewer(served, sid, 0)
    viewer.start()
    wait_for(lambda: len(viewer.chunks) >= 1, 120, "a chunk at the viewer")
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    old_pid = ray.get(controller.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=60)
    at_kill = len(viewer.chunks)
    t0 = time.monotonic()
    ray.kill(controller, no_restart=False)  # Ray restarts it; it recovers the apps from its checkpoint
    answers: list[int] = []

    def back() -> bool:
        # The app answers all along (proxies and replicas do not need the controller to serve).
        answers.append(served.http.get(f"/v1/sessions/{sid}", headers=served.headers(), timeout=60).status_code)
        try:
            handle = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            pid = ray.get(handle.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=10)
            return pid != old_pid and serve.status().applications["helios"].status == ApplicationStatus.RUNNING
        except (ray.exceptions.RayError, ValueError, KeyError):
            return False

    wait_for(back, 180, "a new Serve controller with the app RUNNING", poll=0.5)
    record(test_output_dir, f"Serve controller killed: kill -> new controller with the app RUNNING {time.monotonic() - t0:.1f} s "
                            f"({len(answers)} GETs meanwhile, all 200)")
    assert set(answers) == {200}, answers
    wait_for(lambda: len(viewer.chunks) >= at_kill + 2, 120, "the viewer still getting chunks")
    assert viewer.is_alive() and viewer.last is None and viewer.error is None, (viewer.last, viewer.error)
    assert viewer.chunks == list(range(len(viewer.chunks)))  # nothing skipped
    # New sessions are admitted once it is back, and the old one still streams.
    other = served.create(model="test-pattern")
    assert other.status_code == 201, other.text
    assert served.get(sid)["status"] == "active"
    _finish(served, sid, other.json()["session_id"])
    viewer.join(60)
    assert viewer.last == {"type": "end", "reason": "deleted"}, viewer.last


def _raw_get(served, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """A raw HTTP/1.1 GET (so the test can close the socket at any byte); returns the connected socket."""
    url = urlparse(served.base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    lines = [f"GET {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}", f"Authorization: Bearer {KEYS['alice']}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _read_until(sock: socket.socket, enough) -> bytes:
    data = b""
    while not enough(data):
        piece = sock.recv(65536)
        assert piece, f"the server closed first: {data[:300]!r}"
        data += piece
    return data


def _answered_200(data: bytes) -> bool:
    """The response's head is in (asserting it is a 200: a refusal would leave the socket waiting)."""
    head, sep, _ = data.partition(b"\r\n\r\n")
    if sep:
        assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", data[:400]
    return bool(sep)


def _mid_msgpack_chunk(data: bytes) -> bool:
    """The body has started a chunk map it has not finished (608 KB each): closing now cuts it mid-chunk."""
    return _answered_200(data) and 2048 < len(data.partition(b"\r\n\r\n")[2]) < 600_000


def _drop(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, no FIN handshake
    sock.close()


def _readers(served) -> int:
    return served.stats()["readers"]["open"]


def _live_edge(served, sid: str) -> int:
    """The session's current chunk; says what GET answered when it has none (an ended session, an empty state)."""
    info = served.get(sid)
    assert "current_chunk" in info["state"], f"GET /v1/sessions/{sid} has no current_chunk: {info}"
    return info["state"]["current_chunk"]


def test_clients_dropped_mid_chunk_give_their_slot_back_and_resume(served, test_output_dir):
    sid = started(served, "readers drop")
    try:
        _drop_readers_and_resume(served, sid, test_output_dir)
    except AssertionError as exc:  # and in test-output/faults.txt, with the registry's tables (docs/serving.md)
        answer = served.http.get(f"/v1/sessions/{sid}", headers=served.headers()).text[:2000]
        record(test_output_dir, f"readers drop FAILED: {exc}; GET {answer}; registry stats {served.stats()}")
        raise
    finally:
        served.delete(sid)  # a failure above must not leave the session to the tests after it


def _drop_readers_and_resume(served, sid: str, test_output_dir) -> None:
    from websockets.sync.client import connect

    wait_for(lambda: served.get(sid)["state"].get("current_chunk", 0) >= 2, 120, "2 chunks made")
    rounds = MAX_VIEWERS // 4 + 1  # more drops in all than the session's max_viewers: a leaked slot would show
    release_s: dict[str, float] = {}
    t0 = time.monotonic()
    for round_ in range(rounds):
        edge = _live_edge(served, sid)  # from the live edge's chunk: always in the window
        readers = {
            "msgpack": _raw_get(served, f"/v1/sessions/{sid}/stream?format=msgpack&from={edge}"),
            "mp4": _raw_get(served, f"/v1/sessions/{sid}/stream?format=mp4&from={edge}"),
            "sse": _raw_get(served, f"/v1/sessions/{sid}/events", {"Accept": "text/event-stream"}),
        }
        # Cut each one inside a chunk's bytes (msgpack: inside a chunk map; mp4: inside its first fragments;
        # SSE: after its first event); the WebSocket vanishes without a close frame.
        _read_until(readers["msgpack"], _mid_msgpack_chunk)
        _read_until(readers["mp4"], lambda d: _answered_200(d) and b"mdat" in d)
        _read_until(readers["sse"], lambda d: _answered_200(d) and b"data:" in d)
        ws = connect(served.base_url.replace("http://", "ws://") + f"/v1/sessions/{sid}/ws",
                     additional_headers=served.headers(), open_timeout=60)
        ws.recv(timeout=60)
        readers["ws"] = ws.socket
        wait_for(lambda: _readers(served) == 4, 60, "the 4 readers' leases")
        for n, (kind, sock) in enumerate(readers.items()):
            t_drop = time.monotonic()
            _drop(sock)
            if round_ == 0:  # one kind at a time: how long each takes to give its slot back
                wait_for(lambda n=n: _readers(served) == 3 - n, 120, f"the dropped {kind} reader's slot given back")
                release_s[kind] = time.monotonic() - t_drop
        wait_for(lambda: _readers(served) == 0, 120, "every dropped reader's slot given back")
    record(test_output_dir, f"{4 * rounds} readers dropped mid-chunk: slot back after {', '.join(f'{k} {v:.1f} s' for k, v in release_s.items())}; "
                            f"first drop -> all {4 * rounds} back {time.monotonic() - t0:.1f} s")
    # The session went on; the cap is whole: a viewer resumes from a chunk still in the window.
    assert served.get(sid)["status"] == "active"
    current = _live_edge(served, sid)
    viewers = [MsgpackViewer(served, sid, max(0, current - 2)) for _ in range(MAX_VIEWERS)]
    for v in viewers:
        v.start()
    wait_for(lambda: all(v.chunks or v.status not in (None, 200) for v in viewers), 120, "every viewer's first chunk")
    assert [v.status for v in viewers] == [200] * MAX_VIEWERS, [(v.status, v.body) for v in viewers]
    assert all(v.chunks[0] == max(0, current - 2) for v in viewers), [v.chunks[:1] for v in viewers]
    _finish(served, sid)
    for v in viewers:
        v.join(60)


def test_a_session_actor_slow_to_answer_gets_its_last_state_and_its_age(served, tmp_path):
    """GET while the session actor's event loop is blocked past the front door's wait: the last state
    read, with its age (never an empty state for a live session); fresh again once it answers."""
    from deployments.http.routes_sessions import INFO_TIMEOUT_S
    from deployments.naming import NAMESPACE, session_actor_name

    sid = started(served, "slow to answer")
    fresh = wait_for(lambda: (s := served.get(sid))["state"].get("current_chunk", 0) >= 1 and s, 120, "a chunk made")
    assert fresh["state_age_s"] is None
    marker = tmp_path / "blocked"

    def block_the_loop(self, path: str = str(marker), hold_s: float = INFO_TIMEOUT_S + 5) -> None:
        import pathlib
        import time as t

        pathlib.Path(path).touch()
        t.sleep(hold_s)  # the fault: a sync call on an async actor holds its event loop

    actor = ray.get_actor(session_actor_name(sid), namespace=NAMESPACE)
    blocked = actor.__ray_call__.remote(block_the_loop)
    wait_for(marker.exists, 60, "the session actor's event loop blocked")
    stale = served.get(sid)
    assert stale["status"] == "active", stale
    assert stale["state_age_s"] is not None and stale["state_age_s"] >= INFO_TIMEOUT_S, stale
    assert stale["state"]["current_chunk"] >= fresh["state"]["current_chunk"], stale
    ray.get(blocked, timeout=120)
    wait_for(lambda: served.get(sid)["state_age_s"] is None, 60, "the actor's own state again")
    _finish(served, sid)
