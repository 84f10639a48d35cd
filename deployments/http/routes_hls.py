"""LL-HLS routes: a session's media playlist, init segment, segments and parts, served by the relay.

The playlist's URIs are relative and carry the session's viewer token, so any HLS player
(hls.js, Safari, ffmpeg, a CDN) that was handed the playlist URL can fetch the rest; the
owner's API key never appears in a playlist. Delivery directives are parsed strictly
here (400 naming the directive); the relay holds blocking reloads.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments.http.base import FrontDoorBase
from deployments.http.hls_players import HlsPlayers
from deployments.http.routes_streams import _relay_failed
from deployments.http.schemas import error_responses
from deployments.protocol import (
    BadDirective,
    HlsReply,
    HlsRequest,
    SegmentNotFound,
    SessionRecord,
    SessionStatus,
    StreamEnded,
)
from helios.media.hls import PLAYLIST_MEDIA_TYPE, SEGMENT_MEDIA_TYPE, DirectiveError, parse_directives

router = APIRouter()

_MEDIA_NAME = re.compile(r"^(?P<msn>[0-9]{1,15})(?:\.(?P<part>[0-9]{1,3}))?\.m4s$")
SEGMENT_CACHE = "public, max-age=60"
"""Segments never change once listed (a CDN may cache them); playlists are never cached."""


class HlsRoutes(FrontDoorBase):
    """GET .../hls/index.m3u8 and .../hls/{init.mp4 | <msn>.m4s | <msn>.<part>.m4s}."""

    hls_players: HlsPlayers

    async def _hls_session(self, request: Request, session_id: str) -> SessionRecord:
        rec, _ = await self._readable(request, session_id)
        if rec.status is SessionStatus.ENDED and await self._lingering_actor(rec) is None:
            raise StreamEnded(f"session_id: session has ended ({rec.end_reason}); see recording.mp4", end_reason=rec.end_reason)
        player = (session_id, request.client.host if request.client else "", request.headers.get("user-agent", ""))
        await self.hls_players.touch(player, lambda: self._open_reader(rec, "stream"))
        return await self._wait_active(rec)

    async def _hls_call(self, session_id: str, req: HlsRequest) -> HlsReply:
        try:
            return await self.relay.hls.remote(session_id, req)
        except Exception as exc:  # noqa: BLE001 - a typed relay error keeps its status, anything else is a 503
            raise _relay_failed("hls", exc) from None

    @router.get(
        "/v1/sessions/{session_id}/hls/index.m3u8",
        operation_id="hls_playlist",
        responses={200: {"content": {PLAYLIST_MEDIA_TYPE: {}}}, **error_responses(400, 401, 404, 410, 422, 429, 503)},
    )
    async def hls_playlist(self, request: Request, session_id: str) -> Response:
        """The live LL-HLS media playlist; `_HLS_msn` / `_HLS_part` hold it until that (part) segment exists."""
        params = request.query_params
        for name in ("_HLS_msn", "_HLS_part"):
            if len(params.getlist(name)) > 1:
                raise BadDirective(f"{name}: given more than once", field=name)
        try:
            msn, part = parse_directives(params.get("_HLS_msn"), params.get("_HLS_part"))
        except DirectiveError as exc:
            raise BadDirective(str(exc), field=exc.field) from None
        rec = await self._hls_session(request, session_id)
        query = f"?token={quote(rec.viewer_token, safe='')}"
        reply = await self._hls_call(session_id, HlsRequest("playlist", msn, part, query))
        return Response(reply.body, media_type=reply.media_type, headers={"Cache-Control": "no-cache"})

    @router.get(
        "/v1/sessions/{session_id}/hls/{name}",
        operation_id="hls_media",
        responses={200: {"content": {SEGMENT_MEDIA_TYPE: {}}}, **error_responses(401, 404, 410, 422, 429, 503)},
    )
    async def hls_media(self, request: Request, session_id: str, name: str) -> Response:
        """The init segment (`init.mp4`), a segment (`<msn>.m4s`) or a partial segment (`<msn>.<part>.m4s`)."""
        if name == "init.mp4":
            req = HlsRequest("init")
        elif match := _MEDIA_NAME.match(name):
            part = match.group("part")
            req = HlsRequest("segment" if part is None else "part", int(match.group("msn")), None if part is None else int(part))
        else:
            raise SegmentNotFound(f"segment: {name!r} is not init.mp4, <msn>.m4s or <msn>.<part>.m4s")
        await self._hls_session(request, session_id)
        reply = await self._hls_call(session_id, req)
        return Response(reply.body, media_type=reply.media_type, headers={"Cache-Control": SEGMENT_CACHE})


__all__ = ["HlsRoutes", "router"]
