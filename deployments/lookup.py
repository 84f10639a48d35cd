"""Named-actor lookups that never block an event loop, with a bounded cache of handles.

`ray.get_actor` is a synchronous round trip to the GCS: called in an async handler it
stalls every request of that replica (every tenant) for as long as the GCS takes. Here
it runs in a worker thread, its answer is cached, and a handle that failed is forgotten
so the next use resolves the name again (an actor that was restarted or replaced).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import ray

logger = logging.getLogger(__name__)

CACHE_SIZE = 4096
"""Handles kept per process; the least recently used one goes first beyond this."""


async def get_actor(name: str, namespace: str) -> Any | None:
    """The named actor's handle, looked up off the event loop; None when no such actor exists."""
    try:
        return await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
    except ValueError:  # Ray's answer for "no actor by that name"
        return None


class ActorCache:
    """Handles of named actors by name (LRU, `size` entries), resolved off the loop."""

    def __init__(self, namespace: str, size: int = CACHE_SIZE):
        self.namespace = namespace
        self.size = size
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self.lookups = 0
        self._prefetching: set[asyncio.Future] = set()
        """GCS lookups made (cache misses); tests and /metrics read it."""

    async def get(self, name: str) -> Any | None:
        """The cached handle of `name`, else a fresh lookup (None when the actor does not exist)."""
        handle = self._handles.get(name)
        if handle is not None:
            self._handles.move_to_end(name)
            return handle
        self.lookups += 1
        handle = await get_actor(name, self.namespace)
        if handle is not None:
            self._handles[name] = handle
            while len(self._handles) > self.size:
                self._handles.popitem(last=False)
        return handle

    def prefetch(self, name: str) -> None:
        """Look `name` up in the background (a session just admitted: its first command skips the GCS round trip)."""
        if name in self._handles:
            return
        task = asyncio.ensure_future(self.get(name))
        self._prefetching.add(task)
        task.add_done_callback(self._prefetching.discard)

    def forget(self, name: str) -> None:
        """Drop `name` after a call through its handle failed: the next `get` resolves it again."""
        self._handles.pop(name, None)

    def __len__(self) -> int:
        return len(self._handles)
