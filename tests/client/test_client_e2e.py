"""The Python client against the real app on the shared local Ray cluster (test-pattern model)."""

from __future__ import annotations

import pytest

from helios.client import HeliosCommandError, HeliosNotFoundError

pytestmark = pytest.mark.e2e


def test_session_lifecycle_commands_and_messages(client):
    session = client.create_session("test-pattern", seed=3)
    assert session.info.status == "active"
    assert session.viewer_token
    try:
        ack = session.set_prompt("a red fox")
        assert ack.ok
        session.schedule_prompt("a blue whale", 2)
        session.start()
        msg = session.wait_for(lambda m: m.event == "chunk_complete" and m.data["chunk"] >= 2, timeout=90)
        assert msg.data["prompt"] == "a blue whale"
        state = session.get_state()
        assert state["running"] is True
        assert state["current_chunk"] >= 2
        with pytest.raises(HeliosCommandError) as err:
            session.schedule_prompt("too late", 0)
        assert "chunk" in str(err.value)
    finally:
        session.delete()
    with pytest.raises((HeliosNotFoundError, HeliosCommandError, Exception)):
        session.start()
