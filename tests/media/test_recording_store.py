"""Recordings: a growing file's playable prefix (whole fragments only) and deletion after the retention."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from helios.media.recording import RecordingStore, RecordingWriter, playable_length, stored_playable_length
from helios.media.storage import RecordingStorage, open_uri
from tests.media.conftest import N

SID = "0123456789abcdef0123456789abcdef"


def frames_in(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_playable_length_ends_on_whole_fragments_while_a_fragment_is_half_written(encoded_session, tmp_path):
    enc, _, chunks = encoded_session
    writer = RecordingWriter(tmp_path / "recording.mp4")
    writer.append(enc.init_segment, chunks[0])
    path = Path(writer.path)
    one = path.stat().st_size
    assert playable_length(path) == one  # init + one chunk, all whole
    # Half of the next chunk's bytes, as a reader may see them mid-write.
    next_bytes = writer._timeline.render(chunks[1])
    with open(path, "ab") as f:
        f.write(next_bytes[: len(next_bytes) // 2])
    assert playable_length(path) == one
    prefix = path.read_bytes()[:one]
    assert frames_in(prefix) == N


def test_playable_length_of_an_init_segment_only_and_of_a_torn_header(encoded_session, tmp_path):
    enc, _, _ = encoded_session
    path = tmp_path / "recording.mp4"
    path.write_bytes(enc.init_segment[:10])
    assert playable_length(path) == 0  # not even the init segment is whole
    path.write_bytes(enc.init_segment)
    assert playable_length(path) == len(enc.init_segment)


URI_KINDS = ["path", "file://", "simplecache::file://"]
"""recording_uri forms tested: a plain folder, a file:// URL, and a chain whose writes appear only when closed
(as on an object store: s3, gcs)."""


def uri_of(kind: str, folder: Path) -> str:
    return str(folder) if kind == "path" else f"{kind}{folder}"


def _record(storage: RecordingStorage, sid: str, enc, chunks, n: int = 1) -> RecordingWriter:
    writer = RecordingWriter(storage.url(sid), storage.create(sid))
    for chunk in chunks[:n]:
        writer.append(enc.init_segment, chunk)
    writer.close()
    return writer


async def _wait_gone(storage: RecordingStorage, sid: str, timeout_s: float = 30.0) -> None:
    """Wait until the session's folder no longer exists (the condition the test asserts), or fail."""
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(storage.fs.exists, storage.folder(sid)):
        assert time.monotonic() < deadline, f"{storage.folder(sid)} still exists after {timeout_s}s"
        await asyncio.sleep(0.02)  # polling interval of the condition


@pytest.mark.parametrize("kind", URI_KINDS)
@pytest.mark.parametrize("retention_s", [0.2, 0])
def test_a_recording_is_deleted_after_its_retention(encoded_session, tmp_path, retention_s, kind):
    """0: deleted at the session end; otherwise kept until the retention has passed, then deleted."""
    enc, _, chunks = encoded_session
    store = RecordingStore(uri_of(kind, tmp_path), retention_s=retention_s)

    async def main():
        _record(store.storage, SID, enc, chunks)
        store.finished(SID)
        assert Path(tmp_path, SID, "recording.mp4").is_file()  # the deletion is scheduled, never done in the caller
        await _wait_gone(store.storage, SID)

    asyncio.run(main())
    assert store.deleted == 1
    assert not Path(tmp_path, SID).exists()


@pytest.mark.parametrize("kind", URI_KINDS)
def test_expired_lists_old_unscheduled_recordings_only(encoded_session, tmp_path, kind):
    enc, _, chunks = encoded_session
    store = RecordingStore(uri_of(kind, tmp_path), retention_s=60)
    ids = {name: name * 32 for name in "abcd"}  # valid-looking session ids
    for sid in ids.values():
        _record(store.storage, sid, enc, chunks)
    old = time.time() - 3600
    for name in "abc":
        os.utime(tmp_path / ids[name] / "recording.mp4", (old, old))
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
    assert [(tmp_path / ids[n] / "recording.mp4").exists() for n in "abcd"] == [False, True, True, True]
    assert (other / "x.txt").exists()
    assert not store.delete(ids["a"])  # already gone: False, no error


@pytest.mark.parametrize("kind", URI_KINDS)
def test_a_recording_written_in_one_process_is_read_whole_in_another(encoded_session, tmp_path, kind):
    """The relay and the front door are different processes (nodes): the reader knows only the URI."""
    enc, _, chunks = encoded_session
    uri = uri_of(kind, tmp_path)
    writer = _record(RecordingStorage(uri), SID, enc, chunks, n=2)
    code = (
        "import sys; from helios.media.recording import stored_playable_length; from helios.media.storage import RecordingStorage; "
        "s = RecordingStorage(sys.argv[1]); n = stored_playable_length(s, sys.argv[2]); f = s.open(sys.argv[2]); "
        "sys.stdout.buffer.write(f.read(n))"
    )
    out = subprocess.run([sys.executable, "-c", code, uri, SID], capture_output=True, check=True, timeout=60).stdout
    assert out == Path(tmp_path, SID, "recording.mp4").read_bytes()
    assert frames_in(out) == 2 * N and writer.chunks == 2


def test_on_a_store_that_shows_files_once_closed_the_recording_appears_at_its_end(encoded_session, tmp_path):
    """simplecache:: (like s3, gcs) uploads at close: nothing to serve while it records, all of it after."""
    enc, _, chunks = encoded_session
    storage = RecordingStorage(f"simplecache::file://{tmp_path}")
    writer = RecordingWriter(storage.url(SID), storage.create(SID))
    writer.append(enc.init_segment, chunks[0])
    assert not storage.exists(SID) and stored_playable_length(storage, SID) == 0
    writer.close()
    assert storage.exists(SID) and stored_playable_length(storage, SID) == storage.size(SID) > 0

    growing = RecordingStorage(f"file://{tmp_path}/live")  # a file system: the prefix grows as chunks are flushed
    writer = RecordingWriter(growing.url(SID), growing.create(SID))
    writer.append(enc.init_segment, chunks[0])
    first = stored_playable_length(growing, SID)
    writer.append(enc.init_segment, chunks[1])
    assert 0 < first < stored_playable_length(growing, SID)
    writer.close()


@pytest.mark.parametrize(
    ("uri", "why"),
    [("nope://bucket/x", "Protocol not known"), ("memory://x", "one process only"), ("https://example.com/r", "read-only"),
     ("", "empty"), ("file:///", "root of its file system"), ("simplecache::memory://x", "one process only")],
)
def test_unusable_recording_uris_are_refused_naming_the_setting(uri, why):
    with pytest.raises(ValueError, match="recording_uri") as err:
        open_uri(uri)
    assert why in str(err.value)


def test_credentials_in_a_recording_uri_are_never_shown():
    with pytest.raises(ValueError) as err:
        open_uri("nope://user:hunter2@host/x")
    assert "hunter2" not in str(err.value) and "***@host" in str(err.value)


@pytest.mark.parametrize(
    ("header", "span"),
    [(None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-10", (990, 1000)),
     ("bytes=900-5000", (900, 1000)), ("bytes=1000-", False), ("bytes=-0", False), ("bytes=5-2", False),
     ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=²-3", None), ("bytes=" + "9" * 40 + "-", None)],
)
def test_parse_range(header, span):
    from deployments.http.files import parse_range

    assert parse_range(header, 1000) == span
