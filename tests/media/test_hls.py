"""LL-HLS playlist without Ray: numbering, the sliding window, parts, gaps, blocking reload, strict directives, encode once."""

from __future__ import annotations

import asyncio
import io
import re

import av
import pytest

from helios.media.fanout import ChunkEntry, FanoutStats, SessionFanout
from helios.media.hls import DirectiveError, HlsTrack, parse_directives
from helios.media.hlsfeed import HlsFeed
from tests.media.conftest import make_frames

N, H, W = 33, 32, 48  # a real chunk length: two fragments (frames 0-23, 24-32) at 24 fps


def entry(k: int) -> ChunkEntry:
    async def load():
        return make_frames(k, n=N, h=H, w=W)

    return ChunkEntry(k, {"fps": 24, "first_frame": k * N, "prompt": f"p{k}", "produced_at": 1_700_000_000.0 + k}, load)


def run(coro):
    return asyncio.run(coro)


async def fed(chunks: range, window: int = 5, **kw) -> tuple[SessionFanout, HlsFeed]:
    """A fan-out with an HLS feed that has taken in `chunks`."""
    fo = SessionFanout("s", FanoutStats(), window=8, viewer_queue=8, pace_mjpeg=False)
    feed = HlsFeed(fo, window=window, **kw)
    for k in chunks:
        fo.publish(entry(k))
    await wait_segment(feed, chunks[-1])
    return fo, feed


async def wait_segment(feed: HlsFeed, msn: int) -> None:
    await feed.ready.wait()
    while feed.track.last_msn < msn:  # one segment at a time: a directive may run at most 2 segments ahead
        assert await feed.track.wait(feed.track.last_msn + 1, None, timeout_s=60)


def segments_of(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def test_playlist_numbers_segments_by_chunk_and_slides_its_window():
    async def main():
        fo, feed = await fed(range(7), window=5)
        text = feed.track.playlist("?token=t")
        fo.finish("done")
        await feed.task
        return feed, text, feed.track.playlist("?token=t")

    feed, text, final = run(main())
    assert text.startswith("#EXTM3U\n")
    assert "#EXT-X-MEDIA-SEQUENCE:2\n" in text  # chunks 2..6: the window of 5
    assert segments_of(text) == [f"{k}.m4s?token=t" for k in range(2, 7)]
    assert "#EXT-X-TARGETDURATION:2" in text  # 33 frames = 1.375 s, rounded up
    assert "CAN-BLOCK-RELOAD=YES" in text and "PART-HOLD-BACK=3.000" in text
    assert "#EXT-X-PART-INF:PART-TARGET=1.000" in text
    assert '#EXT-X-MAP:URI="init.mp4?token=t"' in text
    assert text.count("#EXTINF:1.37500,") == 5
    parts = re.findall(r'#EXT-X-PART:DURATION=([0-9.]+),URI="([^"]+)",INDEPENDENT=YES', text)
    # Parts only for the 3 newest segments; each chunk's two fragments: 24 and 9 frames.
    assert [u for _, u in parts] == [f"{k}.{i}.m4s?token=t" for k in (4, 5, 6) for i in (0, 1)]
    assert [float(d) for d, _ in parts[:2]] == [1.0, 0.375]
    assert text.rstrip().endswith('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="7.0.m4s?token=t"')
    assert "#EXT-X-ENDLIST" not in text
    assert final.rstrip().endswith("#EXT-X-ENDLIST") and "PRELOAD-HINT" not in final
    assert "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z" in text  # chunk 2's produced_at
    # Parts are the segment's bytes, split.
    seg = feed.track.segment(6)
    assert seg.data == feed.track.part(6, 0).data + feed.track.part(6, 1).data
    assert feed.track.segment(1) is None and feed.track.part(6, 2) is None  # slid out / no such part


def test_segments_decode_on_one_timeline_from_the_chunks_first_frames():
    async def main():
        fo, feed = await fed(range(4), window=5)
        track = feed.track
        blob = track.init_segment + b"".join(track.segment(k).data for k in (1, 2, 3))
        fo.finish("done")
        await feed.task
        return blob

    blob = run(main())
    with av.open(io.BytesIO(blob)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 3 * N
    # Decode time comes from first_frame: segment 1 starts at frame 33, and the frames follow on.
    pts = [round(float(f.pts * f.time_base) * 24) for f in frames]
    assert pts == list(range(N, 4 * N))
    # The content is the chunks' content (make_frames varies green by chunk).
    greens = [int(f.to_ndarray(format="rgb24")[..., 1].mean()) for f in frames[:: N]]
    expected = [int(make_frames(k, n=N, h=H, w=W)[0, ..., 1].mean()) for k in (1, 2, 3)]
    assert all(abs(g - e) <= 6 for g, e in zip(greens, expected)), (greens, expected)
    assert len(set(expected)) == 3  # the check could fail: the chunks differ


def test_hls_adds_no_encode_to_the_mp4_viewers():
    async def main():
        fo = SessionFanout("s", FanoutStats(), window=8, viewer_queue=8, pace_mjpeg=False)
        mp4 = fo.subscribe("mp4", 0)
        mjpeg = fo.subscribe("mjpeg", 0)
        collect = [asyncio.ensure_future(_drain(fo, v)) for v in (mp4, mjpeg)]
        feeds = [HlsFeed(fo, window=5), HlsFeed(fo, window=5)]
        for k in range(4):
            fo.publish(entry(k))
        for f in feeds:
            await wait_segment(f, 3)
        fo.finish("done")
        await asyncio.gather(*collect, *(f.task for f in feeds))
        return fo

    fo = run(main())
    assert fo.stats.chunks_encoded["mp4"] == 4  # one encode per chunk for 1 mp4 viewer and 2 HLS feeds
    assert fo.stats.chunks_encoded["mjpeg"] == 4
    assert fo.stats.repeat_encodes == {f: 0 for f in fo.stats.repeat_encodes}
    assert fo.viewer_counts() == {"mjpeg": 0, "mp4": 0, "msgpack": 0}  # everyone left


async def _drain(fo, viewer):
    return [p async for p in fo.stream(viewer)]


def test_blocking_reload_returns_when_the_asked_part_exists():
    async def main():
        fo, feed = await fed(range(2))
        track = feed.track
        assert await track.wait(1, 1, timeout_s=0)  # present: no wait at all
        waiter = asyncio.ensure_future(track.wait(2, 0, timeout_s=60))
        past_end = asyncio.ensure_future(track.wait(1, 2, timeout_s=60))  # part 2 of a 2-part segment = part 0 of 2
        await asyncio.sleep(0)
        assert not waiter.done() and not past_end.done()
        fo.publish(entry(2))
        assert await waiter and await past_end
        assert track.last_msn == 2
        fo.finish("done")
        await feed.task
        return track

    run(main())


def test_blocking_reload_times_out_and_refuses_requests_too_far_ahead():
    async def main():
        fo, feed = await fed(range(2))
        track = feed.track
        assert track.hold_timeout_s() == 6.0  # three target durations (RFC 8216bis 6.2.5.2: then 503)
        assert not await track.wait(2, None, timeout_s=0.05)
        assert await track.wait(3, None, timeout_s=0.0) is False  # last + 2 is still allowed
        with pytest.raises(DirectiveError) as too_far:
            await track.wait(4, None, timeout_s=0.0)
        assert too_far.value.field == "_HLS_msn"
        with pytest.raises(DirectiveError) as parts:
            await track.wait(2, 3, timeout_s=0.0)  # 4 parts ahead of the last (Advance Part Limit 3)
        assert parts.value.field == "_HLS_part"
        fo.finish("done")
        await feed.task
        # Once ended the directives are ignored: everything answers at once.
        assert await track.wait(99, 5, timeout_s=0)

    run(main())


def test_missing_chunks_become_gap_segments_and_numbering_never_shifts():
    track = HlsTrack(b"init", part_target_s=1.0, window=6)
    track.add(0, (), 1.375)
    track.add(3, (), 1.375)
    text = track.playlist()
    assert segments_of(text) == ["0.m4s", "1.m4s", "2.m4s", "3.m4s"]
    assert text.count("#EXT-X-GAP") == 2
    assert track.segment(1) is None and track.segment(3) is not None
    with pytest.raises(ValueError):
        track.add(3, (), 1.375)


@pytest.mark.parametrize(
    ("msn", "part", "field"),
    [("-1", None, "_HLS_msn"), ("1.5", None, "_HLS_msn"), ("abc", None, "_HLS_msn"), ("", None, "_HLS_msn"),
     ("\u0663", None, "_HLS_msn"), ("9" * 16, None, "_HLS_msn"), ("3", "x", "_HLS_part"), (None, "0", "_HLS_part")],
)
def test_directives_are_parsed_strictly(msn, part, field):
    with pytest.raises(DirectiveError) as err:
        parse_directives(msn, part)
    assert err.value.field == field and field in str(err.value)


def test_directives_parse():
    assert parse_directives(None, None) == (None, None)
    assert parse_directives("12", None) == (12, None)
    assert parse_directives("12", "0") == (12, 0)
