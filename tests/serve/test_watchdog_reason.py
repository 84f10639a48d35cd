"""The watchdog's end reason from Ray's death cause, without a cluster."""

from __future__ import annotations

import ray


def test_a_death_on_a_lost_node_reads_as_node_lost():
    """The watchdog's reason from Ray's death cause (deployments/watchdog.py), as the GCS words it."""
    from deployments.watchdog import NODE_LOST, SESSION_ACTOR_DIED, death_reason

    class Died(ray.exceptions.ActorDiedError):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

        def __str__(self) -> str:
            return self.text

    lost = Died("The actor died unexpectedly before finishing this task.\n\tname: helios-session-x\n"
                "The actor died because its node has died. Node Id: 0a1b")
    assert death_reason(lost, SESSION_ACTOR_DIED) == NODE_LOST
    killed = Died("The actor died unexpectedly before finishing this task.\n\tip: 10.0.0.1\n"
                  "The actor is dead because it was killed by `ray.kill`.")
    assert death_reason(killed, SESSION_ACTOR_DIED) == SESSION_ACTOR_DIED
