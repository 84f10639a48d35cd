"""Python client for Helios Serve: sessions, commands with acks, message and frame streams.

    from helios.client import HeliosClient
    with HeliosClient("http://127.0.0.1:8000", api_key) as client:
        session = client.create_session("test-pattern")
        session.set_prompt("a red fox in the snow")
        session.start()
        session.save_mp4("fox.mp4", chunks=3)
        session.delete()
"""

from helios.client.aio import AsyncHeliosClient, AsyncHeliosSession
from helios.client.errors import (
    HeliosAuthError,
    HeliosCapacityError,
    HeliosCommandError,
    HeliosConnectionError,
    HeliosError,
    HeliosHTTPError,
    HeliosNotFoundError,
    HeliosSessionEnded,
    HeliosTimeout,
)
from helios.client.images import prepare_image
from helios.client.sync import HeliosClient, HeliosSession
from helios.client.types import Ack, Chunk, Message, SessionInfo, ViewerToken
from helios.client.video import Mp4Writer

__all__ = [
    "Ack",
    "AsyncHeliosClient",
    "AsyncHeliosSession",
    "Chunk",
    "HeliosAuthError",
    "HeliosCapacityError",
    "HeliosClient",
    "HeliosCommandError",
    "HeliosConnectionError",
    "HeliosError",
    "HeliosHTTPError",
    "HeliosNotFoundError",
    "HeliosSession",
    "HeliosSessionEnded",
    "HeliosTimeout",
    "Message",
    "Mp4Writer",
    "SessionInfo",
    "ViewerToken",
    "prepare_image",
]
