"""Body of one gloo rank for the fast-path TP tests (run under torch.multiprocessing.spawn):
TP=2 eager, with the all-reduce/GEMM overlap, with FP8 linears, compiled (aot_eager), and one
forward with the collectives timed; outputs and timing stats go to `out_dir`."""

from __future__ import annotations

import json

import torch
from tp_spawn import rank_start


def run(rank: int, world_size: int, port: int, checkpoint: str, inputs_file: str, out_dir: str) -> None:
    inputs, out, tp = rank_start(rank, world_size, port, inputs_file, out_dir)
    import torch.distributed as tdist

    from helios.model.fast import FastPathConfig, apply_fast_path
    from helios.parallel import timing
    from helios.weights import from_pretrained

    runs = {
        "eager": FastPathConfig(attention="sdpa"),
        "overlap": FastPathConfig(attention="sdpa", tp_overlap=True),
        "fp8": FastPathConfig(attention="sdpa", fp8=True, fp8_gemm="emulated"),
        "compiled": FastPathConfig(attention="sdpa", compile=True, compile_backend="aot_eager"),
    }
    for tag, config in runs.items():
        model = from_pretrained(checkpoint, tp_group=tp)
        report = apply_fast_path(model, config, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            result = model(**inputs)
        torch.save(result, out / f"{tag}_rank{rank}.pt")
        if tag == "fp8":
            (out / f"fp8_converted_rank{rank}.json").write_text(json.dumps(report.fp8.converted))
    model = from_pretrained(checkpoint, tp_group=tp)
    timer = timing.enable_comm_timing("cpu")
    with torch.no_grad():
        model(**inputs)
    stats = {name: s.as_dict() for name, s in timer.summary().items()}
    timing.disable_comm_timing()
    (out / f"timing_rank{rank}.json").write_text(json.dumps(stats))
    tdist.barrier()
    tdist.destroy_process_group()
