"""The real app on a local multi-node Ray cluster (DESIGN 11; issue 12, item 7).

Run in its own pytest process: `HELIOS_MULTINODE=1 pytest tests/cluster` (scripts/test.sh).
Tests share one cluster and run in file order; the ones that take nodes away come last.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.cluster.conftest import POOL_SIZE, alive_actor_nodes
from tests.cluster.watchers import ChunkWatcher
from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e
logger = logging.getLogger(__name__)

MODEL = "helios-tiny"


def test_serve_on_the_head_groups_on_worker_nodes(multinode):
    """Serve's controller and only proxy, the front door, the relay, the registry and the (spare) session
    actors on the head; every group on a worker node, one each."""
    nodes = alive_actor_nodes()
    assert nodes["ProxyActor"] == {multinode.head_id}, nodes  # proxy_location: HeadOnly
    for name in ("ServeController", "ServeReplica:helios:FrontDoor", "ServeReplica:helios:Relay", "SessionRegistry", "SessionActor"):
        assert nodes[name] == {multinode.head_id}, (name, nodes)
    groups = wait_for(lambda: len(g := multinode.group_nodes()) == POOL_SIZE and g, 60, f"{POOL_SIZE} placed groups")
    assert set(groups.values()) <= set(multinode.workers), groups
    assert len(set(groups.values())) == POOL_SIZE, f"groups share a node: {groups}"


def test_a_session_streams_from_a_worker_node(multinode):
    """A session leases a group on a worker node and its video reaches the client through the head."""
    r = multinode.create(model=MODEL, seed=3)
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    watcher = ChunkWatcher(multinode.base_url, sid, multinode.headers())
    watcher.start()
    try:
        multinode.wait_active(sid)
        assert multinode.command(sid, "set_prompt", prompt="a lighthouse at dusk").status_code == 200
        assert multinode.command(sid, "start").status_code == 200
        wait_for(lambda: len(watcher.chunks) >= 2 or watcher.error, 180, "2 chunks of the session's video")
        assert watcher.error is None, watcher.error
        group = multinode.session_group(sid)
        assert multinode.group_nodes()[group] in multinode.workers
    finally:
        watcher.stop()
        assert multinode.delete(sid).status_code == 200
    watcher.done.wait(60)
