"""Just enough ISO-BMFF (MP4 box) reading and patching for a live fragmented MP4.

The encoder muxes each chunk alone, so its fragments carry chunk-relative decode times.
Every viewer (and the recording) gets its own continuous timeline by rewriting two
numbers in each small `moof` box (`mfhd` sequence number, `tfdt` base media decode time)
while the large `mdat` payloads stay shared bytes. With `default_base_moof` the sample
data offsets are relative to the `moof` start, so an in-place rewrite is safe.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf", b"mvex", b"edts", b"dinf"}


@dataclass(frozen=True)
class Box:
    """One box: its four-character type, where it starts, its total size and header size."""

    type: bytes
    offset: int
    size: int
    header: int

    @property
    def payload(self) -> int:
        """Offset of the first byte after the header."""
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def iter_boxes(data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> list[Box]:
    """The boxes laid end to end in `data[start:end]`; ValueError on a truncated or malformed box."""
    end = len(data) if end is None else end
    boxes: list[Box] = []
    pos = start
    while pos < end:
        if end - pos < 8:
            raise ValueError(f"truncated box header at offset {pos}")
        size, typ = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise ValueError(f"truncated large box header at offset {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"box {typ!r} at offset {pos} has bad size {size}")
        boxes.append(Box(bytes(typ), pos, size, header))
        pos += size
    return boxes


def find_box(data: bytes | bytearray, path: list[bytes], start: int = 0, end: int | None = None) -> Box | None:
    """The first box along `path` (e.g. [b"moov", b"trak", b"mdia", b"mdhd"]), or None."""
    for box in iter_boxes(data, start, end):
        if box.type != path[0]:
            continue
        if len(path) == 1:
            return box
        if box.type in _CONTAINERS:
            found = find_box(data, path[1:], box.payload, box.end)
            if found is not None:
                return found
    return None


def split_segments(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a fragmented MP4 into its init segment (ftyp+moov) and its (moof, mdat) pairs.

    Boxes after the last fragment (the `mfra` index the muxer appends) are dropped:
    a live stream is an open-ended sequence of fragments.
    """
    init = bytearray()
    fragments: list[tuple[bytes, bytes]] = []
    moof: bytes | None = None
    for box in iter_boxes(data):
        raw = bytes(data[box.offset : box.end])
        if box.type in (b"ftyp", b"moov"):
            init += raw
        elif box.type == b"moof":
            moof = raw
        elif box.type == b"mdat" and moof is not None:
            fragments.append((moof, raw))
            moof = None
    return bytes(init), fragments


def timescale(init_segment: bytes) -> int:
    """Ticks per second of the (first) track, read from its `mdhd` box."""
    box = find_box(init_segment, [b"moov", b"trak", b"mdia", b"mdhd"])
    if box is None:
        raise ValueError("init segment has no moov/trak/mdia/mdhd box")
    version = init_segment[box.payload]
    offset = box.payload + (20 if version == 1 else 12)
    return struct.unpack_from(">I", init_segment, offset)[0]


def decode_time(moof: bytes) -> int:
    """The base media decode time of the first track fragment of `moof`."""
    box = find_box(moof, [b"moof", b"traf", b"tfdt"])
    if box is None:
        raise ValueError("moof has no traf/tfdt box")
    if moof[box.payload] == 1:
        return struct.unpack_from(">Q", moof, box.payload + 4)[0]
    return struct.unpack_from(">I", moof, box.payload + 4)[0]


def rebase_moof(moof: bytes, new_decode_time: int, sequence: int | None = None) -> bytes:
    """A copy of `moof` with its tfdt set to `new_decode_time` (and its mfhd sequence to `sequence` if given)."""
    out = bytearray(moof)
    if sequence is not None:
        mfhd = find_box(out, [b"moof", b"mfhd"])
        if mfhd is None:
            raise ValueError("moof has no mfhd box")
        struct.pack_into(">I", out, mfhd.payload + 4, sequence & 0xFFFFFFFF)
    moof_box = iter_boxes(out)[0]
    for traf in iter_boxes(out, moof_box.payload, moof_box.end):
        if traf.type != b"traf":
            continue
        tfdt = find_box(out, [b"tfdt"], traf.payload, traf.end)
        if tfdt is None:
            raise ValueError("traf has no tfdt box")
        if out[tfdt.payload] == 1:
            struct.pack_into(">Q", out, tfdt.payload + 4, new_decode_time)
        else:
            if new_decode_time > 0xFFFFFFFF:
                raise ValueError(f"decode time {new_decode_time} does not fit a version-0 tfdt")
            struct.pack_into(">I", out, tfdt.payload + 4, new_decode_time)
    return bytes(out)


def moof_duration(moof: bytes) -> int:
    """Ticks covered by the samples of the first track fragment of `moof` (trun durations or tfhd default)."""
    trun = find_box(moof, [b"moof", b"traf", b"trun"])
    if trun is None:
        return 0
    flags = int.from_bytes(moof[trun.payload + 1 : trun.payload + 4], "big")
    (count,) = struct.unpack_from(">I", moof, trun.payload + 4)
    pos = trun.payload + 8 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
    if flags & 0x100:  # per-sample durations
        step = 4 * sum(1 for bit in (0x100, 0x200, 0x400, 0x800) if flags & bit)
        return sum(struct.unpack_from(">I", moof, pos + i * step)[0] for i in range(count))
    tfhd = find_box(moof, [b"moof", b"traf", b"tfhd"])
    if tfhd is None:
        return 0
    tf_flags = int.from_bytes(moof[tfhd.payload + 1 : tfhd.payload + 4], "big")
    if not tf_flags & 0x8:
        return 0
    pos = tfhd.payload + 8 + (8 if tf_flags & 0x1 else 0) + (4 if tf_flags & 0x2 else 0)
    return struct.unpack_from(">I", moof, pos)[0] * count


def shift_decode_times(data: bytes, ticks: int) -> tuple[bytes, int]:
    """`data` (whole boxes) with every moof's decode time moved back by `ticks`; also the ticks its moofs cover."""
    out = bytearray()
    covered = 0
    for box in iter_boxes(data):
        raw = bytes(data[box.offset : box.end])
        if box.type == b"moof":
            covered += moof_duration(raw)
            if ticks:
                raw = rebase_moof(raw, max(0, decode_time(raw) - ticks))
        elif box.type == b"prft" and ticks:
            wall, media = prft_time(raw)
            raw = prft_box(wall, max(0, media - ticks))
        out += raw
    return bytes(out), covered


def codec_string(init_segment: bytes) -> str:
    """The RFC 6381 codec string of an H.264 init segment (e.g. "avc1.64001f"), for MSE `addSourceBuffer`."""
    at = init_segment.find(b"avcC")
    if at < 0 or at + 8 > len(init_segment):
        raise ValueError("init segment has no avcC box (not H.264)")
    profile, compat, level = init_segment[at + 5], init_segment[at + 6], init_segment[at + 7]
    return f"avc1.{profile:02x}{compat:02x}{level:02x}"


NTP_EPOCH_OFFSET_S = 2_208_988_800
"""Seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)."""


def prft_box(wall_time_s: float, media_time: int, track_id: int = 1) -> bytes:
    """A ProducerReferenceTime box (ISO/IEC 14496-12 8.16.5, version 1): `media_time` (track
    ticks) was produced at `wall_time_s` (Unix seconds). Players read it for end-to-end
    latency; decoders skip it."""
    ntp = wall_time_s + NTP_EPOCH_OFFSET_S
    seconds = int(ntp)
    fraction = int((ntp - seconds) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack(">I4sB3xIIIQ", 32, b"prft", 1, track_id, seconds, fraction, media_time)


def prft_time(box: bytes) -> tuple[float, int]:
    """(wall time in Unix seconds, media time in ticks) of a version-1 prft box."""
    size, typ, version = struct.unpack_from(">I4sB", box)
    if typ != b"prft" or version != 1 or size != 32:
        raise ValueError(f"not a version-1 prft box: {typ!r} v{version} size {size}")
    _, seconds, fraction, media = struct.unpack_from(">IIIQ", box, 12)
    return seconds + fraction / (1 << 32) - NTP_EPOCH_OFFSET_S, media
