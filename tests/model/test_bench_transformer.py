"""The benchmark's share mode still runs (tiny model, one repeat; no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

import helios.model.layers as layers

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_transformer.py"


def test_share_mode_prints_json_lines(capsys):
    spec = importlib.util.spec_from_file_location("bench_transformer", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads, reduce = torch.get_num_threads(), layers.reduce_from_tp_region
    try:
        bench.main(["--mode", "share", "--tp-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert layers.reduce_from_tp_region is reduce  # the collective stub does not leak
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["tp"] for line in lines] == [1, 2]
    assert lines[1]["bench"] == "transformer_rank_share" and lines[1]["collectives"] == "excluded"
    assert lines[1]["tflops_per_rank"] < lines[0]["tflops_per_rank"]
