"""The relay deployment on the shared local Ray cluster, fed by a small real session actor.

The fake session actor has the real interface (`wait_chunks` long poll over a bounded
ring of chunk refs, frames `ray.put` by the actor, found by name in the `helios`
namespace); the chunks are produced when the test says so.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import uuid

import av
import fsspec
import numpy as np
import pytest

from helios.media import framing, mjpeg
from helios.media.skipforward import SkipForward

H, W, N, FPS = 64, 96, 33, 24
pytestmark = pytest.mark.e2e


def chunk_frames(k: int) -> np.ndarray:
    """The frames of chunk k (smooth, distinct per chunk and frame, so lossy decodes can be checked)."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.empty((N, H, W, 3), dtype=np.uint8)
    for i in range(N):
        base = 40 + (i * 5) % 160
        frames[i, ..., 0] = (base + xx // 4) % 256
        frames[i, ..., 1] = (base + 50 * (k % 3)) % 256
        frames[i, ..., 2] = (base + yy // 4 + 30 * k) % 256
    return frames


def fake_session_class():
    """A ray.remote class that Ray ships by value (this test module is not importable on the workers)."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @ray.remote(num_cpus=0)
    class FakeSession:
        def __init__(self, ring_size: int, frames_fn):
            self.ring: list[dict] = []
            self.ring_size = ring_size
            self.frames_fn = frames_fn
            self.next_chunk = 0
            self.ended = False
            self.end_reason = None
            self._changed: asyncio.Event | None = None

        def _event(self) -> asyncio.Event:
            if self._changed is None:
                self._changed = asyncio.Event()
            return self._changed

        def _notify(self) -> None:
            self._event().set()
            self._changed = asyncio.Event()

        async def produce(self, count: int) -> int:
            import time

            for _ in range(count):
                k = self.next_chunk
                ref = ray.put(self.frames_fn(k))
                meta = {"chunk": k, "first_frame": k * 33, "frames": 33, "height": 64, "width": 96, "fps": 24,
                        "prompt": f"prompt {k}", "produced_at": time.time()}
                self.ring.append({"chunk": k, "refs": [ref], "meta": meta})
                del self.ring[: -self.ring_size]
                self.next_chunk += 1
            self._notify()
            return self.next_chunk

        async def end(self, reason: str) -> None:
            self.ended, self.end_reason = True, reason
            self._notify()

        async def touch(self) -> None:
            self.touches = getattr(self, "touches", 0) + 1

        async def wait_chunks(self, after: int, timeout_s: float):
            from deployments.protocol import ChunkBatch, ChunkItem

            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while not (self.ring and self.ring[-1]["chunk"] > after) and not self.ended:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._event().wait(), remaining)
                except asyncio.TimeoutError:
                    break
            return ChunkBatch(
                chunks=[ChunkItem(**c) for c in self.ring if c["chunk"] > after],
                ended=self.ended,
                end_reason=self.end_reason,
                oldest=self.ring[0]["chunk"] if self.ring else -1,
                latest=self.ring[-1]["chunk"] if self.ring else -1,
            )

    return FakeSession


@pytest.fixture(scope="module")
def relay(ray_cluster, tmp_path_factory):
    from ray import serve

    from deployments.relay import Relay

    recordings = tmp_path_factory.mktemp("recordings")
    # Same HTTP options as the serving tests' app, whichever starts Serve first (no-op when it runs).
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ.get("HELIOS_TEST_PORT", "8765"))})
    handle = serve.run(
        Relay.options(name="RelayUnderTest", num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
            window_chunks=8, viewer_queue_chunks=8, pace_mjpeg=False, recording_uri=f"file://{recordings}", poll_timeout_s=5
        ),
        name="relay-test",
        route_prefix=None,
    )
    yield handle
    serve.delete("relay-test")


@pytest.fixture
def session(ray_cluster):
    """A fresh fake session (ring of 8): (session_id, actor handle); killed afterwards."""
    from deployments.naming import NAMESPACE, session_actor_name

    made = []

    def make(ring_size: int = 8):
        sid = uuid.uuid4().hex
        actor = fake_session_class().options(name=session_actor_name(sid), namespace=NAMESPACE).remote(ring_size, chunk_frames)
        made.append(actor)
        return sid, actor

    yield make
    for actor in made:
        ray_cluster.kill(actor)


async def read_all(gen) -> bytes:
    return b"".join([piece async for piece in gen])


def chunk_indices(data: bytes) -> list[int | str]:
    return [m["chunk"] if m["type"] == "chunk" else m["reason"] for m in framing.unpack_stream([data])]


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        return list(container.decode(video=0))


def test_viewers_share_one_encode_per_format_and_the_recording_plays(relay, session):
    sid, actor = session()

    async def main():
        before = await relay.stats.remote()
        path = await relay.start_recording.remote(sid)
        stream = relay.options(stream=True).stream
        gens = [stream.remote(sid, fmt, 0) for fmt in ("mp4", "mp4", "msgpack", "mjpeg")]
        await actor.produce.remote(1)
        await actor.produce.remote(2)
        await actor.end.remote("deleted")
        outs = await asyncio.gather(*(read_all(g) for g in gens))
        info = await relay.wait_recording.remote(sid, 60)
        after = await relay.stats.remote()
        again = await relay.start_recording.remote(sid)  # idempotent: never rewrites a recording
        return before, after, path, info, outs, await relay.recording_path.remote(sid), again

    before, after, path, info, (mp4a, mp4b, packed, mj), rec_path, again = asyncio.run(main())
    assert again == path

    # Encoded once per chunk and format, whatever the number of viewers (and the recording shares the mp4).
    delta = {f: after["chunks_encoded"][f] - before["chunks_encoded"][f] for f in ("mp4", "msgpack", "mjpeg")}
    assert delta == {"mp4": 3, "msgpack": 3, "mjpeg": 3}
    assert after["latency_s"]["count"] - before["latency_s"]["count"] == 3
    assert sid not in after["sessions"]  # the feed is gone with its last viewer

    assert mp4a == mp4b
    frames = decode(mp4a)
    assert len(frames) == 3 * N and (frames[0].height, frames[0].width) == (H, W)
    np.testing.assert_allclose(np.diff([float(f.time) for f in frames]), 1 / FPS, atol=1e-6)

    messages = list(framing.unpack_stream([packed]))
    assert [m["type"] for m in messages] == ["chunk"] * 3 + ["end"] and messages[-1]["reason"] == "deleted"
    for k, m in enumerate(messages[:3]):
        assert (m["chunk"], m["first_frame"], m["prompt"], m["fps"]) == (k, 33 * k, f"prompt {k}", 24)
        np.testing.assert_array_equal(framing.frames_of(m), chunk_frames(k))  # bit-identical

    assert len(mjpeg.split_parts(mj)) == 3 * N and mj.endswith(mjpeg.closing_boundary())

    assert info["complete"] and info["chunks"] == 3 and rec_path == path
    assert path.startswith("file://")  # the recording's URL at recording_uri
    with fsspec.open(path, "rb") as f:
        recorded = decode(f.read())
    assert len(recorded) == 3 * N and float(recorded[0].time) == 0.0


def test_late_joiners_live_edge_replay_and_window(relay, session):
    sid, actor = session(ring_size=3)

    async def main():
        await actor.produce.remote(5)  # the session keeps chunks 2, 3, 4
        stream = relay.options(stream=True).stream
        live, replay = stream.remote(sid, "msgpack"), stream.remote(sid, "msgpack", 3)
        firsts = [await live.__anext__(), await replay.__anext__()]
        with pytest.raises(ValueError, match="from=0"):
            await stream.remote(sid, "msgpack", 0).__anext__()
        await actor.produce.remote(1)
        await actor.end.remote("idle_timeout")
        return [first + await read_all(g) for first, g in zip(firsts, (live, replay))]

    live, replay = asyncio.run(main())
    assert chunk_indices(live) == [4, 5, "idle_timeout"]
    assert chunk_indices(replay) == [3, 4, 5, "idle_timeout"]


def test_slow_viewer_is_skipped_forward_and_never_slows_the_others(relay, session):
    sid, actor = session()

    async def main():
        stream = relay.options(stream=True).stream
        fast = stream.remote(sid, "msgpack", 0)
        slow = SkipForward(stream.remote(sid, "msgpack", 0), "msgpack", max_buffered=3)
        slow_mp4 = SkipForward(stream.remote(sid, "mp4", 0), "mp4", max_buffered=2)
        await actor.produce.remote(1)
        heads = [await fast.__anext__(), await anext(aiter(slow)), await anext(aiter(slow_mp4))]
        await actor.produce.remote(6)  # the slow viewers read nothing meanwhile
        await actor.end.remote("deleted")
        fast_all = heads[0] + await read_all(fast)  # the fast viewer gets everything, at once
        await slow.wait_finished()
        await slow_mp4.wait_finished()
        slow_all = heads[1] + await read_all(slow)
        mp4_all = heads[2] + await read_all(slow_mp4)
        return fast_all, slow_all, slow, mp4_all, slow_mp4

    fast_all, slow_all, slow, mp4_all, slow_mp4 = asyncio.run(main())
    assert chunk_indices(fast_all) == [0, 1, 2, 3, 4, 5, 6, "deleted"]
    assert chunk_indices(slow_all) == [0, 5, 6, "deleted"] and slow.dropped == 4
    # mp4: init + chunk 0, then the two newest chunks, on one gap-free timeline.
    assert slow_mp4.dropped == 4
    frames = decode(mp4_all)
    assert len(frames) == 3 * N
    np.testing.assert_allclose(np.diff([float(f.time) for f in frames]), 1 / FPS, atol=1e-6)
    got = frames[N].to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(got - chunk_frames(5)[0]).mean() < 8


def test_session_actor_gone_ends_the_stream(relay, session, ray_cluster):
    sid, actor = session()

    async def main():
        gen = relay.options(stream=True).stream.remote(sid, "msgpack")
        await actor.produce.remote(1)
        first = await gen.__anext__()
        ray_cluster.kill(actor)
        return first + await read_all(gen)

    assert chunk_indices(asyncio.run(main())) == [0, "session actor gone"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("flv", None), "format 'flv'"),
        (("mp4", -1), "from must be"),
        (("mp4", None), "session not found"),
    ],
)
def test_bad_requests_fail_on_the_first_item(relay, args, match):
    async def main():
        await relay.options(stream=True).stream.remote(uuid.uuid4().hex, *args).__anext__()

    with pytest.raises(ValueError, match=match):
        asyncio.run(main())


def test_bad_session_id_is_named(relay):
    with pytest.raises(ValueError, match="session_id 'x/../y'"):
        relay.recording_path.remote("x/../y").result()
