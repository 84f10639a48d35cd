"""The relay deletes a recording when its session ends with `recording_retention_s: 0` (the fake session of test_relay)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.serve.conftest import wait_for
from tests.serve.test_relay import chunk_frames, fake_session_class

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def relay_now(ray_cluster, tmp_path_factory):
    """A relay whose recordings are deleted as their session ends."""
    from ray import serve

    from deployments.relay import Relay

    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ.get("HELIOS_TEST_PORT", "8765"))})
    handle = serve.run(
        Relay.options(name="RelayRetention", num_replicas=1, ray_actor_options={"num_cpus": 0.1}).bind(
            recording_uri=f"file://{tmp_path_factory.mktemp('recordings')}", recording_retention_s=0, pace_mjpeg=False,
            poll_timeout_s=5,
        ),
        name="relay-retention-test",
        route_prefix=None,
    )
    yield handle
    serve.delete("relay-retention-test")


def test_a_recording_is_deleted_when_its_session_ends(relay_now, ray_cluster):
    from deployments.naming import NAMESPACE, session_actor_name

    sid = uuid.uuid4().hex
    actor = fake_session_class().options(name=session_actor_name(sid), namespace=NAMESPACE).remote(8, chunk_frames)
    try:
        path = Path(relay_now.start_recording.remote(sid).result().removeprefix("file://"))
        ray_cluster.get(actor.produce.remote(2))
        info = wait_for(lambda: (i := relay_now.recording_info.remote(sid).result())["chunks"] == 2 and i, 60, "2 chunks recorded")
        assert info["recording"] and path.is_file()  # kept while the session lives, whatever the retention
        ray_cluster.get(actor.end.remote("deleted"))
        assert relay_now.wait_recording.remote(sid, 60).result()["complete"] is True
        wait_for(lambda: relay_now.recording_path.remote(sid).result() is None, 30, "the recording deleted")
        assert not path.parent.exists()
    finally:
        ray_cluster.kill(actor)
