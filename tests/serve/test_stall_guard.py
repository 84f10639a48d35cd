"""`StallGuardedStreamingResponse` under a real uvicorn server: a client that never reads is
disconnected after the stall timeout and the stream's own cleanup runs; a reading client is not.

This is the part of the backpressure chain that needs no Ray (tests/serve/test_backpressure.py
runs the whole chain under Serve's direct ingress)."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from deployments.http.stall import StallGuardedStreamingResponse

PIECE = b"x" * 65536
STALL_TIMEOUT_S = 0.5


def _app(cleaned: asyncio.Event, sent: list[int]) -> Starlette:
    async def stream(request):
        async def body():
            try:
                while True:  # endless: only the guard (or the client) ends it
                    yield PIECE
                    sent[0] += 1
                    await asyncio.sleep(0)
            finally:
                cleaned.set()

        return StallGuardedStreamingResponse(body(), media_type="application/octet-stream", stall_timeout_s=STALL_TIMEOUT_S)

    return Starlette(routes=[Route("/s", stream)])


def _request(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def _read_to_end(sock: socket.socket, timeout: float) -> int:
    """Bytes read until the server ends the connection (EOF or reset); raises TimeoutError if it never does."""
    sock.settimeout(timeout)
    total = 0
    try:
        while piece := sock.recv(1 << 16):
            total += len(piece)
    except ConnectionResetError:
        pass
    return total


async def _serve(app: Starlette):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn exposes no start event; this waits on its flag
    return server, task, listener.getsockname()[1]


def test_stalled_client_is_disconnected_and_cleaned_up():
    async def main():
        cleaned, sent = asyncio.Event(), [0]
        server, task, port = await _serve(_app(cleaned, sent))
        sock = await asyncio.to_thread(_request, port)
        try:
            await asyncio.wait_for(cleaned.wait(), 30)  # the guard fired and closed the body
            sent_at_stall = sent[0]
            # Flow control held the producer: only what the socket buffers took, never an endless stream.
            assert sent_at_stall < 200, f"{sent_at_stall} pieces of 64 KiB sent to a client that never read"
            total = await asyncio.to_thread(_read_to_end, sock, 30)
            assert total <= (sent_at_stall + 1) * len(PIECE) + 4096
        finally:
            sock.close()
            server.should_exit = True
            await task

    asyncio.run(main())


def test_reading_client_is_not_disconnected():
    async def main():
        cleaned, sent = asyncio.Event(), [0]
        server, task, port = await _serve(_app(cleaned, sent))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            loop = asyncio.get_running_loop()
            until = loop.time() + 4 * STALL_TIMEOUT_S
            while loop.time() < until:  # reads for longer than the stall timeout
                got += len(await reader.read(1 << 16))
            assert not cleaned.is_set(), "a reading client was disconnected"
            assert got > 4 * len(PIECE)
        finally:
            writer.close()
            server.should_exit = True
            await task

    asyncio.run(main())
