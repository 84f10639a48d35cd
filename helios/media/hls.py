"""Low-latency HLS (CMAF) for one session, made from the same encoded fragments as the mp4 stream.

Why it looks like this:
- One HLS segment per chunk and one partial segment per fragment of it (each fragment
  starts at a keyframe, so every part is INDEPENDENT=YES). The bytes are the shared
  `Mp4Chunk` of the session's one H.264 encoder: only the small `moof`s are rewritten,
  the `mdat`s are the very objects the mp4 viewers and the recording get. HLS adds no
  encode, whatever the number of HLS players.
- The media sequence number of a segment IS the chunk index and its decode time comes
  from the chunk's first frame, so every relay replica that serves a session numbers
  and times it the same way (a player may hit any replica).
- A chunk a replica never got (its encode failed, or it fell out of the bounded queue)
  stays in the playlist as an `EXT-X-GAP` segment: the numbering never shifts.
- Memory is bounded by the sliding window (`window` segments); parts are listed for the
  last `part_segments` segments only (RFC 8216bis 6.2.2: parts near the live edge).
- Blocking playlist reload (RFC 8216bis 6.2.5.2): `wait(msn, part)` returns once the
  playlist holds segment `msn` (part `part`) or later; a part index past the parent's
  last part means part 0 of the next segment; more than two segments (or three parts)
  ahead is a bad request; a block longer than three target durations is answered 503 by
  the caller. With EXT-X-ENDLIST the directives are ignored.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from helios.media import mp4box
from helios.media.mp4 import Mp4Chunk, Mp4Fragment

PLAYLIST_MEDIA_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_MEDIA_TYPE = "video/mp4"
ADVANCE_SEGMENTS = 2
"""RFC 8216bis 6.2.5.2: a request more than this many segments past the last one is a bad request."""
ADVANCE_PARTS = 3
"""Advance Part Limit for a part target of 1 s or more (ours: one GOP)."""


class DirectiveError(ValueError):
    """A delivery directive (`_HLS_msn`, `_HLS_part`) the playlist cannot honour; `field` names it."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class HlsPart:
    """One partial segment: one fragment rebased on the HLS timeline (its own moof, the shared mdat)."""

    fragment: Mp4Fragment
    duration_s: float

    @property
    def data(self) -> bytes:
        return self.fragment.moof + self.fragment.mdat


@dataclass(frozen=True)
class HlsSegment:
    """One segment (one chunk); `gap` when this replica has no media for it."""

    msn: int
    duration_s: float
    parts: tuple[HlsPart, ...] = ()
    program_date: float | None = None
    gap: bool = False

    @property
    def data(self) -> bytes:
        return b"".join(p.data for p in self.parts)


def parse_directives(msn: str | None, part: str | None) -> tuple[int | None, int | None]:
    """`_HLS_msn` / `_HLS_part` query values as integers; DirectiveError naming the bad one."""

    def number(name: str, raw: str) -> int:
        if not raw.isascii() or not raw.isdigit() or len(raw) > 15:
            raise DirectiveError(f"{name}: must be a decimal integer >= 0, got {raw!r}", field=name)
        return int(raw)

    if part is not None and msn is None:
        raise DirectiveError("_HLS_part: needs _HLS_msn (RFC 8216bis 6.2.5.2)", field="_HLS_part")
    return (None if msn is None else number("_HLS_msn", msn)), (None if part is None else number("_HLS_part", part))


def render_parts(chunk: Mp4Chunk, base_decode_time: int, timescale: int, msn: int) -> tuple[HlsPart, ...]:
    """The fragments of `chunk` as parts starting at `base_decode_time` (moofs rewritten, mdats shared)."""
    parts = []
    for i, fragment in enumerate(chunk.fragments):
        rebased = fragment.rebased(base_decode_time, (msn << 6) + i + 1)
        parts.append(HlsPart(rebased, mp4box.moof_duration(fragment.moof) / timescale))
    return tuple(parts)


class HlsTrack:
    """The live media playlist of one session on one replica: a sliding window of segments."""

    def __init__(self, init_segment: bytes, *, part_target_s: float, window: int = 6, part_segments: int = 3):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if part_target_s <= 0:
            raise ValueError(f"part_target_s must be positive, got {part_target_s}")
        self.init_segment = init_segment
        self.part_target_s = float(part_target_s)
        self.window = int(window)
        self.part_segments = max(1, int(part_segments))
        self.segments: dict[int, HlsSegment] = {}
        self.target_duration = 1
        self.ended = False
        self.end_reason: str | None = None
        self.last_access = time.monotonic()
        self._changed = asyncio.Event()

    # ---- producer side -------------------------------------------------------------
    @property
    def last_msn(self) -> int | None:
        return max(self.segments, default=None)

    @property
    def first_msn(self) -> int | None:
        return min(self.segments, default=None)

    def add(self, msn: int, parts: tuple[HlsPart, ...], duration_s: float, program_date: float | None = None) -> None:
        """Append segment `msn` (chunks missing before it become gap segments); older ones slide out."""
        last = self.last_msn
        if last is not None and msn <= last:
            raise ValueError(f"segment {msn} is not after the last one ({last})")
        if last is not None:
            for gap in range(max(last + 1, msn - self.window), msn):
                self.segments[gap] = HlsSegment(gap, duration_s, gap=True)
        self.segments[msn] = HlsSegment(msn, duration_s, parts, program_date)
        self.target_duration = max(self.target_duration, math.ceil(duration_s))
        while len(self.segments) > self.window:
            del self.segments[next(iter(self.segments))]
        self._notify()

    def end(self, reason: str | None) -> None:
        """No more segments: the playlist gets EXT-X-ENDLIST and every blocked request returns."""
        self.ended = True
        self.end_reason = reason
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter of the current event; later waiters wait on a fresh one.
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- consumer side -------------------------------------------------------------
    def _satisfied(self, msn: int | None, part: int | None) -> bool:
        if self.ended:
            return True
        last = self.last_msn
        if last is None:
            return False
        if msn is None:
            return True
        if part is None or last > msn:
            return last >= msn  # later segments are complete, so part `part` of msn (or part 0 after it) exists
        # RFC 8216bis 6.2.5.2: a part index past the parent's last part means part 0 of the next segment.
        return last == msn and part < len(self.segments[last].parts)

    def check(self, msn: int | None, part: int | None) -> None:
        """DirectiveError when the request is too far ahead of the playlist (RFC 8216bis 6.2.5.2)."""
        last = self.last_msn
        if self.ended or msn is None or last is None:
            return
        if msn > last + ADVANCE_SEGMENTS:
            raise DirectiveError(f"_HLS_msn: {msn} is more than {ADVANCE_SEGMENTS} segments after the last one ({last})", field="_HLS_msn")
        if part is not None and msn > last:
            nominal = max(1, len(self.segments[last].parts))
            ahead = (msn - last - 1) * nominal + part + 1
            if ahead > ADVANCE_PARTS:
                raise DirectiveError(
                    f"_HLS_part: part {part} of segment {msn} is {ahead} parts after the last one (limit {ADVANCE_PARTS})",
                    field="_HLS_part",
                )

    async def wait(self, msn: int | None = None, part: int | None = None, timeout_s: float | None = None) -> bool:
        """Until the playlist holds what the directives ask for (True) or `timeout_s` passed (False)."""
        self.check(msn, part)

        async def ready() -> None:
            while not self._satisfied(msn, part):
                await self._changed.wait()

        if self._satisfied(msn, part):
            return True
        try:
            await asyncio.wait_for(ready(), timeout_s)
        except TimeoutError:
            return False
        return True

    def hold_timeout_s(self) -> float:
        """How long a blocking reload may wait before the 503 of RFC 8216bis 6.2.5.2: three target durations."""
        return 3.0 * self.target_duration

    def segment(self, msn: int) -> HlsSegment | None:
        seg = self.segments.get(msn)
        return None if seg is None or seg.gap else seg

    def part(self, msn: int, index: int) -> HlsPart | None:
        seg = self.segment(msn)
        return seg.parts[index] if seg is not None and 0 <= index < len(seg.parts) else None

    def playlist(self, query: str = "") -> str:
        """The media playlist; `query` (e.g. "?token=...") is appended to every URI in it."""
        self.last_access = time.monotonic()
        target = self.target_duration
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:9",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * self.part_target_s:.3f},HOLD-BACK={3 * target:.3f}",
            f"#EXT-X-PART-INF:PART-TARGET={self.part_target_s:.3f}",
            f"#EXT-X-MEDIA-SEQUENCE:{self.first_msn if self.first_msn is not None else 0}",
            f'#EXT-X-MAP:URI="init.mp4{query}"',
        ]
        last = self.last_msn
        for seg in self.segments.values():
            if seg.gap:
                lines += ["#EXT-X-GAP", f"#EXTINF:{seg.duration_s:.5f},", f"{seg.msn}.m4s{query}"]
                continue
            if seg.program_date is not None:
                stamp = datetime.fromtimestamp(seg.program_date, timezone.utc).isoformat(timespec="milliseconds")
                lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp.replace('+00:00', 'Z')}")
            if last is not None and seg.msn > last - self.part_segments:
                for i, p in enumerate(seg.parts):
                    lines.append(f'#EXT-X-PART:DURATION={p.duration_s:.5f},URI="{seg.msn}.{i}.m4s{query}",INDEPENDENT=YES')
            lines += [f"#EXTINF:{seg.duration_s:.5f},", f"{seg.msn}.m4s{query}"]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        elif last is not None:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{last + 1}.0.m4s{query}"')
        return "\n".join(lines) + "\n"
