"""Named-actor lookups that never block an event loop, with a bounded cache of handles.

`ray.get_actor` is a synchronous round trip to the GCS: called in an async handler it
stalls every request of that replica (every tenant) for as long as the GCS takes. Here
it runs in a worker thread, its answer is cached, and a handle that failed is forgotten
so the next use resolves the name again (an actor that was restarted or replaced).
`ResolvingHandle` does the same for one long-lived actor (the registry) on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
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


class ResolvingHandle:
    """A handle on one named actor that is looked up again when a call through it finds the actor gone.

    `handle.method.remote(*args)` reads as on a Ray handle but returns an awaitable: on a
    `RayActorError` (the actor died, or was unavailable while Ray restarted it) the name is
    resolved again with `resolve` (off the event loop) and the call is made once more, on
    whatever actor now carries the name. Front doors reach the registry through one, so a
    registry that was restarted or re-created does not fail every request of a replica that
    cached the old handle. The callee must tolerate the retry (the registry's methods are
    idempotent or carry a request id). `cast` is fire-and-forget (no retry: nobody waits).
    """

    def __init__(self, resolve: Callable[[], Any], what: str = "actor"):
        self._resolve = resolve
        self.what = what
        self.handle = resolve()
        self._resolving = asyncio.Lock()
        self.resolved = 1
        """Lookups made (the first included); tests and logs read it."""

    def __getattr__(self, method: str) -> "_ResolvingMethod":
        if method.startswith("_"):
            raise AttributeError(method)
        return _ResolvingMethod(self, method)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        handle = self.handle
        try:
            return await getattr(handle, method).remote(*args, **kwargs)
        except ray.exceptions.RayActorError as exc:
            logger.warning("%s.%s failed (%s): resolving the %s again and retrying once", self.what, method, type(exc).__name__, self.what)
            async with self._resolving:
                if self.handle is handle:  # one re-resolve for every call that failed on the same handle
                    self.handle = await asyncio.to_thread(self._resolve)
                    self.resolved += 1
            return await getattr(self.handle, method).remote(*args, **kwargs)

    def cast(self, method: str, *args: Any) -> None:
        """Send without waiting for the answer (a finalizer's call: it cannot await)."""
        getattr(self.handle, method).remote(*args)


class _ResolvingMethod:
    def __init__(self, owner: ResolvingHandle, method: str):
        self._owner = owner
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._owner.call(self._method, *args, **kwargs)
