"""Background readers of one session over real HTTP: its msgpack video and its SSE events.

Each records what arrived and when (monotonic time), so a test can ask "did chunks keep
arriving after t" or "which reason did session_ended carry" without sleeping.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import msgpack


class Watcher(threading.Thread):
    """Reads one HTTP stream until it ends or `stop()`; failures are kept for the test to raise."""

    def __init__(self, base_url: str, url: str, headers: dict):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.url = url
        self.headers = headers
        self.status: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(60, read=120)) as http:
                with http.stream("GET", self.url, headers=self.headers) as r:
                    self.status = r.status_code
                    if r.status_code != 200:
                        r.read()
                        raise AssertionError(f"GET {self.url}: {r.status_code} {r.text}")
                    self.consume(r)
        except BaseException as exc:  # noqa: BLE001 - handed to the test through `error`
            self.error = exc
        finally:
            self.done.set()

    def consume(self, response: httpx.Response) -> None:
        raise NotImplementedError


class ChunkWatcher(Watcher):
    """The msgpack video stream: (arrival time, chunk index) of every chunk received."""

    def __init__(self, base_url: str, sid: str, headers: dict):
        super().__init__(base_url, f"/v1/sessions/{sid}/stream?format=msgpack", headers)
        self.chunks: list[tuple[float, int]] = []

    def consume(self, response: httpx.Response) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 28)
        for piece in response.iter_bytes():
            unpacker.feed(piece)
            for item in unpacker:
                if isinstance(item, dict) and item.get("type") == "chunk":
                    with self._lock:
                        self.chunks.append((time.monotonic(), int(item["chunk"])))
            if self._halt.is_set():
                return

    def count_after(self, t: float) -> int:
        with self._lock:
            return sum(1 for at, _ in self.chunks if at > t)


class EventWatcher(Watcher):
    """The SSE protocol messages, until session_ended."""

    def __init__(self, base_url: str, sid: str, headers: dict):
        super().__init__(base_url, f"/v1/sessions/{sid}/events", headers)
        self.messages: list[tuple[float, dict]] = []

    def consume(self, response: httpx.Response) -> None:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            msg = json.loads(line[6:])
            with self._lock:
                self.messages.append((time.monotonic(), msg))
            if msg.get("type") == "event" and msg["data"].get("event") == "session_ended":
                return
            if self._halt.is_set():
                return

    def events(self, name: str) -> list[dict]:
        with self._lock:
            return [m["data"] for _, m in self.messages if m.get("type") == "event" and m["data"].get("event") == name]

    def ended(self) -> dict | None:
        found = self.events("session_ended")
        return found[0] if found else None
