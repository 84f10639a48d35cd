"""Transformer fast-path levers against the eager reference; prints JSON lines.

- compile: forward time per pyramid stage shape, eager vs `torch.compile`d blocks (each backend
  in --backends), the compile (first-call) time, and the max difference from eager;
- attention: the same forward with each attention backend the device runs;
- fp8: forward error (relative, SNR) of FP8 linears against the reference dtype, for the
  emulated GEMM and torch._scaled_mm, and their speed;
- quality (--quality-chunks N): `helios.pipeline.quality.fp8_quality` on a pipeline (PSNR of
  decoded frames, SNR of latents, against the unconverted stream, same seed).

    python bench/bench_fast.py                                   # CPU, tiny model (fp32)
    python bench/bench_fast.py --device cuda --preset 14b --backends inductor   # GPU (bf16)

On CPU the tiny model is far too small for the levers to pay: these are correctness-scale
numbers (does it run, how close is it, what does compiling cost), not GPU speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_transformer import PRESETS, _fill_random_, make_inputs  # noqa: E402


def _emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def _build(args: argparse.Namespace):
    from helios.model import HeliosTransformer
    from helios.model.load import materialize_

    config = PRESETS[args.preset]()
    with torch.device("meta"):
        model = HeliosTransformer(config)
    model.cast_(args.dtype)
    materialize_(model, args.device)
    _fill_random_(model)
    return model.eval()


def _time(model, inputs: dict, repeats: int, sync) -> tuple[float, float, torch.Tensor]:
    """(first-call seconds, median seconds of the next `repeats`, output)."""
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        out = model(**inputs)
        sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model(**inputs)
            sync()
            times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def _stage_inputs(model, args: argparse.Namespace) -> list[tuple[tuple[int, int], dict]]:
    """Forward inputs at each pyramid stage (latent h x w halved per lower stage)."""
    stages = []
    for s in range(3):
        h, w = args.height // 2 ** (2 - s), args.width // 2 ** (2 - s)
        stages.append(((h, w), make_inputs(model.config, args.frames, h, w, args.text_tokens, args.device,
                                           args.dtype)))
    return stages


def bench_compile(args: argparse.Namespace, sync) -> None:
    from helios.model.fast import compile_blocks

    eager = _build(args)
    stages = _stage_inputs(eager, args)
    reference = {hw: _time(eager, inputs, args.repeats, sync) for hw, inputs in stages}
    for hw, (_, median, _) in reference.items():
        _emit(bench="fast_compile", device=args.device, preset=args.preset, stage_hw=hw, backend="eager",
              median_s=round(median, 5))
    for backend in args.backends:
        torch._dynamo.reset()
        model = copy.deepcopy(eager)
        compile_blocks(model, backend=backend, mode=args.mode)
        for hw, inputs in stages:
            first, median, out = _time(model, inputs, args.repeats, sync)
            _, ref_median, ref_out = _time(eager, inputs, args.repeats, sync)  # adjacent: a shared box drifts
            _emit(bench="fast_compile", device=args.device, preset=args.preset, stage_hw=hw, backend=backend,
                  mode=args.mode, compile_s=round(first, 3), median_s=round(median, 5),
                  eager_over_compiled=round(ref_median / median, 3),
                  max_abs_diff=float((out.float() - ref_out.float()).abs().max()),
                  output_absmax=float(ref_out.float().abs().max()))


def bench_attention(args: argparse.Namespace, sync) -> None:
    from helios.model.attention import BACKENDS, DeviceCapabilities, select_backend, set_attention_backend, supports

    model = _build(args)
    (_, inputs) = _stage_inputs(model, args)[-1]
    caps = DeviceCapabilities.probe(args.device)
    chosen = select_backend(args.device, args.dtype, "auto", caps).backend
    _, _, reference = _time(model, inputs, 1, sync)
    for backend in BACKENDS:
        if supports(backend, caps, args.dtype) is not None:
            continue
        set_attention_backend(model, backend)
        _, median, out = _time(model, inputs, args.repeats, sync)
        _emit(bench="fast_attention", device=args.device, preset=args.preset, backend=backend,
              auto_choice=backend == chosen, median_s=round(median, 5),
              max_abs_diff_vs_sdpa=float((out.float() - reference.float()).abs().max()))


def _snr_db(got: torch.Tensor, expected: torch.Tensor) -> float:
    noise = (got.double() - expected.double()).norm().item()
    return math.inf if noise == 0 else 20 * math.log10(expected.double().norm().item() / noise)


def bench_fp8(args: argparse.Namespace, sync) -> None:
    from helios.model.fp8 import convert_linears

    reference = _build(args)
    (_, inputs) = _stage_inputs(reference, args)[-1]
    _, ref_median, expected = _time(reference, inputs, args.repeats, sync)
    gemms = ["emulated", "scaled_mm"] if args.device == "cpu" else ["scaled_mm"]
    for recipe in ("rowwise", "tensorwise"):
        for gemm in gemms:
            model = copy.deepcopy(reference)
            report = convert_linears(model, recipe=recipe, gemm=gemm)
            _, median, out = _time(model, inputs, args.repeats, sync)
            rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
            _emit(bench="fast_fp8", device=args.device, preset=args.preset, dtype=str(args.dtype), recipe=recipe,
                  gemm=report.gemm, converted=len(report.converted), kept=len(report.skipped),
                  relative_error=round(rel, 5), snr_db=round(_snr_db(out, expected), 2),
                  median_s=round(median, 5), reference_median_s=round(ref_median, 5),
                  reference_over_fp8=round(ref_median / median, 3))


def bench_quality(args: argparse.Namespace) -> None:
    from helios.pipeline import HeliosStreamPipeline
    from helios.pipeline.quality import fp8_quality

    pipe = HeliosStreamPipeline.from_pretrained(args.pipeline, device=args.device,
                                                **({"dtype": "bfloat16"} if args.device == "cuda" else {}))
    report = fp8_quality(pipe, chunks=args.quality_chunks, seed=0, gemm="auto" if args.device == "cuda" else "emulated")
    _emit(bench="fast_fp8_quality", device=args.device, pipeline=args.pipeline, height=pipe.height, width=pipe.width,
          target_psnr_db=35.0, **report.as_dict())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Transformer fast-path levers vs eager (JSON lines)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="cpu: tiny, cuda: 14b")
    parser.add_argument("--parts", default="compile,attention,fp8", help="comma list of compile, attention, fp8, quality")
    parser.add_argument("--backends", default="aot_eager", help="compile backends (cpu inductor: ~1 min per shape)")
    parser.add_argument("--mode", default="default", help="torch.compile mode for inductor")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=None, help="full-resolution latent height (cpu 16, cuda 48)")
    parser.add_argument("--width", type=int, default=None, help="full-resolution latent width (cpu 16, cuda 80)")
    parser.add_argument("--text-tokens", type=int, default=None, help="cpu 16, cuda 512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pipeline", default="tiny-cpu", help="quality: pipeline folder or preset name")
    parser.add_argument("--quality-chunks", type=int, default=2)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        _emit(bench="fast", device="cuda", measured=False, note="no CUDA device")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.preset = args.preset or ("14b" if gpu else "tiny")
    args.dtype = torch.bfloat16 if gpu else torch.float32
    args.height = args.height or (48 if gpu else 16)
    args.width = args.width or (80 if gpu else 16)
    args.text_tokens = args.text_tokens or (512 if gpu else 16)
    args.backends = [b for b in args.backends.split(",") if b]
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    parts = set(args.parts.split(","))
    if "compile" in parts:
        bench_compile(args, sync)
    if "attention" in parts:
        bench_attention(args, sync)
    if "fp8" in parts:
        bench_fp8(args, sync)
    if "quality" in parts:
        bench_quality(args)


if __name__ == "__main__":
    main()
