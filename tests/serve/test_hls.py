"""LL-HLS over real HTTP from the served app: ffmpeg and PyAV play the playlist, encode once, strict directives."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import threading

import av
import msgpack
import numpy as np
import pytest

from helios.media import framing
from tests.serve.conftest import wait_for

pytestmark = pytest.mark.e2e

FFMPEG = shutil.which("ffmpeg")
H, W = 64, 96  # the served test-pattern size
DECODE = 48  # frames each player decodes: more than one 33-frame segment


class Raw(threading.Thread):
    """The session's exact frames (msgpack from chunk 0), read in the background: the ground truth."""

    def __init__(self, served, url: str):
        super().__init__(daemon=True)
        self.served, self.url = served, url
        self.frames: dict[int, np.ndarray] = {}  # global frame index -> frame
        self.stop = False

    def run(self):
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
        with self.served.http.stream("GET", self.url + "&from=0", timeout=600) as r:
            for piece in r.iter_bytes():
                unpacker.feed(piece)
                for msg in unpacker:
                    if msg["type"] == "chunk":
                        for i, frame in enumerate(framing.frames_of(msg)):
                            self.frames[msg["first_frame"] + i] = frame
                if self.stop:
                    return


def best_matches(decoded: list[np.ndarray], raw: dict[int, np.ndarray]) -> list[tuple[int, float]]:
    """For each decoded frame: the raw frame index it matches best and the mean abs error."""
    keys = sorted(raw)
    stack = np.stack([raw[k] for k in keys]).astype(np.int16)
    out = []
    for frame in decoded:
        err = np.abs(stack - frame.astype(np.int16)).mean(axis=(1, 2, 3))
        i = int(err.argmin())
        out.append((keys[i], float(err[i])))
    return out


def ffmpeg_frames(url: str, n: int) -> list[np.ndarray]:
    out = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", url, "-frames:v", str(n), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, timeout=180, check=True,
    ).stdout
    assert len(out) == n * H * W * 3, (len(out), out[:200])
    return list(np.frombuffer(out, np.uint8).reshape(n, H, W, 3))


def pyav_frames(url: str, n: int) -> list[av.VideoFrame]:
    frames = []
    with av.open(url, timeout=60) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == n:
                break
    return frames


@pytest.fixture(scope="module")
def live(served):
    """A running test-pattern session: (served, session id, urls, relay handle)."""
    from ray import serve

    r = served.create(model="test-pattern")
    assert r.status_code in (201, 202), r.text
    body = r.json()
    sid = body["session_id"]
    served.wait_active(sid)
    assert served.command(sid, "set_prompt", prompt="hls test pattern").status_code == 200
    assert served.command(sid, "start").status_code == 200
    yield served, sid, body["urls"], serve.get_deployment_handle("Relay", "helios")
    served.delete(sid)


def test_ffmpeg_and_pyav_play_the_playlist_and_hls_adds_no_encode(live):
    served, sid, urls, relay = live
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (scripts/test.sh installs the Debian package)")
    url = served.base_url + urls["hls"]
    raw = Raw(served, served.base_url + urls["stream_msgpack"])
    raw.start()
    mp4 = served.http.stream("GET", urls["stream_mp4"], timeout=600)  # an mp4 and an mjpeg viewer watch too
    mjpeg = served.http.stream("GET", urls["stream_mjpeg"], timeout=600)
    mp4_resp, mjpeg_resp = mp4.__enter__(), mjpeg.__enter__()
    try:
        first = served.http.get(urls["hls"])
        assert first.status_code == 200, first.text
        assert first.headers["content-type"].startswith("application/vnd.apple.mpegurl")
        before = relay.stats.remote().result()
        ff = ffmpeg_frames(url, DECODE)
        pv = pyav_frames(url, DECODE)
        after = relay.stats.remote().result()
    finally:
        raw.stop = True
        mp4.__exit__(None, None, None)
        mjpeg.__exit__(None, None, None)
    raw.join(60)
    assert mp4_resp.status_code == 200 and mjpeg_resp.status_code == 200

    # Encode once: while HLS players, an mp4 and an mjpeg viewer (and the recording) watched,
    # no chunk was encoded twice in a format.
    received = after["chunks_received"] - before["chunks_received"]
    assert received >= 1, "no chunk arrived while the players played"
    for fmt in ("mp4", "mjpeg"):
        # Counted per chunk by the relay, so no window edge matters: a chunk received just before
        # `before` may well be encoded inside the window, but never encoded a second time.
        assert after["chunks_encoded"][fmt] > before["chunks_encoded"][fmt], fmt
        assert after["repeat_encodes"][fmt] == before["repeat_encodes"][fmt], (fmt, before, after)
    assert after["hls"][sid]["requests"] > 2  # the players really went through the HLS routes

    # Both players decoded the session's own frames, in order, across a segment boundary.
    assert len(raw.frames) >= 2 * 33
    for name, decoded in (("ffmpeg", ff), ("pyav", [f.to_ndarray(format="rgb24") for f in pv])):
        matches = best_matches(decoded, raw.frames)
        indices = [m[0] for m in matches]
        assert max(m[1] for m in matches) < 12.0, (name, matches)  # lossy H.264 (crf 23 at 96x64), but close
        # ...and far closer than to the frame 5 later: the match could have failed.
        for (index, err), frame in zip(matches, decoded):
            other = raw.frames.get(index + 5, raw.frames.get(index - 5))
            assert err < 0.5 * np.abs(other.astype(np.int16) - frame).mean(), (name, index, err)
        assert indices == list(range(indices[0], indices[0] + len(indices))), (name, indices)
        assert len({i // 33 for i in indices}) >= 2  # more than one chunk (segment)
    # PyAV's timestamps are the chunks' frame numbers (decode time from first_frame).
    pts = [round(float(f.pts * f.time_base) * 24) for f in pv]
    assert pts == [m[0] for m in best_matches([f.to_ndarray(format="rgb24") for f in pv], raw.frames)]


def test_blocking_reload_and_strict_directives_over_http(live):
    served, sid, urls, _ = live
    url, token = urls["hls"].split("?token=")
    tok = (("token", token),)
    text = served.http.get(url, params=tok).text
    last = int(re.findall(r"^(\d+)\.m4s", text, re.M)[-1])
    # Blocks until the next segment exists, then answers the whole playlist with it.
    nxt = served.http.get(url, params=tok + (("_HLS_msn", last + 1), ("_HLS_part", 0)), timeout=60)
    assert nxt.status_code == 200, nxt.text
    assert f"\n{last + 1}.m4s" in nxt.text and f'{last + 1}.0.m4s' in nxt.text
    # A segment and a part listed there are served; the segment is the parts joined.
    base = url.rsplit("/", 1)[0]
    seg = served.http.get(f"{base}/{last + 1}.m4s?token={token}")
    p0 = served.http.get(f"{base}/{last + 1}.0.m4s?token={token}")
    p1 = served.http.get(f"{base}/{last + 1}.1.m4s?token={token}")
    assert seg.status_code == p0.status_code == p1.status_code == 200
    assert seg.content == p0.content + p1.content
    init = served.http.get(f"{base}/init.mp4?token={token}")
    with av.open(io.BytesIO(init.content + seg.content)) as c:
        assert len(list(c.decode(video=0))) == 33

    now = int(re.findall(r"^(\d+)\.m4s", nxt.text, re.M)[-1])
    bad = {
        (("_HLS_msn", str(now + 5)),): "_HLS_msn",  # more than 2 segments ahead: 400 at once
        (("_HLS_msn", "-1"),): "_HLS_msn",
        (("_HLS_msn", "1e3"),): "_HLS_msn",
        (("_HLS_part", "0"),): "_HLS_part",  # part without msn
        (("_HLS_msn", str(now)), ("_HLS_part", "x")): "_HLS_part",
        (("_HLS_msn", "1"), ("_HLS_msn", "2")): "_HLS_msn",
    }
    for params, field in bad.items():
        r = served.http.get(url, params=tok + params)
        assert r.status_code == 400, (params, r.status_code, r.text)
        assert r.json()["field"] == field and field in r.json()["detail"], r.json()
    assert served.http.get(f"{base}/999999.m4s?token={token}").status_code == 404
    assert served.http.get(f"{base}/nope.txt?token={token}").json()["field"] == "segment"
    assert served.http.get(f"{base}/index.m3u8?token=wrong").status_code == 401
    assert served.http.get(f"{base}/index.m3u8").status_code == 401


def test_hls_players_count_toward_the_viewer_cap(live):
    """Each HLS player (address + User-Agent) holds a reader lease while it pulls: one too many is 429."""
    from tests.serve.conftest import MAX_VIEWERS

    served, sid, urls, _ = live
    url, token = urls["hls"].split("?token=")
    statuses = []
    for i in range(MAX_VIEWERS + 1):
        r = served.http.get(url, params={"token": token}, headers={"User-Agent": f"player-{i}"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["limit"] == "max_viewers_per_session", r.json()
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
    # A player already counted keeps playing: its later requests renew its lease.
    again = served.http.get(url, params={"token": token}, headers={"User-Agent": "player-0"})
    assert again.status_code == 200, again.text
