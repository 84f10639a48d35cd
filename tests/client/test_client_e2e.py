"""The Python client against the real app on the shared local Ray cluster (test-pattern model)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from helios.client import AsyncHeliosClient, HeliosAuthError, HeliosClient, HeliosCommandError, HeliosHTTPError

pytestmark = pytest.mark.e2e

BUSY_S = 120  # the shared test app has 2 test-pattern slots; wait for one rather than fail


def test_session_lifecycle_commands_and_messages(client):
    session = client.create_session("test-pattern", seed=3, retry_busy_s=BUSY_S)
    assert session.info.status == "active" and session.viewer_token
    try:
        assert session.set_prompt("a red fox").ok
        session.schedule_prompt("a blue whale", 2)
        session.start()
        msg = session.wait_for(lambda m: m.event == "chunk_complete" and m.data["chunk"] >= 2, timeout=90)
        assert msg.data["prompt"] == "a blue whale"
        state = session.get_state()
        assert state["running"] is True and state["current_chunk"] >= 2
        with pytest.raises(HeliosCommandError) as err:
            session.schedule_prompt("too late", 0)
        assert "chunk" in str(err.value) and err.value.ack.get("ok") is False
        with pytest.raises(HeliosCommandError, match="seed"):
            session.command("set_seed", {"seed": "not a number"})
        # A second message iterator continues right after the last message the first one saw.
        first_seq = session.last_seq
        nxt = next(iter(session.messages(timeout=30)))
        assert nxt.seq == first_seq + 1
    finally:
        session.delete()
    info = client.get_session(session.id)
    assert info.status == "ended" and info.end_reason == "deleted"
    with pytest.raises(HeliosHTTPError) as err:
        session.start()
    assert err.value.status_code in (404, 409)


class _CutOnce(httpx.BaseTransport):
    """Real transport that breaks the first frame stream after `limit` bytes (a dropped connection)."""

    def __init__(self, limit: int, path_suffix: str = "/stream") -> None:
        self.inner = httpx.HTTPTransport()
        self.limit = limit
        self.path_suffix = path_suffix
        self.cut = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if request.url.path.endswith(self.path_suffix) and not self.cut:
            self.cut = True
            resp.stream = _CutStream(resp.stream, self.limit)
        return resp

    def close(self) -> None:
        self.inner.close()


class _CutStream(httpx.SyncByteStream):
    def __init__(self, inner, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __iter__(self):
        seen = 0
        for part in self.inner:
            if seen + len(part) >= self.limit:
                yield part[: self.limit - seen]
                raise httpx.ReadError("connection cut by the test")
            seen += len(part)
            yield part

    def close(self) -> None:
        self.inner.close()


def test_frame_stream_reconnects_without_gaps_or_duplicates(helios_server):
    chunk_bytes = 33 * 64 * 96 * 3  # the test app's test-pattern geometry
    transport = _CutOnce(limit=int(chunk_bytes * 1.5))
    with HeliosClient(helios_server.url, helios_server.api_key, transport=transport) as client:
        with client.create_session("test-pattern", retry_busy_s=BUSY_S) as session:
            session.set_prompt("counting frames")
            session.start()
            per_chunk: dict[int, list[int]] = {}
            for chunk in session.frames(from_chunk=0, timeout=60):
                assert chunk.frames.dtype == np.uint8 and chunk.frames.shape[1:] == (64, 96, 3)
                per_chunk.setdefault(chunk.chunk, []).extend(range(chunk.first_frame, chunk.first_frame + chunk.num_frames))
                if sum(map(len, per_chunk.values())) >= 4 * 33:
                    break
    assert transport.cut
    assert sorted(per_chunk) == [0, 1, 2, 3]
    for frames in per_chunk.values():
        assert len(frames) == 33 and frames == sorted(set(frames))  # each chunk whole, in order, once


def test_message_stream_resumes_after_a_drop_without_gaps_or_duplicates(helios_server):
    transport = _CutOnce(limit=700, path_suffix="/events")  # a few messages, then cut mid-message
    with HeliosClient(helios_server.url, helios_server.api_key, transport=transport) as client:
        with client.create_session("test-pattern", retry_busy_s=BUSY_S) as session:
            session.set_prompt("resume me")
            session.start()
            seqs, events = [], []
            for msg in session.messages(timeout=60):
                seqs.append(msg.seq)
                events.append(msg.event)
                if msg.event == "chunk_complete" and msg.data["chunk"] == 2:
                    break
    assert transport.cut
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # consecutive: nothing lost, nothing twice
    assert events.count("generation_started") == 1


def test_save_mp4_and_viewer_token(client, tmp_path):
    import av

    session = client.create_session("test-pattern", retry_busy_s=BUSY_S)
    try:
        session.set_prompt("a lighthouse")
        session.start()
        viewer = client.session(session.id, token=session.viewer_token)
        with HeliosClient(client.base_url, api_key="") as anonymous:
            watcher = anonymous.session(session.id, token=session.viewer_token)
            assert anonymous.get_session(session.id, token=session.viewer_token).status == "active"
            with pytest.raises(HeliosHTTPError) as err:
                watcher.pause()  # a viewer token cannot steer
            assert err.value.status_code in (401, 403)
        written = viewer.save_mp4(tmp_path / "v.mp4", chunks=2, timeout=60)
    finally:
        session.delete()
    assert written == 66
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 66


def test_async_client_commands_frames_and_image(helios_server):
    async def scenario() -> tuple[int, dict, dict]:
        async with AsyncHeliosClient(helios_server.url, helios_server.api_key) as client:
            models = await client.models()
            assert {"test-pattern", "helios-tiny"} <= {m["name"] for m in models}
            async with await client.create_session("test-pattern", retry_busy_s=BUSY_S) as session:
                await session.set_prompt("async fox")
                ack = await session.set_image(np.full((300, 500, 3), 180, np.uint8), "blend")
                assert ack.ok
                image_set = await session.wait_for(lambda m: m.event == "image_set", timeout=30)
                await session.start()
                frames = 0
                async for chunk in session.frames(timeout=60):
                    frames += chunk.num_frames
                    if frames >= 33:
                        break
                state = await session.get_state()
                with pytest.raises(HeliosCommandError, match="transition|image"):
                    await session.command("set_image", {"image_b64": "bm90IGFuIGltYWdl", "transition": "cut"})
                return frames, image_set.data, state

    frames, image_set, state = asyncio.run(scenario())
    assert frames == 33
    assert image_set["width"] > 0 and image_set["height"] > 0
    assert state["current_prompt"] == "async fox"


def test_a_queued_session_reports_its_position_and_starts_when_a_slot_frees(client, helios_server):
    """The test app has 2 test-pattern slots and a queue of 1: the third session waits its turn."""
    holders = [client.create_session("test-pattern", retry_busy_s=BUSY_S) for _ in range(2)]
    queued_at: list[int | None] = []
    in_queue = threading.Event()
    result: dict = {}
    other = HeliosClient(helios_server.url, helios_server.api_key)  # one client per thread

    def create_third() -> None:
        def on_queue(position: int | None) -> None:
            queued_at.append(position)
            in_queue.set()

        try:
            result["session"] = other.create_session("test-pattern", on_queue=on_queue, timeout=90)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc
        in_queue.set()

    third = threading.Thread(target=create_third)
    third.start()
    try:
        assert in_queue.wait(60)
        assert "error" not in result, result
        holders.pop(0).delete()  # frees a slot: the queued session is admitted
        third.join(120)
        assert "error" not in result, result
        session = result["session"]
        assert queued_at and queued_at[0] == 1
        assert session.info.status == "active"
        assert session.set_prompt("my turn").ok
        assert session.get_state()["scheduled_prompts"] == {"0": "my turn"}
        holders.append(session)
    finally:
        third.join(120)
        for s in holders:
            s.delete()
        other.close()


def test_rotate_viewer_token_sync_and_async(client, helios_server):
    """The owner replaces the viewer token: the new one reads, the old one gets 401 (both clients)."""
    session = client.create_session("test-pattern", retry_busy_s=BUSY_S)
    try:
        old = session.viewer_token
        new = session.rotate_viewer_token()
        assert new != old and session.viewer_token == new and f"token={new}" in session.info.urls["player"]
        with HeliosClient(client.base_url, api_key="") as anonymous:
            assert anonymous.get_session(session.id, token=new).status == "active"
            with pytest.raises(HeliosAuthError) as err:
                anonymous.get_session(session.id, token=old)
            assert err.value.status_code == 401

        async def rotate_async() -> tuple[str, str]:
            async with AsyncHeliosClient(helios_server.url, helios_server.api_key) as aclient, \
                    AsyncHeliosClient(helios_server.url, api_key="") as anonymous:
                newer = await aclient.session(session.id).rotate_viewer_token()
                with pytest.raises(HeliosAuthError):  # the token the sync client made is revoked now
                    await anonymous.get_session(session.id, token=new)
                assert (await anonymous.get_session(session.id, token=newer)).status == "active"
                return newer, (await aclient.get_session(session.id)).viewer_token

        newer, shown = asyncio.run(rotate_async())
        assert newer not in (old, new) and shown == newer
    finally:
        session.delete()
