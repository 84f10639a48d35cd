"""Where session recordings live: an fsspec file system and a root folder in it (`recording_uri`).

A plain path or `file://` URL is a local folder (or a shared volume mounted at the same path
on every node); any other fsspec URL (`s3://bucket/prefix`, `gcs://...`, a chain such as
`simplecache::s3://...`) is an object store the relay writes to and every front door reads
from, whatever node it runs on. Layout: `<root>/<session_id>/recording.mp4`.

What can be read when depends on the store, not on this code: on a file system the bytes
are visible as they are flushed (a growing recording is served as its playable prefix); on
an object store an object exists only once its upload is complete, i.e. when the session
ended (docs/serving.md#recordings).
"""

from __future__ import annotations

import os
import re
from typing import IO

import fsspec
from fsspec.core import url_to_fs

RECORDING_FILE = "recording.mp4"

PER_PROCESS_PROTOCOLS = {"memory": "its files live in one process only, so front doors on other processes would never see them"}
"""fsspec protocols refused for recordings, with why."""
READ_ONLY_PROTOCOLS = {"http", "https", "github", "zip", "tar", "reference", "data"}
"""fsspec protocols that cannot be written."""

_USERINFO = re.compile(r"(?<=://)[^/@]*@")


def shown_uri(uri: str) -> str:
    """`uri` without credentials (`scheme://user:secret@host` -> `scheme://***@host`), for messages and logs."""
    return _USERINFO.sub("***@", uri)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)


def open_uri(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, root path in it) of a recording location; ValueError naming `recording_uri` when unusable.

    An unknown protocol, a protocol whose package is not installed (s3fs, gcsfs, ...),
    a per-process one (memory://) or a read-only one is refused here, at start-up,
    rather than at the first recording.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError("recording_uri: must be a folder path or an fsspec URL, got an empty value")
    try:
        fs, root = url_to_fs(os.path.expanduser(uri.strip()))
    except (ValueError, ImportError, TypeError, OSError) as exc:
        raise ValueError(f"recording_uri: {shown_uri(uri)!r} cannot be opened with fsspec: {exc}") from None
    # A chain (simplecache::s3://...) is judged by the file system it ends on.
    target = getattr(fs, "fs", fs)
    for proto in _protocols(fs) | _protocols(target):
        if proto in PER_PROCESS_PROTOCOLS:
            raise ValueError(f"recording_uri: {shown_uri(uri)!r}: protocol {proto!r} is refused: {PER_PROCESS_PROTOCOLS[proto]}")
        if proto in READ_ONLY_PROTOCOLS:
            raise ValueError(f"recording_uri: {shown_uri(uri)!r}: protocol {proto!r} is read-only; recordings are written there")
    if not root.strip("/"):
        raise ValueError(f"recording_uri: {shown_uri(uri)!r} names the root of its file system; give a folder (or bucket/prefix)")
    return fs, root.rstrip("/")


class RecordingStorage:
    """The recordings of every session at one `recording_uri`: paths, reads, writes and deletion through fsspec.

    Every method does blocking I/O (network for an object store): call them from a thread
    (`asyncio.to_thread`) in async code. Built from the URI alone, so any process (relay,
    front door, a test) that has the config reaches the same files.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = open_uri(uri)

    def __repr__(self) -> str:
        return f"RecordingStorage({shown_uri(self.uri)!r})"

    def folder(self, session_id: str) -> str:
        return f"{self.root}/{session_id}"

    def path(self, session_id: str) -> str:
        """The recording's path in `fs` (not a URL: pass it to `fs` methods)."""
        return f"{self.folder(session_id)}/{RECORDING_FILE}"

    def url(self, session_id: str) -> str:
        """The recording's full fsspec URL (shown to operators; credentials hidden)."""
        return f"{shown_uri(self.uri.rstrip('/'))}/{session_id}/{RECORDING_FILE}"

    def exists(self, session_id: str) -> bool:
        return bool(self.fs.exists(self.path(session_id)))

    def create(self, session_id: str) -> IO[bytes]:
        """A new recording file, open for writing (an object store makes it visible when closed)."""
        self.fs.makedirs(self.folder(session_id), exist_ok=True)
        return self.fs.open(self.path(session_id), "wb")

    def open(self, session_id: str) -> IO[bytes]:
        """The recording, open for reading; FileNotFoundError when there is none."""
        return self.fs.open(self.path(session_id), "rb")

    def size(self, session_id: str) -> int:
        """Bytes in the recording now; FileNotFoundError when there is none."""
        return int(self.fs.info(self.path(session_id))["size"])

    def delete(self, session_id: str) -> bool:
        """Remove the session's folder; True when there was one."""
        folder = self.folder(session_id)
        try:
            self.fs.rm(folder, recursive=True)
        except FileNotFoundError:
            return False
        return True

    def folders(self) -> list[str]:
        """Names of the entries directly under the root (session folders and anything else); [] without a root yet."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def modified(self, session_id: str) -> float | None:
        """Unix time of the last change to the session's files (None when the folder is gone or empty)."""
        try:
            files = [e for e in self.fs.ls(self.folder(session_id), detail=True) if e.get("type") != "directory"]
        except FileNotFoundError:
            return None
        if not files:  # a folder made just before its file (local file systems have empty folders)
            return self.fs.modified(self.folder(session_id)).timestamp()
        return max(self.fs.modified(e["name"]).timestamp() for e in files)
