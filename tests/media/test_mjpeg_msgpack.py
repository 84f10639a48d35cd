"""MJPEG parts are valid JPEGs of the right size; msgpack framing round-trips bit-identically."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest
from PIL import Image

from helios.media import framing, mjpeg
from helios.media.formats import media_type, parse_format
from tests.media.conftest import H, N, W, make_frames


def test_mjpeg_parts_are_jpegs():
    frames = make_frames(1)
    parts = mjpeg.encode_parts(frames, quality=85)
    assert len(parts) == N
    assert all(p.startswith(b"--frame\r\nContent-Type: image/jpeg\r\n") for p in parts)
    bodies = mjpeg.split_parts(b"".join(parts) + mjpeg.closing_boundary())
    assert len(bodies) == N
    for i in (0, 16, 32):
        img = Image.open(io.BytesIO(bodies[i]))
        assert img.format == "JPEG" and img.size == (W, H)
        assert np.abs(np.asarray(img.convert("RGB"), np.int16) - frames[i]).mean() < 8


def test_split_parts_ignores_a_partial_tail():
    parts = mjpeg.encode_parts(make_frames(0, n=3))
    data = b"".join(parts)
    assert len(mjpeg.split_parts(data[:-100])) == 2


def test_mjpeg_bad_quality():
    with pytest.raises(ValueError, match="quality"):
        mjpeg.encode_parts(make_frames(0, n=1), quality=0)


def test_msgpack_round_trip_any_byte_boundaries():
    frames = [make_frames(k, n=4) for k in range(3)]
    data = b"".join(
        framing.pack_chunk(f, chunk=k, first_frame=4 * k, prompt=f"p{k}", fps=24) for k, f in enumerate(frames)
    ) + framing.pack_end("deleted")
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    messages = list(framing.unpack_stream(pieces))
    assert [m["type"] for m in messages] == ["chunk"] * 3 + ["end"]
    for k, m in enumerate(messages[:3]):
        assert m["chunk"] == k and m["first_frame"] == 4 * k and m["prompt"] == f"p{k}" and m["fps"] == 24
        assert m["shape"] == [4, H, W, 3] and m["dtype"] == "uint8"
        np.testing.assert_array_equal(framing.frames_of(m), frames[k])
    assert messages[3] == {"type": "end", "reason": "deleted"}


def test_frames_of_rejects_other_messages():
    with pytest.raises(ValueError, match="type"):
        framing.frames_of({"type": "end"})
    msg = msgpack.unpackb(framing.pack_chunk(make_frames(0, n=1), chunk=0, first_frame=0, prompt=None, fps=24))
    msg["dtype"] = "float32"
    with pytest.raises(ValueError, match="dtype"):
        framing.frames_of(msg)


def test_formats():
    assert media_type("mjpeg") == "multipart/x-mixed-replace; boundary=frame"
    assert media_type("mp4") == "video/mp4"
    assert media_type("msgpack") == "application/x-msgpack"
    with pytest.raises(ValueError, match="'webm'"):
        parse_format("webm")
