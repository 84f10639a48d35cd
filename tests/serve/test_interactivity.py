"""Prompt-to-viewer latency, black box: the real app over HTTP, a live msgpack viewer.

DESIGN section 12: from the ack of `set_prompt` to the arrival at a live viewer of the
first chunk made with that prompt. Just-in-time generation makes it 0..1 chunk plus the
hand-off; the bounds here are loose for a loaded 2-core CI (bench/bench_interactivity.py
measures it exactly). A generator a chunk ahead (the behaviour before) gives a median of
about 1.75 chunks, so the median bound still tells the two apart.
"""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest

from helios.media import framing
from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e

CHUNK_S = 33 / 24.0  # test-pattern: 33 frames at 24 fps
MOMENTS = (0.1, 0.3, 0.5, 0.7, 0.9)  # where in a chunk's time on screen each prompt is sent


class Viewer(threading.Thread):
    """A live msgpack viewer: (chunk, prompt, arrival time) of every chunk; waiters wake on arrival."""

    def __init__(self, base_url: str, url: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.url = base_url, url
        self.arrivals: list[tuple[int, str | None, float]] = []
        self.error: BaseException | None = None
        self.ended = False
        self.cond = threading.Condition()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=120) as http, http.stream("GET", self.url) as r:
                for item in framing.unpack_stream(r.iter_bytes()):
                    if item.get("type") == "end":
                        return
                    with self.cond:
                        self.arrivals.append((item["chunk"], item.get("prompt"), time.monotonic()))
                        self.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by the waiting test
            self.error = exc
        finally:
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def wait(self, predicate, timeout: float = 120.0) -> tuple[int, str | None, float]:
        """The first arrival matching `predicate` (waiting on the stream, not on time)."""
        with self.cond:
            found = self.cond.wait_for(lambda: self.ended or any(predicate(a) for a in self.arrivals), timeout)
            match = next((a for a in self.arrivals if predicate(a)), None)
        assert found and match is not None, f"no matching chunk (viewer error: {self.error}; got {self.arrivals[-3:]})"
        return match


def test_a_prompt_change_reaches_the_viewer_within_about_one_chunk(served):
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    body = r.json()
    sid = body["session_id"]
    viewer = Viewer(served.base_url, body["urls"]["stream_msgpack"])
    viewer.start()
    try:
        assert served.command(sid, "set_prompt", prompt="prompt 0").status_code == 200
        assert served.command(sid, "start").status_code == 200
        latencies = []
        after = 1  # chunk whose arrival starts the next measurement
        for i, moment in enumerate(MOMENTS, start=1):
            # Place the command at a moment of a chunk's time on screen (the stimulus, not a wait).
            _, _, shown = viewer.wait(lambda a, after=after: a[0] >= after)
            time.sleep(max(0.0, shown + moment * CHUNK_S - time.monotonic()))
            text = f"prompt {i}"
            assert served.command(sid, "set_prompt", prompt=text).status_code == 200
            acked = time.monotonic()
            chunk, _, arrived = viewer.wait(lambda a, text=text: a[1] == text)
            latencies.append((arrived - acked) / CHUNK_S)
            after = chunk + 1
    finally:
        served.delete(sid)
    # Loose on purpose: under load one chunk can come late (2.17 chunks seen once); the median
    # still separates just-in-time (~0.5) from a generator a chunk ahead (~1.75).
    assert statistics.median(latencies) <= 1.4, latencies
    assert max(latencies) <= 3.0, latencies


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_time_to_first_frame_is_in_the_metrics(served):
    def scrape() -> str:
        r = served.http.get("/metrics")
        assert r.status_code == 200, r.text
        return r.text

    before = scrape()
    t0 = time.monotonic()
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    body = r.json()
    viewer = Viewer(served.base_url, body["urls"]["stream_msgpack"] + "&from=0")
    viewer.start()
    try:
        assert served.command(body["session_id"], "set_prompt", prompt="first frame").status_code == 200
        assert served.command(body["session_id"], "start").status_code == 200
        _, _, arrived = viewer.wait(lambda a: a[0] == 0)
    finally:
        served.delete(body["session_id"])
    client_ttff = arrived - t0
    name = "helios_time_to_first_frame_seconds"
    # /metrics numbers are up to metrics_cache_s old: wait for a scrape that has the sample.
    after = wait_for(lambda: (t := scrape()) and _metric(t, name + "_count") > _metric(before, name + "_count") and t,
                     60, "a scrape with the new time-to-first-frame sample")
    assert _metric(after, name + "_count") == _metric(before, name + "_count") + 1
    server_ttff = _metric(after, name + "_sum") - _metric(before, name + "_sum")
    # The relay measures from the session's creation to the first chunk it sends: inside the client's span.
    assert 0 < server_ttff <= client_ttff, (server_ttff, client_ttff)
