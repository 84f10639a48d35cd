"""Command strategies shared by the protocol fuzzers: each draws a command and what its ack must say.

Every strategy yields `(cmd, valid_args)`: the command object as sent, and whether its
arguments validate (True), do not (False), or the command never reaches a model command
(None: unknown names, malformed objects). `HELIOS_FUZZ_EXAMPLES` raises the example count
(docs/testing.md).
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from helios.models.helios import MAX_SEED
from tests.runtime.runtime_support import png_b64

FUZZ_EXAMPLES = int(os.environ.get("HELIOS_FUZZ_EXAMPLES", "0") or 0)
"""0: the CI budget; N: run N examples per machine (a long local run)."""


def fuzz_settings(ci_examples: int, steps: int) -> settings:
    """Deterministic (derandomized, no example database) and without deadlines: CI never flakes."""
    return settings(
        max_examples=FUZZ_EXAMPLES or ci_examples,
        stateful_step_count=steps,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


GOOD_IMAGES = [png_b64(48, 32, True), png_b64(8, 8, False)]
BAD_IMAGES = ["not base64 !!", base64.b64encode(b"GIF89a not really").decode(), "", "   ",
              "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()]

ids = st.sampled_from(["a", "b", "a", "1", "c-17", None, None])
"""Few ids, so they repeat (and None: no id)."""

prompts = st.one_of(
    st.sampled_from([("a fox", True), ("  a red fox  ", True), ("the fox sleeps", True), ("x" * 45, True),
                     ("   ", True), ("", False), ("y" * 4001, False), (5, False), (None, False)]),
    st.text(min_size=1, max_size=8).map(lambda t: (t, True)),
)
"""(prompt, schema-valid): blank and over-long-for-the-limits prompts pass the schema, then are refused."""

seeds = st.one_of(
    st.integers(0, 2**31).map(lambda s: (s, True)),
    st.sampled_from([(MAX_SEED, True), (-1, False), (MAX_SEED + 1, False), ("7", False), (1.5, False), (None, False)]),
)


def with_id(cmd: dict[str, Any], cid: Any) -> dict[str, Any]:
    if cid is not None:
        cmd["id"] = cid
    return cmd


@st.composite
def commands(draw) -> tuple[dict[str, Any] | Any, bool | None]:
    """Any command of the protocol, valid or not, with a repeated-prone id."""
    cid = draw(ids)
    kind = draw(st.sampled_from(["set_prompt", "schedule_prompt", "set_image", "set_seed", "start", "pause", "resume",
                                 "reset", "get_state", "get_schedule", "list_commands", "unknown", "malformed"]))
    if kind == "set_prompt":
        p, ok = draw(prompts)
        return with_id({"command": kind, "args": {"prompt": p}}, cid), ok
    if kind == "schedule_prompt":
        p, ok = draw(prompts)
        chunk, cok = draw(st.one_of(
            st.integers(0, 12).map(lambda c: (c, True)),
            st.sampled_from([(60, True), (10**9, True), (10**9 + 1, False), (-1, False), ("3", False), (None, False)])))
        return with_id({"command": kind, "args": {"prompt": p, "chunk": chunk}}, cid), ok and cok
    if kind == "set_image":
        good = draw(st.booleans())
        img = draw(st.sampled_from(GOOD_IMAGES if good else BAD_IMAGES))
        transition = draw(st.sampled_from([None, "cut", "blend", "wipe"]))
        args: dict[str, Any] = {"image_b64": img}
        if transition is not None:
            args["transition"] = transition
        return with_id({"command": kind, "args": args}, cid), good and transition != "wipe"
    if kind == "set_seed":
        s, ok = draw(seeds)
        return with_id({"command": kind, "args": {"seed": s}}, cid), ok
    if kind == "get_schedule":
        args = {}
        ok = True
        if draw(st.booleans()):
            f, fok = draw(st.sampled_from([(0, True), (2, True), (7, True), (-1, False), ("0", False)]))
            args["from_chunk"], ok = f, ok and fok
        if draw(st.booleans()):
            lim, lok = draw(st.sampled_from([(1, True), (2, True), (16, True), (0, False), (17, False)]))
            args["limit"], ok = lim, ok and lok
        return with_id({"command": kind, "args": args}, cid), ok
    if kind == "unknown":
        name = draw(st.sampled_from(["fly", "START", "set prompt", "stop", "end"]))
        return with_id({"command": name}, cid), None
    if kind == "malformed":
        shape = draw(st.sampled_from(["extra_field", "args_list", "missing_command", "bad_arg", "empty_name"]))
        if shape == "extra_field":
            return with_id({"command": "get_state", "argz": {}}, cid), None
        if shape == "args_list":
            return with_id({"command": "pause", "args": [1]}, cid), False
        if shape == "missing_command":
            return with_id({"args": {}}, cid), None
        if shape == "bad_arg":
            return with_id({"command": "start", "args": {"now": True}}, cid), False
        return with_id({"command": ""}, cid), None
    return with_id({"command": kind}, cid), True


def command_name(cmd: Any, valid_args: bool | None) -> str | None:
    """The model command `cmd` reaches (None when it is refused before: unknown or malformed)."""
    if valid_args is None or not isinstance(cmd, dict):
        return None
    return cmd.get("command")
