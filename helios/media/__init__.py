"""Media for viewers: fragmented MP4 (H.264), MJPEG multipart, msgpack chunk framing, recordings, fan-out.

Pure encoders and asyncio fan-out; no Ray (the relay deployment in `deployments/relay.py`
feeds these from the session actors).
"""

from helios.media.fanout import ChunkEntry, FanoutStats, SessionFanout, Viewer
from helios.media.formats import FORMATS, MJPEG_BOUNDARY, StreamFormat, media_type, parse_format
from helios.media.framing import frames_of, pack_chunk, pack_end, unpack_stream
from helios.media.mjpeg import encode_parts, split_parts
from helios.media.mp4 import FragmentedMp4Encoder, Mp4Chunk, Mp4Fragment, Mp4Timeline
from helios.media.recording import RecordingWriter
from helios.media.skipforward import SkipForward, skip_forward

__all__ = [
    "FORMATS",
    "MJPEG_BOUNDARY",
    "ChunkEntry",
    "FanoutStats",
    "FragmentedMp4Encoder",
    "Mp4Chunk",
    "Mp4Fragment",
    "Mp4Timeline",
    "RecordingWriter",
    "SessionFanout",
    "SkipForward",
    "StreamFormat",
    "Viewer",
    "encode_parts",
    "frames_of",
    "media_type",
    "pack_chunk",
    "pack_end",
    "parse_format",
    "skip_forward",
    "split_parts",
    "unpack_stream",
]
