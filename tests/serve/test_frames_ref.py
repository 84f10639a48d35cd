"""One object-store copy per chunk: the ref the relay reads is the one rank 0 of the group put.

Before, rank 0 returned the frames (one copy in the store) and the session actor put them
again (a second copy, ~24 MB per chunk at 384x640). Now the session hands rank 0's ref on.
Checked on the real app: the ring's refs all have one owner process, and they stay readable
after the session actor has exited (objects an actor put die with it), so that owner is
the group's rank 0, not the session actor.
"""

from __future__ import annotations

import numpy as np
import ray
from ray.core.generated.common_pb2 import Address

from deployments.naming import NAMESPACE, session_actor_name

from .conftest import wait_for


def _owner(ref) -> str:
    address = Address()
    address.ParseFromString(ref.owner_address())
    return address.worker_id.hex()


def test_ring_holds_rank0s_frames_ref_not_a_copy(served):
    r = served.create(model="helios-tiny", seed=4)
    assert r.status_code in (201, 202), r.text
    sid = r.json()["session_id"]
    served.wait_active(sid)
    assert served.command(sid, "set_prompt", prompt="a red fox running through snow").status_code == 200
    assert served.command(sid, "start").status_code == 200
    actor = ray.get_actor(session_actor_name(sid), namespace=NAMESPACE)
    batch = wait_for(lambda: (b := ray.get(actor.wait_chunks.remote(-1, 60))) and len(b.chunks) >= 2 and b,
                     400, "2 chunks in the session's ring")
    refs = [c.refs[0] for c in batch.chunks[:2]]
    owners = {_owner(ref) for ref in refs}
    frames_before = [np.array(ray.get(ref)) for ref in refs]
    assert served.delete(sid).status_code in (200, 202, 204)

    def actor_gone() -> bool:
        try:
            ray.get_actor(session_actor_name(sid), namespace=NAMESPACE)
            return False
        except ValueError:
            return True

    wait_for(actor_gone, 120, "session actor to exit")
    # The session actor is gone; objects it had put would be lost with it. Rank 0's live on.
    frames_after = [ray.get(ref, timeout=60) for ref in refs]
    for a, b in zip(frames_before, frames_after):
        assert a.shape == b.shape == (33, 128, 128, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
    assert len(owners) == 1  # every chunk put by the same process: the group's rank 0
