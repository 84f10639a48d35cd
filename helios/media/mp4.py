"""Live fragmented MP4 (H.264) for endless chunked video: one encoder per session, any viewer may join at any chunk.

How it works, and why:
- One libx264 encoder per session (`tune=zerolatency`: no B-frames, no lookahead, so every
  packet of a chunk is out as soon as its last frame went in). Keyframes are forced
  (IDR) at every chunk start and every `gop_frames` after it; scene-cut keyframes are off.
  So each chunk is independently decodable and a late joiner can start at any chunk.
- Each chunk's packets are muxed by a fresh mp4 muxer
  (`movflags=frag_keyframe+empty_moov+default_base_moof`) that shares the encoder's
  parameters. A muxer that lived across chunks would hold the last fragment of a chunk
  until the next chunk's first packet; a per-chunk muxer flushes it when it closes, so a
  chunk's bytes are complete the moment it is encoded. The init segment (ftyp+moov) is
  the same bytes for every chunk and is kept once.
- Fragments come out with chunk-relative decode times; `Mp4Timeline` gives each viewer a
  continuous timeline starting at 0 (see mp4box).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from helios.media import mp4box

logger = logging.getLogger(__name__)

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True)
class Mp4Fragment:
    """One moof+mdat pair; `decode_time` is in track ticks from the start of its timeline (its
    chunk's as encoded, a consumer's once `rebased`)."""

    moof: bytes
    mdat: bytes
    decode_time: int

    def rebased(self, base_decode_time: int, sequence: int) -> Mp4Fragment:
        """This fragment `base_decode_time` later on a consumer's timeline, numbered `sequence`:
        a rewritten (small) moof, the very same mdat bytes."""
        decode_time = base_decode_time + self.decode_time
        return Mp4Fragment(mp4box.rebase_moof(self.moof, decode_time, sequence), self.mdat, decode_time)


@dataclass(frozen=True)
class Mp4Chunk:
    """One encoded chunk: its fragments (the first starts with a keyframe) and its duration in ticks."""

    fragments: tuple[Mp4Fragment, ...]
    duration: int
    frames: int
    encode_ms: float

    @property
    def nbytes(self) -> int:
        return sum(len(f.moof) + len(f.mdat) for f in self.fragments)


def check_frames(frames: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Validate a chunk of frames: uint8 (N, H, W, 3), N >= 1 (and the given size)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", None)
        raise ValueError(f"frames must be a uint8 array (N, H, W, 3), got shape {shape} dtype {dtype}")
    if frames.shape[0] < 1:
        raise ValueError("frames must hold at least one frame")
    if height is not None and (frames.shape[1], frames.shape[2]) != (height, width):
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]}, the stream is {height}x{width}")
    return frames


class FragmentedMp4Encoder:
    """Encodes chunks of RGB frames into independently joinable fragmented-MP4 chunks."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: int | float,
        *,
        gop_frames: int | None = None,
        preset: str = "veryfast",
        crf: int = 23,
        threads: int = 0,
    ):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"width and height must be positive and even for yuv420p, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.gop_frames = int(gop_frames or max(1, round(float(self.fps))))
        if self.gop_frames < 1:
            raise ValueError(f"gop_frames must be >= 1, got {gop_frames}")
        # The "master" container only owns the encoder; its own output is discarded.
        self._master = av.open(io.BytesIO(), "w", format="mp4")
        self._stream = self._master.add_stream(
            "libx264",
            rate=self.fps,
            options={
                "preset": preset,
                "tune": "zerolatency",
                "crf": str(crf),
                "forced-idr": "1",
                "x264-params": "scenecut=0",
            },
        )
        self._stream.width = self.width
        self._stream.height = self.height
        self._stream.pix_fmt = "yuv420p"
        self._frame_tb = 1 / self.fps
        self._stream.time_base = self._frame_tb
        ctx = self._stream.codec_context
        ctx.gop_size = 1 << 20  # keyframes come only where we force them
        if threads:
            ctx.thread_count = threads
        self._master.start_encoding()  # opens the encoder: its extradata (SPS/PPS) now exists
        self._next_pts = 0
        self._init: bytes | None = None  # the muxer writes the moov only once a packet exists
        self.timescale = 0
        self.chunks_encoded = 0

    @property
    def init_segment(self) -> bytes:
        """ftyp+moov, the same for every chunk; exists once the first chunk is encoded."""
        if self._init is None:
            raise RuntimeError("the init segment exists only after the first encode_chunk")
        return self._init

    def ticks_for(self, frames: int) -> int:
        """Duration of `frames` frames in track ticks."""
        return round(frames * self.timescale / self.fps)

    def _mux(self, packets: list[av.Packet]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        buf = io.BytesIO()
        out = av.open(buf, "w", format="mp4", options={"movflags": MOVFLAGS})
        stream = out.add_stream_from_template(self._stream)
        for packet in packets:
            packet.stream = stream
            out.mux(packet)
        out.close()
        return mp4box.split_segments(buf.getvalue())

    def encode_chunk(self, frames: np.ndarray) -> Mp4Chunk:
        """Encode one chunk (uint8 (N, H, W, 3)); its first frame is a keyframe."""
        check_frames(frames, self.height, self.width)
        started = time.perf_counter()
        packets: list[av.Packet] = []
        base = self._next_pts
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            frame.pts = base + i
            frame.time_base = self._frame_tb
            if i % self.gop_frames == 0:
                frame.pict_type = av.video.frame.PictureType.I
            packets.extend(self._stream.encode(frame))
        self._next_pts += len(frames)
        if len(packets) != len(frames):  # zerolatency never delays; anything else is a bug here
            raise RuntimeError(f"encoder returned {len(packets)} packets for {len(frames)} frames")
        if not packets[0].is_keyframe:
            raise RuntimeError("chunk does not start with a keyframe")
        # Chunk-relative timestamps: the muxer starts this chunk's timeline at 0.
        offset = packets[0].dts
        for packet in packets:
            packet.pts -= offset
            packet.dts -= offset
        init, pairs = self._mux(packets)
        if self._init is None:
            self._init = init
            self.timescale = mp4box.timescale(init)
        elif init != self._init:
            logger.warning("fragmented mp4: a chunk's init segment differs from the session's")
        first = mp4box.decode_time(pairs[0][0])
        fragments = tuple(Mp4Fragment(moof, mdat, mp4box.decode_time(moof) - first) for moof, mdat in pairs)
        self.chunks_encoded += 1
        return Mp4Chunk(
            fragments=fragments,
            duration=self.ticks_for(len(frames)),
            frames=len(frames),
            encode_ms=(time.perf_counter() - started) * 1000.0,
        )

    def close(self) -> None:
        """Release the encoder (its pending output, if any, is discarded)."""
        try:
            self._master.close()
        except av.FFmpegError as exc:  # flushing the discarded output failed: nothing of it is needed
            logger.debug("closing the mp4 encoder's scratch container failed: %s", exc)


class Mp4Timeline:
    """One consumer's continuous timeline over shared encoded chunks.

    The first chunk a viewer gets starts at decode time 0 and each later chunk follows
    the previous one it got, whatever chunks were skipped in between: a late joiner or
    a viewer skipped forward never sees a gap, so a player (browser MSE, PyAV, ffmpeg)
    never waits for media that will not come.
    """

    def __init__(self) -> None:
        self.decode_time = 0
        self.sequence = 1

    def render(self, chunk: Mp4Chunk, produced_at: float | None = None) -> bytes:
        """The bytes of `chunk` on this timeline (rewritten moofs, shared mdats).

        With `produced_at` (the chunk's generation end, Unix seconds) a `prft` box first says
        when the chunk's first frame was produced: a player's latency is `now - that`.
        """
        parts: list[bytes] = [] if produced_at is None else [mp4box.prft_box(produced_at, self.decode_time)]
        for fragment in chunk.fragments:
            moved = fragment.rebased(self.decode_time, self.sequence)
            parts += (moved.moof, moved.mdat)
            self.sequence += 1
        self.decode_time += chunk.duration
        return b"".join(parts)
