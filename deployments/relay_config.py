"""Options of the relay deployment and the checks of a viewer's request fields (each a 4xx naming the field)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployments.naming import NAMESPACE, default_recording_uri, is_valid_session_id
from deployments.protocol import InvalidField
from helios.media.formats import parse_format


class RelayConfig(BaseModel):
    """Options of the relay deployment (all replicas share them)."""

    model_config = ConfigDict(extra="forbid")

    window_chunks: int = Field(8, ge=1, description="Recent chunks each replica keeps per session for late joiners (from=chunk).")
    viewer_queue_chunks: int = Field(2, ge=1, description="Chunks a viewer may fall behind before the oldest is dropped.")
    poll_timeout_s: float = Field(10.0, gt=0, le=60, description="Long-poll timeout of wait_chunks calls to the session actor.")
    jpeg_quality: int = Field(80, ge=1, le=100, description="MJPEG JPEG quality.")
    pace_mjpeg: bool = Field(True, description="Release MJPEG frames at the stream fps (a browser shows parts as they come).")
    mp4_preset: str = Field("veryfast", description="libx264 preset of the fragmented MP4 stream.")
    mp4_crf: int = Field(23, ge=0, le=51, description="libx264 constant rate factor (quality) of the MP4 stream.")
    recording_uri: str = Field(
        default_factory=default_recording_uri,
        description="Where recordings are written: <recording_uri>/<session_id>/recording.mp4 (a folder or an fsspec URL). "
        "Set from the serving config, which the front doors read them from.",
    )
    recording_retention_s: float = Field(
        3600.0, ge=0, description="A recording is deleted this long after its session ended (0: at the end). Set from the serving config."
    )
    namespace: str = Field(NAMESPACE, description="Ray namespace of the session actors.")
    hls_window_segments: int = Field(
        6, ge=5, le=64, description="Segments (chunks) in the sliding window of a session's HLS playlist (>= 3 target durations)."
    )
    hls_part_segments: int = Field(3, ge=1, description="Newest segments whose partial segments the playlist lists.")
    hls_idle_s: float = Field(30.0, gt=0, description="A session's HLS playlist is dropped this long after its last request.")
    hls_first_segment_wait_s: float = Field(
        6.0, gt=0, le=60, description="How long a first playlist request waits for the session's first chunk before a 503."
    )


def check_session_id(session_id: str) -> str:
    """The session id of a request, or InvalidField (400) naming `session_id`."""
    if not isinstance(session_id, str) or not is_valid_session_id(session_id):
        raise InvalidField(f"session_id {session_id!r} is not a valid session id (32 lowercase hex characters)", field="session_id")
    return session_id


def check_from(from_chunk: Any) -> int | None:
    """The `from` chunk index of a request (None: the live edge), or InvalidField naming `from`."""
    if from_chunk is None:
        return None
    if isinstance(from_chunk, bool) or not isinstance(from_chunk, (int, np.integer)) or from_chunk < 0:
        raise InvalidField(f"from must be a chunk index >= 0, got {from_chunk!r}", field="from")
    return int(from_chunk)


def check_format(fmt: str) -> str:
    """The canonical stream format of a request, or InvalidField naming `format`."""
    try:
        return parse_format(fmt)
    except ValueError as exc:
        raise InvalidField(str(exc), field="format") from None
