"""One dtype table: every place that takes a dtype name accepts the same spellings and
rejects a bad one with the same ValueError naming the valid names."""

from __future__ import annotations

import pytest
import torch

from helios.accounting import report
from helios.client.check import preset_config, tp_plan
from helios.client.cli import build_parser
from helios.dtypes import DTYPE_NAMES, dtype_bytes, dtype_name, resolve_dtype
from helios.pipeline.config import ModelPreset

ALIASES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "torch.bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
}


@pytest.mark.parametrize("name, expected", sorted(ALIASES.items()))
def test_every_consumer_accepts_every_alias(name, expected):
    assert resolve_dtype(name) is expected and resolve_dtype(expected) is expected
    assert ModelPreset(name="p", path="tiny", dtype=name).dtype == dtype_name(expected)
    assert report("tiny", 1, name, 100, None, 8)["dtype"] == str(expected).removeprefix("torch.")
    assert tp_plan(preset_config("tiny"), 1, name)["dtype"] == name
    assert dtype_bytes(name) == torch.empty((), dtype=expected).element_size()


def test_cli_choices_are_the_table():
    parser = build_parser()
    for name in DTYPE_NAMES:
        assert parser.parse_args(["check", "--dtype", name]).dtype == name


@pytest.mark.parametrize("bad", ["int8", "bf32", torch.int8])
def test_bad_dtype_is_named_with_the_valid_names(bad):
    checks = [
        lambda: resolve_dtype(bad),
        lambda: report("tiny", 1, bad, 100, None, 8),
        lambda: tp_plan(preset_config("tiny"), 1, bad),
    ]
    for call in checks:
        with pytest.raises(ValueError, match=r"dtype=.* must be one of \['bf16', 'bfloat16', 'float16', 'float32'"):
            call()
    with pytest.raises(ValueError, match=r"must be one of"):
        ModelPreset(name="p", path="tiny", dtype=bad if isinstance(bad, str) else "int8")
    assert resolve_dtype(None) is torch.float32
