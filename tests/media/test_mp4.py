"""Fragmented MP4: every chunk joinable, every viewer's timeline continuous from 0, decodable by PyAV (and ffmpeg)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from helios.media import mp4box
from helios.media.mp4 import FragmentedMp4Encoder, Mp4Timeline
from helios.media.recording import RecordingWriter
from tests.media.conftest import FPS, H, N, W, make_frames


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        return list(container.decode(video=0))


def stream_bytes(enc, chunks, start=0, skip=()) -> bytes:
    timeline = Mp4Timeline()
    return enc.init_segment + b"".join(timeline.render(c) for i, c in enumerate(chunks) if i >= start and i not in skip)


def test_init_segment_then_fragments(encoded_session):
    enc, _, chunks = encoded_session
    assert [b.type for b in mp4box.iter_boxes(enc.init_segment)] == [b"ftyp", b"moov"]
    for chunk in chunks:
        assert chunk.frames == N
        assert chunk.fragments[0].decode_time == 0
        assert chunk.duration == enc.ticks_for(N) == N * enc.timescale // FPS
        # GOP of one second: a chunk of 33 frames at 24 fps has keyframes at frames 0 and 24.
        assert [f.decode_time for f in chunk.fragments] == [0, enc.ticks_for(24)]


def test_whole_stream_decodes_with_continuous_timestamps(encoded_session):
    enc, frames, chunks = encoded_session
    decoded = decode(stream_bytes(enc, chunks))
    assert len(decoded) == 4 * N
    assert {(f.height, f.width) for f in decoded} == {(H, W)}
    times = np.array([float(f.time) for f in decoded])
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-6)
    assert times[0] == 0
    keys = [i for i, f in enumerate(decoded) if f.key_frame]
    assert {0, N, 2 * N, 3 * N} <= set(keys)
    source = np.concatenate(frames)
    for i in (0, 1, 32, 33, 70, 131):
        got = decoded[i].to_ndarray(format="rgb24").astype(np.int16)
        assert np.abs(got - source[i]).mean() < 8, f"frame {i} does not match its source"


@pytest.mark.parametrize("start", [1, 3])
def test_late_joiner_starts_at_zero_with_the_right_frames(encoded_session, start):
    enc, frames, chunks = encoded_session
    decoded = decode(stream_bytes(enc, chunks, start=start))
    assert len(decoded) == (4 - start) * N
    assert float(decoded[0].time) == 0.0 and decoded[0].key_frame
    got = decoded[0].to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(got - frames[start][0]).mean() < 8


def test_skipped_chunk_leaves_no_gap(encoded_session):
    enc, frames, chunks = encoded_session
    decoded = decode(stream_bytes(enc, chunks, skip={1, 2}))
    assert len(decoded) == 2 * N
    times = np.array([float(f.time) for f in decoded])
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-6)
    got = decoded[N].to_ndarray(format="rgb24").astype(np.int16)
    assert np.abs(got - frames[3][0]).mean() < 8


def test_viewer_timelines_share_mdat_bytes(encoded_session):
    enc, _, chunks = encoded_session
    a, b = Mp4Timeline(), Mp4Timeline()
    a.render(chunks[0])
    late = b.render(chunks[1])
    early = a.render(chunks[1])
    assert late != early  # different decode times in the moofs
    assert chunks[1].fragments[0].mdat in late and chunks[1].fragments[0].mdat in early


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg command line not installed")
def test_ffmpeg_plays_a_late_join(encoded_session, tmp_path):
    enc, _, chunks = encoded_session
    path = tmp_path / "late.mp4"
    path.write_bytes(stream_bytes(enc, chunks, start=2))
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "framemd5", "-"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == ""
    assert len([line for line in out.stdout.splitlines() if not line.startswith("#")]) == 2 * N


def test_recording_writer_plays_while_growing_and_after(encoded_session, tmp_path, test_output_dir):
    enc, _, chunks = encoded_session
    writer = RecordingWriter(tmp_path / "s" / "recording.mp4")
    writer.append(enc.init_segment, chunks[2])
    assert len(decode(Path(writer.path).read_bytes())) == N  # readable mid-way
    writer.append(enc.init_segment, chunks[3])
    writer.close()
    decoded = decode(Path(writer.path).read_bytes())
    assert len(decoded) == 2 * N and float(decoded[0].time) == 0.0
    (test_output_dir / "media-recording.mp4").write_bytes(Path(writer.path).read_bytes())
    with pytest.raises(ValueError, match="closed"):
        writer.append(enc.init_segment, chunks[0])


def test_rebase_and_durations(encoded_session):
    enc, _, chunks = encoded_session
    frag = chunks[0].fragments[1]
    moved = mp4box.rebase_moof(frag.moof, 123456789012, sequence=7)
    assert len(moved) == len(frag.moof)
    assert mp4box.decode_time(moved) == 123456789012
    assert sum(mp4box.moof_duration(f.moof) for f in chunks[0].fragments) == chunks[0].duration
    shifted, covered = mp4box.shift_decode_times(moved + frag.mdat, 12)
    assert covered == mp4box.moof_duration(frag.moof)
    assert mp4box.decode_time(shifted) == 123456789000


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((33, 64, 96, 3), np.float32), "uint8"),
        (np.zeros((33, 64, 96), np.uint8), "shape"),
        (np.zeros((0, 64, 96, 3), np.uint8), "at least one"),
        (np.zeros((33, 32, 96, 3), np.uint8), "32x96"),
    ],
)
def test_bad_frames_are_named(frames, match):
    enc = FragmentedMp4Encoder(W, H, FPS)
    with pytest.raises(ValueError, match=match):
        enc.encode_chunk(frames)
    enc.close()


def test_bad_geometry_is_named():
    with pytest.raises(ValueError, match="65x64"):
        FragmentedMp4Encoder(65, 64, 24)
    with pytest.raises(ValueError, match="fps"):
        FragmentedMp4Encoder(64, 64, 0)
    with pytest.raises(RuntimeError, match="init segment"):
        FragmentedMp4Encoder(64, 64, 24).init_segment


def test_malformed_boxes_are_reported():
    with pytest.raises(ValueError, match="bad size"):
        mp4box.iter_boxes(b"\x00\x00\x00\xffmoof" + b"\x00" * 8)
    with pytest.raises(ValueError, match="truncated"):
        mp4box.iter_boxes(b"\x00\x00\x00")


def test_other_chunk_lengths_and_rates():
    enc = FragmentedMp4Encoder(64, 64, 30)
    chunk = enc.encode_chunk(make_frames(0, n=5, h=64, w=64))
    decoded = decode(enc.init_segment + Mp4Timeline().render(chunk))
    assert len(decoded) == 5 and chunk.duration == enc.ticks_for(5)
    enc.close()


def test_codec_string(encoded_session):
    enc, _, _ = encoded_session
    assert mp4box.codec_string(enc.init_segment).startswith("avc1.64")  # x264 High profile
    with pytest.raises(ValueError, match="avcC"):
        mp4box.codec_string(b"\x00" * 32)


def test_prft_carries_the_production_time_and_decoders_skip_it(encoded_session):
    from helios.media import mp4box
    from helios.media.mp4 import Mp4Timeline

    enc, _, chunks = encoded_session
    timeline = Mp4Timeline()
    data = enc.init_segment + timeline.render(chunks[0], produced_at=1_700_000_000.25) + timeline.render(chunks[1], produced_at=1_700_000_002.5)
    prfts = [b for b in mp4box.iter_boxes(data) if b.type == b"prft"]
    assert len(prfts) == 2
    wall, media = mp4box.prft_time(data[prfts[1].offset : prfts[1].end])
    assert wall == pytest.approx(1_700_000_002.5, abs=1e-6) and media == chunks[0].duration
    # Skip-forward shifts it with the moofs.
    shifted, _ = mp4box.shift_decode_times(data[prfts[1].offset :], chunks[0].duration)
    assert mp4box.prft_time(shifted[:32])[1] == 0
    with av.open(io.BytesIO(data)) as c:
        assert len(list(c.decode(video=0))) == chunks[0].frames + chunks[1].frames
