"""A file served to a fixed length: a recording that may still grow, answered as a consistent snapshot.

Starlette's FileResponse reads to the end of the file whatever Content-Length it sent,
so a file that grows meanwhile breaks the response. Here the length is fixed first (by
the caller: whole MP4 fragments only) and exactly that many bytes go out; one byte range
(`Range: bytes=a-b`, `a-`, `-n`) is honoured within it, so players can seek. The file is
anything `open` returns: a local file or an fsspec one (a recording on shared storage).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import IO

from fastapi.responses import Response, StreamingResponse

from deployments.protocol import RangeNotSatisfiable

PIECE_BYTES = 256 * 1024
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")


def parse_range(header: str | None, length: int) -> tuple[int, int] | None | bool:
    """(start, end exclusive) of a single satisfiable range; None: serve it all (no, several or
    unreadable ranges, which a server may ignore); False: unsatisfiable (416)."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        return (max(0, length - n), length) if n > 0 and length > 0 else False
    start = int(first)
    end = min(length, int(last) + 1) if last else length
    if start >= length or end <= start:
        return False
    return start, end


async def _pieces(open_file: Callable[[], IO[bytes]], start: int, end: int) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open_file)  # fsspec opens may be network calls
    try:
        await asyncio.to_thread(f.seek, start)
        left = end - start
        while left > 0:
            piece = await asyncio.to_thread(f.read, min(PIECE_BYTES, left))
            if not piece:  # truncated under us (deleted by retention): end short rather than hang
                return
            left -= len(piece)
            yield piece
    finally:
        await asyncio.to_thread(f.close)


def file_prefix_response(
    open_file: Callable[[], IO[bytes]], length: int, media_type: str, filename: str, range_header: str | None
) -> Response:
    """The first `length` bytes of the file `open_file()` opens (200, or 206 for one range); RangeNotSatisfiable (416)."""
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-cache"}
    span = parse_range(range_header, length)
    if span is False:
        shown = range_header if len(range_header or "") <= 64 else f"{range_header[:64]}..."
        raise RangeNotSatisfiable(f"range: {shown!r} is outside the {length} bytes recorded so far", length=length)
    status, (start, end) = (200, (0, length)) if span is None else (206, span)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{length}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(_pieces(open_file, start, end), status_code=status, media_type=media_type, headers=headers)
