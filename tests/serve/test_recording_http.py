"""GET recording.mp4 while the session still records: a playable prefix with its own Content-Length, and ranges.

The served app's `recording_uri` is a file:// URL: the relay writes there, the front door reads from there
(not from the relay), as any front door of a cluster does from shared storage.
"""

from __future__ import annotations

import io

import av

from tests.serve.conftest import recording_folder, wait_for


def _frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_growing_recording_is_served_to_its_complete_length(served):
    r = served.create(model="test-pattern")
    assert r.status_code == 201, r.text
    sid, urls = r.json()["session_id"], r.json()["urls"]
    try:
        assert served.command(sid, "set_prompt", prompt="a recording").status_code == 200
        assert served.command(sid, "start").status_code == 200

        def fetch():
            resp = served.http.get(urls["recording"])
            return resp if resp.status_code == 200 and _frames(resp.content) > 0 else None

        first = wait_for(fetch, 120, "a recording with frames")
        assert int(first.headers["content-length"]) == len(first.content)
        assert first.headers["accept-ranges"] == "bytes"
        assert served.get(sid)["status"] == "active"  # still recording

        # It grows: a later answer is longer, and again exactly as long as it says.
        later = wait_for(lambda: (x := fetch()) is not None and len(x.content) > len(first.content) and x, 120, "a longer recording")
        assert int(later.headers["content-length"]) == len(later.content)
        assert later.content.startswith(first.content)  # the prefix never changes
        assert _frames(later.content) > _frames(first.content)

        part = served.http.get(urls["recording"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == later.content[:100]
        total = int(part.headers["content-range"].rsplit("/", 1)[1])
        assert part.headers["content-range"] == f"bytes 0-99/{total}" and total >= len(later.content)
        beyond = served.http.get(urls["recording"], headers={"Range": f"bytes={10**12}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"].startswith("bytes */")
        assert beyond.json()["field"] == "range" and "outside" in beyond.json()["detail"]  # JSON like every 4xx (was empty)

        # What was served is the file at recording_uri (a prefix of it: the file may have grown since).
        stored = (recording_folder(served.config.models["helios-tiny"].path) / sid / "recording.mp4").read_bytes()
        assert stored.startswith(later.content)
    finally:
        served.delete(sid)
