"""The `helios` CLI end to end against the real app: generate (helios-tiny), play a timeline, sessions."""

from __future__ import annotations

import json
import threading

import av
import numpy as np
import pytest
from PIL import Image

from helios.client import HeliosSession, cli

pytestmark = pytest.mark.e2e


def _conn(server) -> list[str]:
    return ["--url", server.url, "--api-key", server.api_key]


BUSY = ["--wait-busy", "120"]  # the shared test app has few slots: wait for one rather than fail


def test_generate_writes_an_mp4_of_whole_chunks_with_the_tiny_model(helios_server, tmp_path, capsys):
    out = tmp_path / "tiny.mp4"
    rc = cli.main(["generate", *_conn(helios_server), *BUSY, "--model", "helios-tiny", "--prompt", "a lighthouse in a storm",
                   "--chunks", "2", "--seed", "5", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "2/2 chunks" in err and "fps" in err  # the progress bar
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 2 * 33
    assert frames[0].shape[2] == 3 and frames[0].shape[0] >= 64


def test_timeline_switches_prompts_at_the_scheduled_chunks(helios_server, tmp_path, capsys):
    Image.fromarray(np.full((90, 160, 3), (20, 200, 40), np.uint8)).save(tmp_path / "green.png")
    timeline = tmp_path / "timeline.yaml"
    timeline.write_text(
        "model: test-pattern\n"
        "chunks: 5\n"
        "timeline:\n"
        "  0: a calm sea\n"
        "  2: {prompt: a storm rolls in}\n"
        "  3: {prompt: lightning over the waves, image: green.png, transition: blend}\n"
    )
    recording = tmp_path / "timeline.mp4"
    rc = cli.main(["play", *_conn(helios_server), *BUSY, str(timeline), "-o", str(recording)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    events = [json.loads(line)["data"] for line in captured.out.splitlines() if line.startswith("{")]
    chunk_prompts = {e["chunk"]: e["prompt"] for e in events if e["event"] == "chunk_complete"}
    assert chunk_prompts == {0: "a calm sea", 1: "a calm sea", 2: "a storm rolls in",
                             3: "lightning over the waves", 4: "lightning over the waves"}
    # Each prompt_switched comes right before the first chunk made with the new prompt.
    switched_at = []
    for i, e in enumerate(events):
        if e["event"] == "prompt_switched":
            nxt = next(x for x in events[i:] if x["event"] == "chunk_complete")
            switched_at.append((nxt["chunk"], e["new_prompt"]))
    assert switched_at[-2:] == [(2, "a storm rolls in"), (3, "lightning over the waves")]
    assert any(e["event"] == "image_set" for e in events)
    assert "chunk 2: switched to 'a storm rolls in'" in captured.err
    with av.open(str(recording)) as container:  # -o recorded the played chunks alongside
        assert sum(1 for _ in container.decode(video=0)) == 5 * 33


def test_session_subcommands(helios_server, capsys, monkeypatch):
    first_message = threading.Event()
    real_messages = HeliosSession.messages

    def spy(self, **kw):
        for msg in real_messages(self, **kw):
            first_message.set()
            yield msg

    monkeypatch.setattr(HeliosSession, "messages", spy)
    assert cli.main(["session", "create", *_conn(helios_server), *BUSY, "--model", "test-pattern"]) == 0
    info = json.loads(capsys.readouterr().out)
    sid = info["session_id"]
    try:
        assert cli.main(["session", "command", *_conn(helios_server), sid, "set_prompt", "prompt=a quiet forest"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert cli.main(["session", "command", *_conn(helios_server), sid, "set_seed", "seed=-4"]) == 1
        assert "seed" in capsys.readouterr().err
        assert cli.main(["session", "command", *_conn(helios_server), sid, "get_state"]) == 0
        state = json.loads(capsys.readouterr().out)["result"]
        assert state["running"] is False and state["scheduled_prompts"] == {"0": "a quiet forest"}
        assert cli.main(["session", "rotate-token", *_conn(helios_server), sid]) == 0
        rotated = json.loads(capsys.readouterr().out)
        assert rotated["session_id"] == sid and rotated["viewer_token"] not in ("", info["viewer_token"])
        viewer = ["--url", helios_server.url, "--api-key", ""]  # no key: the token alone decides
        assert cli.main(["session", "get", *viewer, sid, "--token", info["viewer_token"]]) == 1  # revoked
        assert "HTTP 401" in capsys.readouterr().err
        assert cli.main(["session", "get", *viewer, sid, "--token", rotated["viewer_token"]]) == 0
        assert json.loads(capsys.readouterr().out)["session_id"] == sid
        # watch (in a thread) replays the log, follows live messages and stops at session_ended
        rc: list[int] = []
        watcher = threading.Thread(target=lambda: rc.append(cli.main(["session", "watch", *_conn(helios_server), sid,
                                                                        "--replay"])))
        watcher.start()
        assert first_message.wait(60), "watch printed nothing"
    finally:
        assert cli.main(["session", "delete", *_conn(helios_server), sid]) == 0
    watcher.join(timeout=60)
    assert rc == [0]
    out = capsys.readouterr().out
    deleted = json.loads(out[out.index('{\n'):out.index('\n}') + 2])
    assert deleted["status"] == "ended"
    lines = [json.loads(x) for x in out.splitlines() if x.startswith('{"seq"')]
    assert lines[-1]["data"]["event"] == "session_ended" and lines[-1]["data"]["reason"] == "deleted"
    assert any(x["data"].get("event") == "prompt_scheduled" for x in lines)
