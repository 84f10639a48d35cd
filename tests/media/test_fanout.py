"""Fan-out without Ray: encode once per format, late joiners, slow viewers skipped forward, end of stream, recording."""

from __future__ import annotations

import asyncio
import io

import av
import numpy as np
import pytest

from helios.media import framing, mjpeg
from helios.media.fanout import ChunkEntry, FanoutStats, SessionFanout
from helios.media.recording import RecordingWriter
from tests.media.conftest import make_frames

n, h, w = 4, 32, 48


def entry(k: int, fail: bool = False) -> ChunkEntry:
    async def load():
        if fail:
            raise RuntimeError("object lost")
        return make_frames(k, n=n, h=h, w=w)

    return ChunkEntry(k, {"fps": 24, "first_frame": k * n, "prompt": f"p{k}", "produced_at": 0.0}, load)


def fanout(**kw) -> SessionFanout:
    kw.setdefault("pace_mjpeg", False)
    kw.setdefault("viewer_queue", 8)
    return SessionFanout("s", FanoutStats(), **kw)


async def collect(fo: SessionFanout, viewer) -> list[bytes]:
    return [piece async for piece in fo.stream(viewer)]


def run(coro):
    return asyncio.run(coro)


def test_every_format_is_encoded_once_for_many_viewers():
    async def main():
        fo = fanout(viewer_queue=8)
        viewers = [fo.subscribe(fmt, 0) for fmt in ("mp4", "mp4", "msgpack", "msgpack", "mjpeg", "mjpeg")]
        assert fo.viewer_counts() == {"mp4": 2, "msgpack": 2, "mjpeg": 2}
        tasks = [asyncio.ensure_future(collect(fo, v)) for v in viewers]
        for k in range(3):
            fo.publish(entry(k))
        fo.finish("deleted")
        return fo, await asyncio.gather(*tasks)

    fo, outs = run(main())
    assert fo.stats.chunks_encoded == {"mp4": 3, "msgpack": 3, "mjpeg": 3}
    assert fo.viewers == set()
    mp4a, mp4b, mpa, mpb, mja, mjb = (b"".join(o) for o in outs)
    assert mp4a == mp4b and mpa == mpb and mja == mjb
    with av.open(io.BytesIO(mp4a)) as c:
        assert len(list(c.decode(video=0))) == 3 * n
    messages = list(framing.unpack_stream([mpa]))
    assert [m["type"] for m in messages] == ["chunk"] * 3 + ["end"] and messages[-1]["reason"] == "deleted"
    np.testing.assert_array_equal(framing.frames_of(messages[1]), make_frames(1, n=n, h=h, w=w))
    assert mja.endswith(mjpeg.closing_boundary()) and len(mjpeg.split_parts(mja)) == 3 * n
    assert fo.stats.snapshot()["latency_s"]["n"] == 3
    assert fo.stats.snapshot()["repeat_encodes"] == {"mp4": 0, "msgpack": 0, "mjpeg": 0}


def test_a_chunk_encoded_twice_in_a_format_is_counted():
    """What the served encode-once checks read: a second encode of one generated chunk (same index and
    `produced_at`) counts; the same index after a reset (a new `produced_at`) does not."""
    stats = FanoutStats()
    stats.record_encode("mp4", (0, 100.0))
    stats.record_encode("mjpeg", (0, 100.0))
    stats.record_encode("mp4", (0, 200.0))  # chunk 0 again after a reset
    assert stats.repeat_encodes == {"mp4": 0, "msgpack": 0, "mjpeg": 0}
    stats.record_encode("mp4", (0, 100.0))
    assert stats.repeat_encodes["mp4"] == 1 and stats.chunks_encoded["mp4"] == 3


def test_slow_viewer_is_skipped_forward_and_never_holds_back_others():
    async def main():
        fo = fanout(viewer_queue=2)
        fast, slow = fo.subscribe("msgpack"), fo.subscribe("msgpack")
        fast_gen = fo.stream(fast)
        got_fast = []
        for k in range(6):
            fo.publish(entry(k))
            got_fast.append(await anext(fast_gen))  # the fast viewer reads each chunk as it comes
        fo.finish("done")
        got_fast += [p async for p in fast_gen]
        got_slow = await collect(fo, slow)  # the slow one reads only now
        return fo, slow, got_fast, got_slow

    fo, slow, got_fast, got_slow = run(main())
    chunks = lambda pieces: [m["chunk"] for m in framing.unpack_stream(pieces) if m["type"] == "chunk"]  # noqa: E731
    assert chunks(got_fast) == [0, 1, 2, 3, 4, 5]
    assert chunks(got_slow) == [4, 5]
    assert slow.dropped == 4 and fo.stats.chunks_dropped == 4


def test_slow_mp4_viewer_skips_whole_chunks_and_still_plays():
    async def main():
        fo = fanout(viewer_queue=1)
        slow = fo.subscribe("mp4")
        for k in range(4):
            fo.publish(entry(k))
        fo.finish("done")
        return await collect(fo, slow)

    data = b"".join(run(main()))
    with av.open(io.BytesIO(data)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == n and float(frames[0].time) == 0.0
    assert np.abs(frames[0].to_ndarray(format="rgb24").astype(np.int16) - make_frames(3, n=n, h=h, w=w)[0]).mean() < 10


def test_late_joiners_live_edge_and_window():
    async def main():
        fo = fanout(window=3)
        for k in range(5):
            fo.publish(entry(k))
        assert (fo.oldest, fo.latest) == (2, 4)
        live = fo.subscribe("msgpack")
        replay = fo.subscribe("msgpack", 3)
        future = fo.subscribe("msgpack", 6)
        with pytest.raises(ValueError, match="from=1"):
            fo.subscribe("msgpack", 1)
        with pytest.raises(ValueError, match="from must be"):
            fo.subscribe("msgpack", -1)
        with pytest.raises(ValueError, match="'flv'"):
            fo.subscribe("flv")
        assert fo.publish(entry(4)) is False  # duplicate
        fo.publish(entry(5))
        fo.publish(entry(6))
        fo.finish("done")
        outs = await asyncio.gather(*(collect(fo, v) for v in (live, replay, future)))
        return [[m["chunk"] for m in framing.unpack_stream(o) if m["type"] == "chunk"] for o in outs]

    assert run(main()) == [[4, 5, 6], [3, 4, 5, 6], [6]]


def test_viewer_joining_after_the_end_gets_the_end():
    async def main():
        fo = fanout()
        fo.publish(entry(0))
        fo.finish("session_time_limit")
        return await collect(fo, fo.subscribe("msgpack"))

    messages = list(framing.unpack_stream(run(main())))
    assert [m["type"] for m in messages] == ["chunk", "end"]
    assert messages[-1]["reason"] == "session_time_limit"


def test_a_lost_chunk_is_skipped():
    async def main():
        fo = fanout()
        v = fo.subscribe("msgpack", 0)
        fo.publish(entry(0))
        fo.publish(entry(1, fail=True))
        fo.publish(entry(2))
        fo.finish("done")
        return await collect(fo, v)

    assert [m.get("chunk") for m in framing.unpack_stream(run(main()))] == [0, 2, None]


def test_mjpeg_is_paced_at_the_stream_fps():
    async def main():
        fo = fanout(pace_mjpeg=True)
        v = fo.subscribe("mjpeg", 0)
        fo.publish(entry(0))
        fo.finish("done")
        loop = asyncio.get_running_loop()
        stamps = []
        async for _ in fo.stream(v):
            stamps.append(loop.time())
        return stamps

    stamps = run(main())
    # n frames at 24 fps take at least (n - 1) / 24 s from the first part to the last.
    assert stamps[n - 1] - stamps[0] >= (n - 1) / 24 - 1e-3


def test_recording_gets_every_chunk_from_the_oldest_kept(tmp_path):
    async def main():
        fo = fanout(window=4)
        fo.publish(entry(0))
        fo.publish(entry(1))
        writer = RecordingWriter(tmp_path / "recording.mp4")
        task = fo.record(writer)
        assert fo.viewer_counts()["mp4"] == 0  # a recording is not a viewer
        for k in range(2, 5):
            fo.publish(entry(k))
        fo.finish("done")
        await task
        return writer

    writer = run(main())
    assert writer.closed and writer.chunks == 5
    with av.open(str(writer.path)) as c:
        assert len(list(c.decode(video=0))) == 5 * n


def test_bad_fanout_options():
    with pytest.raises(ValueError, match="window"):
        SessionFanout("s", FanoutStats(), window=0)
    with pytest.raises(ValueError, match="viewer_queue"):
        SessionFanout("s", FanoutStats(), viewer_queue=0)


def test_skip_forward_keeps_the_first_and_newest_pieces():
    from helios.media.skipforward import SkipForward

    async def source():
        for k in range(6):
            yield framing.pack_chunk(make_frames(k, n=1, h=h, w=w), chunk=k, first_frame=k, prompt=None, fps=24)
        yield framing.pack_end("done")

    async def main():
        sf = SkipForward(source(), "msgpack", max_buffered=3)
        await sf.wait_finished()  # the client read nothing while the source ran
        return sf, [p async for p in sf]

    sf, pieces = run(main())
    assert [m.get("chunk", m["type"]) for m in framing.unpack_stream(pieces)] == [0, 5, "end"]
    assert (sf.received, sf.dropped) == (7, 4)
    with pytest.raises(ValueError, match="max_buffered"):
        SkipForward(source(), "msgpack", max_buffered=1)


def test_skip_forward_aclose_closes_an_endless_source_while_it_is_being_read():
    from helios.media.skipforward import SkipForward

    closed = []

    async def endless():
        try:
            k = 0
            while True:
                await asyncio.sleep(0)  # suspended inside the pump when aclose comes
                yield framing.pack_end(f"piece {k}")
                k += 1
        finally:
            closed.append(True)

    async def main():
        sf = SkipForward(endless(), "msgpack", max_buffered=3)
        async for _ in sf:
            break
        await sf.aclose()  # used to hit "asynchronous generator is already running", swallowed
        return sf, list(closed)  # closed by the time aclose returns, not at loop teardown

    sf, closed_by_aclose = run(main())
    assert closed_by_aclose == [True] and sf.finished
