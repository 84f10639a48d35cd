"""The session runtime: a Reactor-style programming model for controllable video streams.

`VideoModel` + `@command` + `get_ctx()` describe a model; `Session` runs one (commands in
arrival order, the generation loop, paced playback) and sends everything to a `SessionSink`.
Imports no Ray: the Ray layer wraps a Session in an actor.
"""

from helios.runtime.clock import Clock, FakeClock, MonotonicClock, UnpacedClock
from helios.runtime.commands import CommandError, CommandSpec, command
from helios.runtime.context import SessionContext, get_ctx
from helios.runtime.jit import JustInTime
from helios.runtime.messages import ack_message, error_message, event_message, state_message
from helios.runtime.model import VideoModel
from helios.runtime.pacing import Pacing, pacing_options
from helios.runtime.playback import Playback
from helios.runtime.ratelimit import RateLimited, RateLimitSpec, TokenBucket
from helios.runtime.session import Session
from helios.runtime.sink import FrameBlock, MemorySink, SessionSink

__all__ = [
    "Clock",
    "CommandError",
    "CommandSpec",
    "FakeClock",
    "FrameBlock",
    "JustInTime",
    "MemorySink",
    "MonotonicClock",
    "Pacing",
    "Playback",
    "RateLimitSpec",
    "RateLimited",
    "Session",
    "SessionContext",
    "SessionSink",
    "TokenBucket",
    "UnpacedClock",
    "VideoModel",
    "ack_message",
    "command",
    "error_message",
    "event_message",
    "get_ctx",
    "pacing_options",
    "state_message",
]
