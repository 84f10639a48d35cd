"""Recordings: a growing file's playable prefix (whole fragments only) and deletion after the retention."""

from __future__ import annotations

import asyncio
import io
import os
import time

import av
import pytest

from helios.media.recording import RecordingStore, RecordingWriter, playable_length
from tests.media.conftest import N

SID = "0123456789abcdef0123456789abcdef"


def frames_in(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_playable_length_ends_on_whole_fragments_while_a_fragment_is_half_written(encoded_session, tmp_path):
    enc, _, chunks = encoded_session
    writer = RecordingWriter(tmp_path / "recording.mp4")
    writer.append(enc.init_segment, chunks[0])
    one = writer.path.stat().st_size
    assert playable_length(writer.path) == one  # init + one chunk, all whole
    # Half of the next chunk's bytes, as a reader may see them mid-write.
    next_bytes = writer._timeline.render(chunks[1])
    with open(writer.path, "ab") as f:
        f.write(next_bytes[: len(next_bytes) // 2])
    assert playable_length(writer.path) == one
    prefix = writer.path.read_bytes()[:one]
    assert frames_in(prefix) == N


def test_playable_length_of_an_init_segment_only_and_of_a_torn_header(encoded_session, tmp_path):
    enc, _, _ = encoded_session
    path = tmp_path / "recording.mp4"
    path.write_bytes(enc.init_segment[:10])
    assert playable_length(path) == 0  # not even the init segment is whole
    path.write_bytes(enc.init_segment)
    assert playable_length(path) == len(enc.init_segment)


async def _wait_gone(path, timeout_s: float = 30.0) -> None:
    """Wait until `path` no longer exists (the condition the test asserts), or fail."""
    deadline = time.monotonic() + timeout_s
    while path.exists():
        assert time.monotonic() < deadline, f"{path} still exists after {timeout_s}s"
        await asyncio.sleep(0.02)  # polling interval of the condition


@pytest.mark.parametrize("retention_s", [0.2, 0])
def test_a_recording_is_deleted_after_its_retention(encoded_session, tmp_path, retention_s):
    """0: deleted at the session end; otherwise kept until the retention has passed, then deleted."""
    enc, _, chunks = encoded_session
    store = RecordingStore(tmp_path, retention_s=retention_s)

    async def main():
        writer = RecordingWriter(store.path(SID))
        writer.append(enc.init_segment, chunks[0])
        writer.close()
        store.finished(SID)
        assert store.path(SID).exists()  # the deletion is scheduled, never done in the caller
        await _wait_gone(store.path(SID).parent)

    asyncio.run(main())
    assert store.deleted == 1


def test_expired_lists_old_unscheduled_recordings_only(encoded_session, tmp_path):
    enc, _, chunks = encoded_session
    store = RecordingStore(tmp_path, retention_s=60)
    ids = {name: name * 32 for name in "abcd"}  # valid-looking session ids
    for sid in ids.values():
        writer = RecordingWriter(store.path(sid))
        writer.append(enc.init_segment, chunks[0])
        writer.close()
    old = time.time() - 3600
    for name in "abc":
        os.utime(store.path(ids[name]), (old, old))
    other = tmp_path / "notes"  # not a session's folder: never touched
    other.mkdir()
    (other / "x.txt").write_text("x")
    os.utime(other / "x.txt", (old, old))
    live = {ids["b"]}
    expired = store.expired(keep={ids["c"]})
    # a, b: old; c: written here; d: within the retention. The caller deletes those whose session is gone.
    assert expired == sorted([ids["a"], ids["b"]])
    for sid in expired:
        if sid not in live:
            assert store.delete(sid)
    assert [store.path(ids[n]).exists() for n in "abcd"] == [False, True, True, True]
    assert (other / "x.txt").exists()


@pytest.mark.parametrize(
    ("header", "span"),
    [(None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-10", (990, 1000)),
     ("bytes=900-5000", (900, 1000)), ("bytes=1000-", False), ("bytes=-0", False), ("bytes=5-2", False),
     ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=²-3", None), ("bytes=" + "9" * 40 + "-", None)],
)
def test_parse_range(header, span):
    from deployments.http.files import parse_range

    assert parse_range(header, 1000) == span
