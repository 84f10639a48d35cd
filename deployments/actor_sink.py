"""The session actor's runtime sink: the bridge from the generation thread to the actor's event loop."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import ray

from helios.runtime.messages import Message


class SinkOwner(Protocol):
    """What the sink uses of its session actor (a Protocol, so this module need not import it: no cycle)."""

    def _from_thread(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def _add_message(self, message: Message) -> Any: ...

    def _add_chunk(self, ref: Any, shape: tuple[int, ...], info: dict) -> Any: ...


class ActorSink:
    """Runtime sink: hands messages and chunks from the generation thread to the actor's loop."""

    def __init__(self, actor: SinkOwner):
        self.actor = actor

    def on_message(self, message: Message) -> None:
        self.actor._from_thread(self.actor._add_message, message)

    def on_frames(self, frames: np.ndarray, info: dict) -> None:
        # The session releases whole chunks (release="chunk"), so a chunk's `frames_ref` (rank 0's
        # copy in the object store) holds exactly these frames: hand it on instead of a second copy.
        ref = info.pop("frames_ref", None)
        if ref is None:
            # Put from the generation thread: the loop never blocks on a copy into the object store.
            ref = ray.put(np.ascontiguousarray(frames, dtype=np.uint8))
        self.actor._from_thread(self.actor._add_chunk, ref, frames.shape, info)
