"""Size of the session state under the hostile schedule of issue 11; one JSON line on stdout.

A session gets a prompt at chunk 0, then `schedule_prompt` of 3,900 characters at chunks
1..1500 (what a hostile tenant sent), then generates a few chunks. Reported: prompts
accepted / refused, the largest `state` message and the sum of all of them in bytes
(JSON, as SSE/WS carry them and the message log keeps them), and the `get_state` answer
(what GET /v1/sessions/{id} embeds). Runs against whatever `helios` is on the path, so
the same script measures a tree before and after a change.

Run: `.venv/bin/python bench/bench_state_size.py` from the repository root.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helios.models.testpattern import TestPatternModel  # noqa: E402
from helios.runtime import MemorySink, Session  # noqa: E402

PROMPTS, PROMPT_CHARS, CHUNKS = 1500, 3900, 3


def main() -> None:
    sink = MemorySink()
    session = Session(TestPatternModel(64, 64, frames_per_chunk=4), sink, fps=10_000.0).start()
    t0 = time.perf_counter()
    assert session.call({"command": "set_prompt", "args": {"prompt": "p0"}})["ok"]
    acks = [
        session.call({"command": "schedule_prompt", "args": {"prompt": "x" * PROMPT_CHARS, "chunk": c}})
        for c in range(1, PROMPTS + 1)
    ]
    schedule_s = time.perf_counter() - t0
    get_state = len(json.dumps(session.call({"command": "get_state"})["result"]))
    assert session.call({"command": "start"})["ok"]
    sink.wait_until(lambda: len(sink.events("chunk_complete")) >= CHUNKS, timeout=120, what="chunks")
    session.stop()
    session.join(30)
    states = [len(json.dumps(m)) for m in sink.snapshot() if m["type"] == "state"]
    print(json.dumps({
        "bench": "state_size",
        "prompts_sent": PROMPTS,
        "prompt_chars": PROMPT_CHARS,
        "accepted": sum(a["ok"] for a in acks),
        "refused": sum(not a["ok"] for a in acks),
        "schedule_s": round(schedule_s, 2),
        "state_messages": len(states),
        "largest_state_bytes": max(states),
        "all_state_bytes": sum(states),
        "get_state_bytes": get_state,
    }), flush=True)


if __name__ == "__main__":
    main()
