"""Clients for the fault tests: a msgpack viewer thread and a reconnect that resumes from the next chunk.

Shared by tests/serve/test_faults.py, test_lifecycle.py and test_registry_restart.py, so every
fault is watched and resumed the same way a program using the msgpack stream would.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import msgpack

from tests.serve.conftest import wait_for

log = logging.getLogger(__name__)


def record(output_dir: Path, line: str) -> None:
    """Log a measured recovery (or loss) and append it to test-output/faults.txt (docs/serving.md quotes it)."""
    log.info("fault: %s", line)
    with (output_dir / "faults.txt").open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


class MsgpackViewer(threading.Thread):
    """Reads a session's msgpack stream until its end (or interrupted) map, or the connection ends."""

    def __init__(self, served, sid: str, from_chunk: int | None = None):
        super().__init__(daemon=True)
        self.served, self.sid, self.from_chunk = served, sid, from_chunk
        self.status: int | None = None
        self.body: dict | None = None
        self.chunks: list[int] = []
        self.arrived: list[float] = []
        self.last: dict | None = None  # the end or interrupted map
        self.error: BaseException | None = None

    def run(self) -> None:
        params = {"format": "msgpack"} | ({} if self.from_chunk is None else {"from": self.from_chunk})
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
        try:
            with self.served.http.stream("GET", f"/v1/sessions/{self.sid}/stream", params=params,
                                         headers=self.served.headers(), timeout=120) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.body = json.loads(r.read())
                    return
                for piece in r.iter_bytes():
                    unpacker.feed(piece)
                    for item in unpacker:
                        if item["type"] == "chunk":
                            self.chunks.append(item["chunk"])
                            self.arrived.append(time.monotonic())
                        else:
                            self.last = item
                            return
        except BaseException as exc:  # noqa: BLE001 - a broken connection is an outcome the test looks at
            self.error = exc


def started(served, prompt: str) -> str:
    """A test-pattern session of alice's, generating."""
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    assert served.command(sid, "set_prompt", prompt=prompt).status_code == 200
    assert served.command(sid, "start").status_code == 200
    return sid


def resume(served, sid: str, after: int, deadline_s: float = 180) -> tuple[MsgpackViewer, list[int]]:
    """Reconnect from `after + 1` until a stream answers (a 503 naming the relay is the one refusal allowed);
    the viewer (reading on) and the statuses refused on the way."""
    refused: list[int] = []
    deadline = time.monotonic() + deadline_s
    while True:
        viewer = MsgpackViewer(served, sid, after + 1)
        viewer.start()
        wait_for(lambda: viewer.status is not None or viewer.error is not None or not viewer.is_alive(), 150,
                 "the reconnect answered")
        if viewer.status == 200 or viewer.status == 422:
            return viewer, refused
        assert viewer.status == 503 and viewer.body and viewer.body.get("field") == "stream", (viewer.status, viewer.body, viewer.error)
        refused.append(viewer.status)
        assert time.monotonic() < deadline, f"no relay answered within {deadline_s}s: {refused}"
        time.sleep(0.5)  # a retry delay (a client's backoff), not synchronisation


