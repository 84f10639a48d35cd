"""I/O-free parts of the client: error mapping, SSE parsing, msgpack frame decoding and resume."""

from __future__ import annotations

import httpx
import msgpack
import numpy as np
import pytest

from helios.client import wire
from helios.client.errors import (
    HeliosAuthError,
    HeliosCapacityError,
    HeliosCommandError,
    HeliosHTTPError,
    HeliosNotFoundError,
)


def _resp(status: int, json_body=None, headers=None) -> httpx.Response:
    req = httpx.Request("POST", "http://h/v1/sessions/s1/commands")
    return httpx.Response(status, json=json_body, headers=headers, request=req)


def test_normalize_base_url():
    assert wire.normalize_base_url("localhost:8000/") == "http://localhost:8000"
    assert wire.normalize_base_url("https://x.y") == "https://x.y"
    with pytest.raises(ValueError, match="base_url"):
        wire.normalize_base_url("ftp://x")
    with pytest.raises(ValueError, match="base_url"):
        wire.normalize_base_url("  ")


@pytest.mark.parametrize("status,cls", [(401, HeliosAuthError), (403, HeliosAuthError), (404, HeliosNotFoundError),
                                        (409, HeliosHTTPError), (500, HeliosHTTPError)])
def test_error_status_maps_to_class_with_detail(status, cls):
    with pytest.raises(cls) as err:
        wire.raise_for_status(_resp(status, {"detail": "session_id: no such session"}))
    assert err.value.status_code == status
    assert "session_id" in str(err.value)


def test_429_carries_retry_after():
    with pytest.raises(HeliosCapacityError) as err:
        wire.raise_for_status(_resp(429, {"detail": "full"}, {"Retry-After": "7"}))
    assert err.value.retry_after == 7.0


def test_refused_command_raises_with_ack_message():
    ack = {"id": "x", "ok": False, "error": "chunk: 0 is in the past", "result": None}
    with pytest.raises(HeliosCommandError) as err:
        wire.parse_ack("schedule_prompt", _resp(422, {"detail": ack["error"], "ack": ack}))
    assert err.value.ack == ack
    assert "chunk: 0 is in the past" in str(err.value)
    assert err.value.command == "schedule_prompt"


def test_fastapi_validation_detail_is_readable():
    detail = [{"loc": ["body", "args", "seed"], "msg": "Input should be a valid integer"}]
    with pytest.raises(HeliosCommandError, match=r"args\.seed: Input should be a valid integer"):
        wire.parse_ack("set_seed", _resp(422, {"detail": detail}))


def test_ok_false_in_200_is_still_an_error():
    with pytest.raises(HeliosCommandError, match="nope"):
        wire.parse_ack("start", _resp(200, {"id": None, "ok": False, "error": "nope", "result": None}))
    assert wire.parse_ack("start", _resp(200, {"id": "a", "ok": True, "error": None, "result": None})).id == "a"


def test_command_body_validates():
    assert wire.command_body("set_seed", {"seed": 1}, "c1") == {"command": "set_seed", "args": {"seed": 1}, "id": "c1"}
    with pytest.raises(ValueError, match="command"):
        wire.command_body("")
    with pytest.raises(ValueError, match="args"):
        wire.command_body("set_seed", [1])  # type: ignore[arg-type]


def test_sse_parser_reads_ids_comments_and_multiline_data():
    p = wire.SSEParser()
    lines = [": keep-alive", "", "id: 4", 'data: {"type": "event",', 'data: "data": {"event": "seed_set", "seed": 2}}', "",
             "data: not json", "", "id: 5", 'data: {"type": "state", "data": {"running": true}}', ""]
    out = [m for m in (p.feed(line) for line in lines) if m is not None]
    assert [(m.type, m.seq) for m in out] == [("event", 4), ("state", 5)]
    assert out[0].event == "seed_set" and out[0].data["seed"] == 2
    assert out[1].event is None
    assert p.last_seq == 5
    params, headers = wire.events_params(p.last_seq, "tok")
    assert params == {"after": "5", "token": "tok"} and headers["Last-Event-ID"] == "5"


def _item(chunk: int, first: int, n: int, value: int = 0) -> bytes:
    frames = np.full((n, 4, 6, 3), value, np.uint8)
    return msgpack.packb({"type": "chunk", "chunk": chunk, "first_frame": first, "shape": list(frames.shape),
                          "dtype": "uint8", "frames": frames.tobytes(), "prompt": f"p{chunk}", "fps": 24})


def test_frame_decoder_handles_split_bytes_and_end():
    data = _item(0, 0, 3, 7) + _item(1, 3, 3, 9) + msgpack.packb({"type": "end", "reason": "deleted"})
    dec = wire.FrameDecoder()
    chunks = []
    for i in range(0, len(data), 50):  # arbitrary network splits
        chunks += dec.feed(data[i:i + 50])
    assert [(c.chunk, c.first_frame, c.num_frames) for c in chunks] == [(0, 0, 3), (1, 3, 3)]
    assert chunks[1].frames.shape == (3, 4, 6, 3) and int(chunks[1].frames[0, 0, 0, 0]) == 9
    assert chunks[0].prompt == "p0"
    assert dec.ended and dec.end_reason == "deleted"


def test_frame_decoder_resume_skips_what_was_delivered():
    dec = wire.FrameDecoder()
    dec.feed(_item(0, 0, 33) + _item(1, 33, 10) + _item(1, 43, 5)[:40])  # dropped mid-item in chunk 1
    assert dec.resume_from() == 1
    # The server replays chunk 1 whole (in two parts here), then goes on.
    replay = dec.feed(_item(1, 33, 5) + _item(1, 38, 28) + _item(2, 66, 33))
    assert [(c.chunk, c.first_frame, c.num_frames) for c in replay] == [(1, 43, 23), (2, 66, 33)]
    # After the replay the decoder is live again: a reset's chunk 0 is accepted.
    assert [c.chunk for c in dec.feed(_item(0, 0, 33))] == [0]


def test_frame_decoder_an_interrupted_stream_is_not_an_end():
    """The front door's `interrupted` map (its relay died): the decoder keeps the reason, the session goes on."""
    from helios.media.framing import pack_interrupted

    dec = wire.FrameDecoder()
    assert [c.chunk for c in dec.feed(_item(4, 132, 33) + pack_interrupted("relay_unavailable: ActorDiedError"))] == [4]
    assert not dec.ended and dec.interrupted == "relay_unavailable: ActorDiedError"
    assert dec.resume_from() == 4


def test_ends_chunk_with_stream_or_chunk_relative_frames():
    dec = wire.FrameDecoder()
    whole, part1, part2 = dec.feed(_item(3, 99, 33) + _item(4, 0, 10) + _item(4, 10, 23))
    assert wire.ends_chunk(whole, 33) and not wire.ends_chunk(part1, 33) and wire.ends_chunk(part2, 33)


def test_models_answer_parsing():
    models = [{"name": "test-pattern", "kind": "test-pattern"}, {"name": "big", "width": 640, "height": 384}]
    assert wire.model_names(models) == ["test-pattern", "big"]
    assert wire.pick_resolution(models, "big") == (640, 384)
    assert wire.pick_resolution(models, "test-pattern") is None
    assert wire.pick_resolution({"models": [{"id": "m", "resolution": [128, 256]}]}, "m") == (256, 128)


def test_readiness_answers_503_as_not_ready_and_queued_acks_parse():
    not_ready = {"ready": False, "models": {}, "not_ready": ["helios-tiny"], "detail": "models: no warm shard group yet"}
    assert wire.parse_readiness(_resp(503, not_ready)) == not_ready
    assert wire.parse_readiness(_resp(200, {"ready": True, "models": {}, "not_ready": [], "detail": None}))["ready"] is True
    with pytest.raises(HeliosHTTPError):  # a 503 that is not a readiness answer (e.g. a proxy) is an error
        wire.parse_readiness(_resp(503, {"detail": "upstream"}))
    ack = wire.parse_ack("set_prompt", _resp(202, {"id": "c1", "ok": True, "error": None, "result": None, "queued": True, "position": 1}))
    assert ack.queued is True and ack.position == 1
