"""The last `state` each live session's actor gave this front-door replica.

GET /v1/sessions/{id} asks the session actor for its state. An actor (or the host under
it) can be slow to answer; rather than an empty `state`, which a client reads as "no
chunk yet", GET then answers with the last state this replica saw and says how old it is
(`state_age_s`). Bounded (LRU) and forgotten when a session ends: nothing of an ended
session stays in a long-lived process (docs/soak.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict

KEPT = 4096
"""Sessions whose last state one replica keeps; the least recently read goes first beyond this."""


class LastStates:
    """session id -> (state, when it was read from the actor), least recently used (read or put) first."""

    def __init__(self, size: int = KEPT):
        self.size = size
        self._states: OrderedDict[str, tuple[dict, float]] = OrderedDict()

    def put(self, session_id: str, state: dict) -> None:
        self._states[session_id] = (state, time.monotonic())
        self._states.move_to_end(session_id)
        while len(self._states) > self.size:
            self._states.popitem(last=False)

    def get(self, session_id: str) -> tuple[dict, float] | None:
        """(state, seconds since it was read), or None when this replica never read one."""
        kept = self._states.get(session_id)
        if kept is None:
            return None
        self._states.move_to_end(session_id)
        return kept[0], time.monotonic() - kept[1]

    def forget(self, session_id: str) -> None:
        self._states.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._states)
