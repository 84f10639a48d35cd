"""bench_tp.py and bench_fast.py still run on CPU and print their JSON lines (tiny model, one
repeat; no timing is asserted, only the structure and the measured counts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # spawned TP ranks unpickle bench_tp._rank by module name
    spec.loader.exec_module(module)
    return module


def test_bench_tp_reports_per_block_allreduce_and_scaling(capsys):
    _load("bench_tp").main(["--preset", "tiny", "--tp-sizes", "1,2", "--repeats", "1", "--warmup", "0",
                            "--threads", "2", "--overlap"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    forwards = [line for line in lines if line["bench"] == "tp_forward"]
    assert [(f["tp"], f["mode"]) for f in forwards] == [(1, "blocking"), (2, "blocking"), (2, "overlap")]
    assert forwards[0]["row_allreduce_ms_per_block"] == 0.0  # TP=1 has no collectives
    tp2 = forwards[1]
    assert tp2["collectives"]["row_out"]["calls"] == 3 * 2 and tp2["collectives"]["norm_sum_sq"]["calls"] == 4 * 2
    assert tp2["row_allreduce_ms_per_block"] > 0 and tp2["row_allreduce_mb_per_block"] > 0
    assert "row_out:wait" in forwards[2]["collectives"]  # the overlapped all-reduce is waited on
    scaling = lines[-1]
    assert scaling["bench"] == "tp_scaling" and set(scaling["speedup_model"]) == {"1", "2"}


def test_bench_fast_fp8_and_attention_lines(capsys):
    threads = torch.get_num_threads()
    try:
        _load("bench_fast").main(["--parts", "attention,fp8", "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    attention = {line["backend"]: line for line in lines if line["bench"] == "fast_attention"}
    assert set(attention) == {"sdpa", "math"} and attention["sdpa"]["auto_choice"]
    fp8 = [line for line in lines if line["bench"] == "fast_fp8"]
    assert {(line["recipe"], line["gemm"]) for line in fp8} == {
        ("rowwise", "emulated"), ("rowwise", "scaled_mm"), ("tensorwise", "emulated"), ("tensorwise", "scaled_mm")}
    assert all(0 < line["relative_error"] < 0.1 for line in fp8)
