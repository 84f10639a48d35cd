"""Transformer forward benchmark; prints one JSON line per measurement.

CPU (default): the tiny model at the test geometry (9 latent frames of 16x16 + full history),
forward time at TP=1 vs TP=2 and Ulysses SP=2 (two gloo processes, the CPU threads split
between ranks).

    python bench/bench_transformer.py
    python bench/bench_transformer.py --preset small --repeats 5

GPU (`--device cuda`): the 14B model at full resolution (11,040 tokens, bf16, random weights)
at TP=1 on one GPU, and one rank's share of TP=2/4/8 run alone on that GPU (collectives
excluded), with achieved TFLOP/s against the GPU's dense bf16 peak.

    python bench/bench_transformer.py --device cuda --preset 14b

Host memory (`--mode load`): one rank's resident memory growth while loading its shard of a
bf16 checkpoint (~0.14B parameters), against the shard's own bytes, at TP=1/2/4.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helios.accounting import forward_flops  # noqa: E402
from helios.config import HeliosConfig  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), by substring of the device name.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}

PRESETS = {
    "tiny": lambda: HeliosConfig.tiny(num_attention_heads=4),
    "small": lambda: HeliosConfig.tiny(num_attention_heads=8, attention_head_dim=64, rope_dim=(24, 20, 20),
                                       num_layers=4, ffn_dim=1024, text_dim=256),
    "14b": HeliosConfig.helios_14b,
    # ~0.14B parameters: big enough that per-rank host memory is visible above the import baseline
    "medium": lambda: HeliosConfig.tiny(num_attention_heads=16, attention_head_dim=64, rope_dim=(24, 20, 20),
                                        num_layers=8, ffn_dim=4096, text_dim=256),
}


def make_inputs(config: HeliosConfig, frames: int, height: int, width: int, text_tokens: int,
                device: str, dtype: torch.dtype) -> dict:
    """Current latents (frames x height x width) with full history: short 2, mid 2, long 16 frames."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    c = config.in_channels
    return dict(
        hidden_states=rand(1, c, frames, height, width),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=rand(1, text_tokens, config.text_dim),
        indices_hidden_states=torch.arange(19, 19 + frames, device=device)[None],
        latents_history_short=rand(1, c, 2, height, width),
        indices_latents_history_short=torch.tensor([[0, 18]], device=device),
        latents_history_mid=rand(1, c, 2, height, width),
        indices_latents_history_mid=torch.tensor([[16, 17]], device=device),
        latents_history_long=rand(1, c, 16, height, width),
        indices_latents_history_long=torch.arange(16, device=device)[None],
    )


def token_count(frames: int, height: int, width: int) -> tuple[int, int]:
    """(total, history) tokens for the (1,2,2) patch geometry of make_inputs."""
    current = frames * (height // 2) * (width // 2)
    short = 2 * (height // 2) * (width // 2)
    mid = -(-height // 4) * -(-width // 4)
    long = 4 * -(-height // 8) * -(-width // 8)
    return current + short + mid + long, short + mid + long


def time_forward(model, inputs: dict, repeats: int, warmup: int, sync=lambda: None) -> list[float]:
    """Wall seconds of each timed forward (after `warmup` untimed ones)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(**inputs)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


# -- CPU: TP=1 vs TP=2 over gloo ---------------------------------------------------------------


def _cpu_rank(
    rank: int, world: int, port: int, ckpt: str, threads: int, kind: str, args: argparse.Namespace, out: str
) -> None:
    torch.set_num_threads(threads)
    from helios.parallel import init_tp_group
    from helios.weights import from_pretrained

    tp = init_tp_group(rank, world, master_addr="127.0.0.1", master_port=port) if world > 1 else None
    if kind == "sp":
        model = from_pretrained(ckpt, sp_group=tp)
    else:
        model = from_pretrained(ckpt, tp_group=tp)
    inputs = make_inputs(model.config, args.frames, args.height, args.width, args.text_tokens, "cpu", torch.float32)
    times = time_forward(model, inputs, args.repeats, args.warmup)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    if tp is not None:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()


def _time_diffusers(ckpt: Path, config: HeliosConfig, threads: int, args: argparse.Namespace) -> float:
    """Median forward time of diffusers' model on the same checkpoint and inputs (TP=1)."""
    from diffusers import HeliosTransformer3DModel

    torch.set_num_threads(threads)
    model = HeliosTransformer3DModel.from_pretrained(ckpt).eval()
    inputs = make_inputs(config, args.frames, args.height, args.width, args.text_tokens, "cpu", torch.float32)
    return statistics.median(time_forward(model, inputs, args.repeats, args.warmup))


def _ratio(name: str, value: float, note: str, **extra) -> None:
    print(json.dumps({"bench": "transformer_forward_ratio", "device": "cpu", "ratio": name,
                      "value": round(value, 3), **extra, "note": note}), flush=True)


def bench_cpu(args: argparse.Namespace) -> None:
    """Real TP ranks over gloo. Each TP size runs with the CPU threads split between its ranks;
    TP=1 also runs single-threaded, the fairer baseline on an oversubscribed machine."""
    import torch.multiprocessing as mp

    from helios.weights.tiny import make_tiny_transformer

    config = PRESETS[args.preset]()
    tokens, history = token_count(args.frames, args.height, args.width)
    flops = forward_flops(config, tokens, history_tokens=history, text_tokens=args.text_tokens).flops_per_forward
    runs = [(world, max(1, args.threads // world), "tp") for world in args.tp_sizes]
    if args.threads > 1 and 1 in args.tp_sizes:
        runs.insert(1, (1, 1, "tp"))
    runs += [(world, max(1, args.threads // world), "sp") for world in args.tp_sizes if world > 1]
    medians: dict[tuple[int, int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_transformer(Path(tmp) / "ckpt", config)
        for world, threads, kind in runs:
            out = Path(tmp) / f"{kind}{world}_{threads}.json"
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_cpu_rank, args=(world, port, str(ckpt), threads, kind, args, str(out)), nprocs=world)
            times = json.loads(out.read_text())
            medians[(world, threads, kind)] = statistics.median(times)
            print(json.dumps({
                "bench": "transformer_forward", "device": "cpu", "preset": args.preset,
                "parallel": kind, "tp" if kind == "tp" else "sp": world,
                "threads_per_rank": threads, "tokens": tokens,
                "median_s": round(medians[(world, threads, kind)], 5), "min_s": round(min(times), 5),
                "repeats": len(times), "gflops_per_forward": round(flops / 1e9, 3),
            }), flush=True)
        if not args.no_reference and 1 in args.tp_sizes:
            ref = _time_diffusers(ckpt, config, 1, args)
            _ratio("diffusers_over_ours_tp1_1thread", ref / medians[(1, 1, "tp")],
                   "diffusers HeliosTransformer3DModel time over ours, both TP=1 single-threaded (>1: ours faster)",
                   diffusers_median_s=round(ref, 5))
    base = runs[0]
    for world, threads, kind in runs[1:]:
        if world == base[0]:
            continue
        _ratio(f"tp{base[0]}x{base[1]}thr_over_{kind}{world}x{threads}thr",
               medians[base] / medians[(world, threads, kind)],
               f"speed-up of {kind.upper()} over TP=1 with the same total threads (>1 means faster)")
        if (1, 1, "tp") in medians and (1, 1, "tp") != base:
            _ratio(f"tp1x1thr_over_{kind}{world}x{threads}thr", medians[(1, 1, "tp")] / medians[(world, threads, kind)],
                   f"speed-up of {kind.upper()} ranks over one single-threaded process (>1 means faster)")


# -- GPU: 14B TP=1 and one rank's share of TP=N ------------------------------------------------


@torch.no_grad()
def _fill_random_(model: torch.nn.Module) -> None:
    """Random weights generated on the device (the CPU generator of randomize_ is too slow for 14B)."""
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if param.ndim == 1:
            param.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
        elif "scale_shift_table" in name:
            param.normal_(0.0, param.shape[-1] ** -0.5)
        else:
            param.normal_(0.0, param[0].numel() ** -0.5)


def bench_share(args: argparse.Namespace) -> None:
    """One rank's share of TP=N alone on one device (cuda normally; cpu only as a smoke test)."""
    import helios.model.layers as layers
    from helios.model import HeliosTransformer
    from helios.parallel import TPGroup
    from helios.model.load import materialize_

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"bench": "transformer_forward", "device": "cuda", "measured": False,
                          "note": "no CUDA device in this run"}))
        return
    cuda = device == "cuda"
    if not cuda:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    dtype = torch.bfloat16 if cuda else torch.float32
    config = PRESETS[args.preset]()
    tokens, history = token_count(args.frames, args.height, args.width)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # one rank alone: the all-reduces are skipped (their cost is what `allreduce_payload_bytes` estimates)
    original = layers.reduce_from_tp_region
    layers.reduce_from_tp_region = lambda x, tp, *name: x
    try:
        for world in args.tp_sizes:
            with torch.device("meta"):
                model = HeliosTransformer(config, tp_group=TPGroup(0, world) if world > 1 else None)
            model.cast_(dtype)
            materialize_(model, device)
            _fill_random_(model)
            inputs = make_inputs(config, args.frames, args.height, args.width, args.text_tokens, device, dtype)
            times = time_forward(model, inputs, args.repeats, args.warmup, sync)
            flops = forward_flops(config, tokens, history_tokens=history, text_tokens=args.text_tokens, tp=world)
            med = statistics.median(times)
            achieved = flops.flops_per_rank / med / 1e12
            print(json.dumps({
                "bench": "transformer_forward" if world == 1 else "transformer_rank_share",
                "device": name, "preset": args.preset, "dtype": str(dtype).removeprefix("torch."), "tp": world,
                "tokens": tokens,
                "collectives": "excluded" if world > 1 else "none",
                "median_s": round(med, 4), "min_s": round(min(times), 4), "repeats": len(times),
                "tflops_per_rank": round(flops.flops_per_rank / 1e12, 4), "achieved_tflops": round(achieved, 4),
                "peak_tflops": peak, "mfu": round(achieved / peak, 3) if peak else None,
                "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
                # not measured: ring all-reduce moves 2(N-1)/N of the payload at the assumed bus bandwidth
                "est_allreduce_s": round(flops.allreduce_payload_bytes * 2 * (world - 1) / world / (args.busbw_gbs * 1e9), 6),
                "assumed_busbw_gbs": args.busbw_gbs,
            }), flush=True)
            del model, inputs
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    finally:
        layers.reduce_from_tp_region = original


# -- host memory of per-rank loading ------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _load_rank(rank: int, world: int, ckpt: str, out: str) -> None:
    """Load one rank's shard (no process group needed to load) and record its memory."""
    torch.set_num_threads(1)
    from helios.parallel import TPGroup
    from helios.weights import from_pretrained

    anon_before, peak_before = _proc_status_kib("RssAnon"), _proc_status_kib("VmHWM")
    start = time.perf_counter()
    model, report = from_pretrained(ckpt, tp_group=TPGroup(rank, world) if world > 1 else None,
                                    dtype=torch.bfloat16, return_report=True)
    seconds = time.perf_counter() - start
    rank_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    Path(out).write_text(json.dumps({
        "rank_param_bytes": rank_bytes, "bytes_read": report.bytes_read, "load_s": seconds,
        "anon_rss_growth_bytes": (_proc_status_kib("RssAnon") - anon_before) * 1024,
        "peak_rss_growth_bytes": (_proc_status_kib("VmHWM") - peak_before) * 1024,
    }))


def bench_load(args: argparse.Namespace) -> None:
    """Per-rank host memory while loading a bf16 checkpoint, rank 0 of each TP size."""
    import torch.multiprocessing as mp

    from helios.weights.tiny import make_tiny_transformer

    config = PRESETS[args.preset]()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_transformer(Path(tmp) / "ckpt", config, dtype=torch.bfloat16, max_shard_size="64MB")
        ckpt_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        for world in args.tp_sizes:
            out = Path(tmp) / f"load{world}.json"
            mp.spawn(_load_rank, args=(world, str(ckpt), str(out)), nprocs=1)
            m = json.loads(out.read_text())
            print(json.dumps({
                "bench": "rank_load_memory", "preset": args.preset, "tp": world, "rank": 0, "dtype": "bf16",
                "checkpoint_bytes": ckpt_bytes, **m,
                "anon_growth_over_rank_bytes": round(m["anon_rss_growth_bytes"] / m["rank_param_bytes"], 3),
                "rank_bytes_over_checkpoint": round(m["rank_param_bytes"] / ckpt_bytes, 3),
            }), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Helios transformer forward benchmark (JSON lines)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mode", choices=["tp", "share", "load"], default=None,
                        help="tp: real TP ranks over gloo (cpu default); share: one rank's share alone (cuda "
                             "default); load: host memory of loading one rank's shard")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="cpu: tiny, cuda: 14b")
    parser.add_argument("--tp-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--frames", type=int, default=9, help="current latent frames")
    parser.add_argument("--height", type=int, default=None, help="latent height (cpu 16, cuda 48)")
    parser.add_argument("--width", type=int, default=None, help="latent width (cpu 16, cuda 80)")
    parser.add_argument("--text-tokens", type=int, default=None, help="cpu 16, cuda 512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busbw-gbs", type=float, default=370.0,
                        help="share mode: all-reduce bus bandwidth assumed for the estimate (H100 NVLink ~370)")
    parser.add_argument("--no-reference", action="store_true", help="cpu: skip timing diffusers' model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cpu threads shared by the ranks")
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.mode = args.mode or ("share" if gpu else "tp")
    if args.mode == "tp" and gpu:
        parser.error("--mode tp runs gloo ranks on CPU; use --mode share with --device cuda")
    args.preset = args.preset or ("14b" if gpu else "tiny")
    args.tp_sizes = args.tp_sizes or ([1, 2, 4, 8] if gpu else [1, 2])
    args.height = args.height or (48 if gpu else 16)
    args.width = args.width or (80 if gpu else 16)
    args.text_tokens = args.text_tokens or (512 if gpu else 16)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mode == "load":
        args.preset = "medium" if args.preset == "tiny" else args.preset
        args.tp_sizes = args.tp_sizes if args.tp_sizes != [1, 2] else [1, 2, 4]
    {"share": bench_share, "tp": bench_cpu, "load": bench_load}[args.mode](args)


if __name__ == "__main__":
    main()
