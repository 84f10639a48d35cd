"""TP scaling from measured per-rank compute plus measured collectives; prints JSON lines.

For each TP size N the bench starts N real ranks (gloo processes on CPU, one NCCL process per
GPU with `--device cuda`), times the forward, and times every named collective of
helios.parallel.comm (helios.parallel.timing: wall time on CPU, CUDA events on GPU). Per rank:
compute = forward - collectives. The model estimate of the speed-up is
T(1) / (compute(N) + collectives(N)); the measured one is T(1) / T(N). With `--overlap` it also
runs the self-attention all-reduce overlapped with the cross-attention K/V GEMMs.

    python bench/bench_tp.py                                  # CPU, tiny model, TP 1,2,4 over gloo
    python bench/bench_tp.py --device cuda --preset 14b       # GPUs: 14B full resolution, TP 1,2,4,8 (as visible)

CPU numbers are CPU numbers: gloo over loopback, and ranks share this machine's cores (each
rank gets threads // N), so they show the method and the all-reduce share, not GPU scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_transformer import PRESETS, _fill_random_, make_inputs, token_count  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One rank: build its random shard, time forwards with and without collective timing."""
    from helios.model import HeliosTransformer
    from helios.model.fast import FastPathConfig, apply_fast_path
    from helios.model.load import materialize_
    from helios.parallel import init_tp_group, timing

    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(max(1, args.threads // world))
    tp = None
    if world > 1:
        tp = init_tp_group(rank, world, master_port=port, backend="nccl" if cuda else "gloo",
                           cuda_device=rank if cuda else None)
    elif cuda:
        torch.cuda.set_device(0)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    config = PRESETS[args.preset]()
    with torch.device("meta"):
        model = HeliosTransformer(config, tp_group=tp)
    model.cast_(dtype)
    materialize_(model, device)
    _fill_random_(model)
    model.eval()
    inputs = make_inputs(config, args.frames, args.height, args.width, args.text_tokens, str(device), dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    result: dict = {}
    for overlap in ([False, True] if args.overlap and world > 1 else [False]):
        apply_fast_path(model, FastPathConfig(attention=args.attention, tp_overlap=overlap), device=device,
                        dtype=dtype)
        with torch.no_grad():
            for _ in range(args.warmup):
                model(**inputs)
            sync()
            times = []
            for _ in range(args.repeats):  # untimed collectives: the forward as served
                sync()
                t0 = time.perf_counter()
                model(**inputs)
                sync()
                times.append(time.perf_counter() - t0)
            timer = timing.enable_comm_timing(device)
            timer.reset()
            timed = []
            for _ in range(args.repeats):  # timed collectives (CPU: same cost; GPU: events only)
                sync()
                t0 = time.perf_counter()
                model(**inputs)
                sync()
                timed.append(time.perf_counter() - t0)
            stats = {name: s.as_dict() for name, s in timer.summary().items()}
            timing.disable_comm_timing()
        result["overlap" if overlap else "blocking"] = {"times": times, "timed_times": timed, "stats": stats}
    if cuda:
        result["device_name"] = torch.cuda.get_device_name(device)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    if tp is not None:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()


def _summary(world: int, run: dict, repeats: int, layers: int) -> dict:
    """Per-forward collective and compute times from one rank's measurements."""
    comm_s = sum(s["total_ms"] for s in run["stats"].values()) / 1000.0 / repeats
    def total(prefix: str) -> dict:  # "row_out" plus "row_out:wait" (the exposed part of an overlapped one)
        parts = [s for name, s in run["stats"].items() if name.split(":")[0] == prefix]
        return {key: sum(p[key] for p in parts) for key in ("total_ms", "calls", "bytes")}

    row, norm = total("row_out"), total("norm_sum_sq")
    timed = statistics.median(run["timed_times"])
    return {
        "median_s": round(statistics.median(run["times"]), 5),
        "timed_median_s": round(timed, 5),
        "collectives_s": round(comm_s, 5),
        "compute_s": round(max(timed - comm_s, 0.0), 5),
        "row_allreduce_ms_per_block": round(row["total_ms"] / repeats / layers, 4),
        "norm_allreduce_ms_per_block": round(norm["total_ms"] / repeats / layers, 4),
        "row_allreduce_mb_per_block": round(row["bytes"] / repeats / layers / 2**20, 3),
        "collective_share": round(comm_s / timed, 3) if timed else None,
        "collectives": run["stats"],
    }


def main(argv: list[str] | None = None) -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description="TP scaling: measured compute + measured collectives (JSON lines)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="cpu: small, cuda: 14b")
    parser.add_argument("--tp-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=None, help="latent height (cpu 16, cuda 48)")
    parser.add_argument("--width", type=int, default=None, help="latent width (cpu 16, cuda 80)")
    parser.add_argument("--text-tokens", type=int, default=None, help="cpu 16, cuda 512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cpu threads shared by the ranks")
    parser.add_argument("--attention", default="auto", help="fast.attention backend for every rank")
    parser.add_argument("--overlap", action="store_true", help="also run with fast.tp_overlap")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.preset = args.preset or ("14b" if gpu else "small")
    visible = torch.cuda.device_count() if gpu else None
    if gpu and not visible:
        print(json.dumps({"bench": "tp_scaling", "device": "cuda", "measured": False, "note": "no CUDA device"}))
        return
    default_sizes = [n for n in (1, 2, 4, 8) if not gpu or n <= visible]
    args.tp_sizes = args.tp_sizes or (default_sizes if gpu else [1, 2, 4])
    args.height = args.height or (48 if gpu else 16)
    args.width = args.width or (80 if gpu else 16)
    args.text_tokens = args.text_tokens or (512 if gpu else 16)
    config = PRESETS[args.preset]()
    tokens, _ = token_count(args.frames, args.height, args.width)
    rows: dict[int, dict] = {}
    device_name = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.tp_sizes:
            out = Path(tmp) / f"tp{world}.json"
            mp.spawn(_rank, args=(world, _free_port(), args, str(out)), nprocs=world)
            measured = json.loads(out.read_text())
            device_name = measured.get("device_name", device_name)
            for mode in ("blocking", "overlap"):
                if mode not in measured:
                    continue
                row = _summary(world, measured[mode], args.repeats, config.num_layers)
                if mode == "blocking":
                    rows[world] = row
                print(json.dumps({"bench": "tp_forward", "device": args.device, "device_name": device_name,
                                  "preset": args.preset, "tokens": tokens, "tp": world, "mode": mode,
                                  "threads_per_rank": None if gpu else max(1, args.threads // world), **row}),
                      flush=True)
    if 1 not in rows:
        return
    base = rows[1]["median_s"]
    print(json.dumps({
        "bench": "tp_scaling", "device": args.device, "device_name": device_name, "preset": args.preset,
        "tokens": tokens,
        "speedup_measured": {str(n): round(base / r["median_s"], 3) for n, r in rows.items()},
        "speedup_model": {str(n): round(base / (r["compute_s"] + r["collectives_s"]), 3) for n, r in rows.items()},
        "speedup_no_comm": {str(n): round(base / r["compute_s"], 3) for n, r in rows.items() if r["compute_s"]},
        "note": ("CPU: gloo over loopback, ranks share the machine's cores; the method, not GPU numbers"
                 if not gpu else "GPU: NCCL, one process per GPU; collective times are CUDA-event times"),
    }), flush=True)


if __name__ == "__main__":
    main()
