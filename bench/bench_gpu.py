"""The GPU fast path in one command: random weights built on the device, JSON lines out.

On a machine with one or more GPUs and nothing downloaded (`bench/gpu.sh`): builds the
14B-Distilled stack with random bf16 weights directly on the device (transformer on the
meta device, then materialised and filled on the GPU; full Wan VAE; UMT5-XXL), runs
384x640 at [1,1,1] and [2,2,2] and prints one JSON line per measurement:

- `stage`: per-component times per chunk (text encode, each pyramid stage's transformer
  forwards, other sampler work, VAE decode), FLOPs counted from the shapes the model saw
  (helios.accounting), TFLOP/s and MFU of the denoising;
- `overlap`: chunk time and FPS with the decode synchronous vs overlapped with the next
  chunk (one run, same pipeline), and the time gained;
- `first_frame`: time to first frame from a warm pipeline (reset + new prompt + chunk 0);
- `memory`: peak device memory;
- `served`: FPS a viewer receives through the real app (Ray Serve, HTTP, relay) at TP=1,
  and TP=N when N GPUs are visible, with playback unpaced (240 fps) so the number is the
  generation rate through the app (the random stack is written to a local folder once,
  since the app loads from disk).

`--device cpu --preset tiny` runs the same code on the tiny model (CI checks its keys).

    python bench/bench_gpu.py                                  # cuda, 14b
    python bench/bench_gpu.py --device cpu --preset tiny --chunks 2 --no-serve
    python bench/bench_gpu.py --compile --attention fa3 --fp8  # fast-path levers (StreamConfig.fast)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402

from bench_transformer import GPU_PEAK_TFLOPS, _fill_random_  # noqa: E402
from helios.accounting import forward_flops  # noqa: E402
from helios.config import HeliosConfig  # noqa: E402

log = logging.getLogger("bench_gpu")

UMT5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dropout_rate": 0.0,
            "feed_forward_proj": "gated-gelu", "vocab_size": 256384}
"""google/umt5-xxl's encoder, the Helios text encoder (4096 wide)."""

PROMPTS = ["a lighthouse on a cliff at dusk, waves crashing", "a red fox running through fresh snow",
           "a paper boat drifting down a rainy street", "a hot air balloon over a misty valley at sunrise"]


def preset(name: str) -> dict:
    """Model sizes and geometry: the published 14B-Distilled stack, or the tiny test stack."""
    from helios.pipeline.tiny import TINY_TEXT_ENCODER, TINY_TRANSFORMER, TINY_VAE

    if name == "14b":
        return {"transformer": HeliosConfig.helios_14b(), "vae": {}, "text": UMT5_XXL, "height": 384, "width": 640}
    return {"transformer": HeliosConfig.from_dict(TINY_TRANSFORMER), "vae": dict(TINY_VAE),
            "text": dict(TINY_TEXT_ENCODER), "height": 128, "width": 128}


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


# -- building random weights on the device --------------------------------------------------------


@torch.no_grad()
def build_transformer(config: HeliosConfig, device: torch.device, dtype: torch.dtype):
    """Meta-device build, materialised on `device` in `dtype` (fp32-kept modules kept), random fill there."""
    from helios.model import HeliosTransformer
    from helios.model.load import materialize_

    with torch.device("meta"):
        model = HeliosTransformer(config)
    model.cast_(dtype)
    materialize_(model, device)
    _fill_random_(model)
    return model.eval()


@torch.no_grad()
def build_text_encoder(spec: dict, vocab_size: int, device: torch.device, dtype: torch.dtype):
    """UMT5 encoder on the meta device, then allocated and randomly filled on `device`."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**{**spec, "vocab_size": max(vocab_size, spec.get("vocab_size", 0))},
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model = model.to_empty(device=device).to(dtype)
    _fill_random_(model)
    return model.eval()


@torch.no_grad()
def build_vae(spec: dict, device: torch.device, dtype: torch.dtype):
    """The Wan VAE (diffusers defaults = the published one) initialised directly on `device`."""
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        vae = AutoencoderKLWan(**spec)
    return vae.to(dtype).eval()


def build_components(args, spec: dict, device: torch.device, dtype: torch.dtype) -> dict:
    from helios.pipeline.tiny import build_scheduler, build_tokenizer

    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    parts = {
        "transformer": build_transformer(spec["transformer"], device, dtype),
        "vae": build_vae(spec["vae"], device, torch.bfloat16 if args.vae_dtype == "bfloat16" else torch.float32),
        "tokenizer": tokenizer,
        "text_encoder": build_text_encoder(spec["text"], len(tokenizer), device, dtype),
        "scheduler": build_scheduler("distilled"),
    }
    sync(device)
    emit(bench="gpu", metric="build", device=device_name(device), preset=args.preset, dtype=str(dtype)[6:],
         seconds=round(time.perf_counter() - t0, 2),
         transformer_params=sum(p.numel() for p in parts["transformer"].parameters()),
         text_encoder_params=sum(p.numel() for p in parts["text_encoder"].parameters()))
    return parts


def make_pipeline(parts: dict, args, spec: dict, steps: list[int], device: torch.device, dtype: torch.dtype,
                  *, first: bool):
    """A stream pipeline over the shared components (decode overlap on: both timings come from it).

    The transformer is shared, so its fast path (compile, FP8) is applied by the first pipeline
    only; later ones repeat just the attention choice (which every pipeline sets).
    """
    from helios.pipeline import HeliosStreamPipeline
    from helios.pipeline.config import build_stream_config

    overrides = {"height": args.height or spec["height"], "width": args.width or spec["width"],
                 "pyramid_steps": steps, "decode_overlap": "on", "vae_dtype": args.vae_dtype}
    fast = fast_options(args)
    if not first:
        fast = {k: v for k, v in fast.items() if k == "attention"}
    if fast:
        overrides["fast"] = fast  # helios.model.fast.FastPathConfig (StreamConfig.fast)
    config = build_stream_config("distilled", {}, overrides)
    return HeliosStreamPipeline(config=config, device=device, dtype=dtype, **parts)


def fast_options(args) -> dict:
    """The transformer fast-path levers asked for on the command line (names of FastPathConfig)."""
    fast = {}
    if args.compile:
        fast["compile"] = True
        if args.compile_mode:
            fast["compile_mode"] = args.compile_mode
    if args.cuda_graphs:
        fast["cuda_graphs"] = True
    if args.attention:
        fast["attention"] = args.attention
    if args.fp8:
        fast["fp8"] = True
    if args.tp_overlap:
        fast["tp_overlap"] = True
    if args.comm_timing:
        fast["comm_timing"] = True
    return fast


# -- timing ------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _tokens(x: torch.Tensor | None, patch: tuple[int, int, int]) -> int:
    if x is None:
        return 0
    return (x.shape[2] // patch[0]) * math.ceil(x.shape[3] / patch[1]) * math.ceil(x.shape[4] / patch[2])


class ForwardTimer:
    """Times every transformer forward (CUDA events on the transformer's stream) and counts its FLOPs."""

    def __init__(self, model, device: torch.device):
        self.model, self.device, self.config = model, device, model.config
        self.records: list[tuple[int, object, object, float]] = []  # (latent height, start, end, flops)
        self._open: list = []
        self._handles = [model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         model.register_forward_hook(self._post, with_kwargs=True)]

    def _mark(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, module, args, kwargs):
        x = kwargs["hidden_states"]
        p = tuple(self.config.patch_size)
        cur = _tokens(x, p)
        hist = (_tokens(kwargs.get("latents_history_short"), p)
                + _tokens(kwargs.get("latents_history_mid"), tuple(2 * v for v in p))
                + _tokens(kwargs.get("latents_history_long"), tuple(4 * v for v in p)))
        text = kwargs["encoder_hidden_states"].shape[1]
        flops = forward_flops(self.config, cur + hist, history_tokens=hist, text_tokens=text).flops_per_forward
        self._open.append((int(x.shape[3]), self._mark(), flops))

    def _post(self, module, args, kwargs, output):
        height, start, flops = self._open.pop()
        self.records.append((height, start, self._mark(), flops))

    def take(self) -> tuple[dict[int, float], float]:
        """{latent height: ms of its forwards} and FLOPs since the last take (syncs the device)."""
        sync(self.device)
        per_stage: dict[int, float] = defaultdict(float)
        flops = 0.0
        for height, start, end, f in self.records:
            ms = start.elapsed_time(end) if self.device.type == "cuda" else (end - start) * 1000.0
            per_stage[height] += ms
            flops += f
        self.records.clear()
        return dict(per_stage), flops

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def run_sync(pipe, chunks: int, timer: ForwardTimer) -> dict:
    """`next_chunk()` one after another: the reference (decode on the critical path)."""
    rows, done_at = [], []
    for _ in range(chunks):
        result = pipe.next_chunk()
        done_at.append(time.perf_counter())
        stages, flops = timer.take()
        rows.append((result.timings_ms, stages, flops))
    return {"rows": rows, "chunk_s": _steady(done_at)}


def run_overlapped(pipe, chunks: int, timer: ForwardTimer) -> dict:
    """Begin chunk n+1 before waiting for chunk n's frames (what HeliosModel does with chunks_in_flight 2)."""
    done_at, pending = [], None
    for _ in range(chunks):
        handle = pipe.begin_chunk()
        if pending is not None:
            pending.result()
            done_at.append(time.perf_counter())
        pending = handle
    pending.result()
    done_at.append(time.perf_counter())
    timer.take()
    return {"chunk_s": _steady(done_at)}


def _steady(done_at: list[float]) -> float:
    """Seconds per chunk between the first and the last chunk's frames (pipeline fill excluded)."""
    if len(done_at) < 2:
        raise ValueError("--chunks: need at least 2 timed chunks")
    return (done_at[-1] - done_at[0]) / (len(done_at) - 1)


def bench_steps(pipe, steps: list[int], args, device: torch.device, peak: float | None) -> None:
    timer = ForwardTimer(pipe.transformer, device)
    try:
        pipe.reset(0)
        pipe.set_prompt(PROMPTS[0])
        for _ in range(args.warmup):
            pipe.next_chunk()
        timer.take()
        sync_run = run_sync(pipe, args.chunks + 1, timer)
        over_run = run_overlapped(pipe, args.chunks + 1, timer)
    finally:
        timer.close()
    rows = sync_run["rows"]
    heights = sorted({h for _, st, _ in rows for h in st})
    stage_ms = {f"stage{i}_{h}x{h * pipe.latent_hw[1] // pipe.latent_hw[0]}": round(
        statistics.median(st.get(h, 0.0) for _, st, _ in rows), 3) for i, h in enumerate(heights)}
    denoise_ms = statistics.median(t["denoise"] for t, _, _ in rows)
    forwards_ms = statistics.median(sum(st.values()) for _, st, _ in rows)
    decode_ms = statistics.median(t["decode"] for t, _, _ in rows)
    flops = statistics.median(f for _, _, f in rows)
    tflops = flops / (denoise_ms / 1000.0) / 1e12
    f = pipe.frames_per_chunk
    emit(bench="gpu", metric="stage", device=device_name(device), preset=args.preset, steps=steps,
         height=pipe.height, width=pipe.width, frames_per_chunk=f, chunks=len(rows),
         text_ms=round(statistics.median(t["text"] for t, _, _ in rows), 3), stage_ms=stage_ms,
         sampler_other_ms=round(denoise_ms - forwards_ms, 3), denoise_ms=round(denoise_ms, 3),
         decode_ms=round(decode_ms, 3), chunk_tflop=float(f"{flops / 1e12:.4g}"), denoise_tflops=float(f"{tflops:.4g}"),
         peak_tflops=peak, mfu=round(tflops / peak, 4) if peak else None)
    s, o = sync_run["chunk_s"], over_run["chunk_s"]
    emit(bench="gpu", metric="overlap", device=device_name(device), preset=args.preset, steps=steps,
         sync_chunk_ms=round(s * 1000, 3), overlapped_chunk_ms=round(o * 1000, 3),
         overlap_gained_ms=round((s - o) * 1000, 3), speedup=round(s / o, 3),
         sync_fps=round(f / s, 3), overlapped_fps=round(f / o, 3),
         end_to_end_tflops=float(f"{flops / o / 1e12:.4g}"),
         end_to_end_mfu=round(flops / o / 1e12 / peak, 4) if peak else None)


def bench_text(pipe, device: torch.device, args) -> None:
    """One new prompt encoded on the caller's stream vs found in the cache (ratio in one run)."""
    prompt = "an unseen prompt about a clockwork city"
    sync(device)
    t0 = time.perf_counter()
    pipe.text._encode(prompt)
    sync(device)
    new_ms = (time.perf_counter() - t0) * 1000.0
    emit(bench="gpu", metric="text", device=device_name(device), preset=args.preset, tokens=pipe.text.max_length,
         encode_ms=round(new_ms, 3), background=pipe.text.background)


def bench_first_frame(pipe, device: torch.device, args) -> None:
    """Warm pipeline, new session: reset, a prompt never seen, chunk 0's frames on the host."""
    out = {}
    for label, prompt in (("new_prompt", PROMPTS[2]), ("cached_prompt", PROMPTS[2])):
        sync(device)
        t0 = time.perf_counter()
        pipe.reset(7)
        pipe.set_prompt(prompt)
        pipe.begin_chunk().result()
        out[f"{label}_s"] = round(time.perf_counter() - t0, 4)
    emit(bench="gpu", metric="first_frame", device=device_name(device), preset=args.preset,
         steps=list(pipe.config.pyramid_steps), **out)


# -- the real app --------------------------------------------------------------------------------


def write_folder(parts: dict, folder: Path, spec: dict) -> Path:
    """The random stack in diffusers layout, so the app's loader reads it like a real checkpoint."""
    import shutil

    from safetensors.torch import save_file

    from helios.pipeline.tiny import make_tiny_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    tiny = make_tiny_pipeline(folder.parent / "tiny-layout", seed=0)
    shutil.copy(tiny / "model_index.json", folder / "model_index.json")
    tdir = folder / "transformer"
    tdir.mkdir(exist_ok=True)
    spec["transformer"].save_json(tdir / "config.json")
    weight_map, shard, size, index = {}, {}, 0, 0
    state = {k: v for k, v in parts["transformer"].state_dict().items()}

    def flush():
        nonlocal shard, size, index
        if shard:
            name = f"diffusion_pytorch_model-{index:05d}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in shard.items()}, str(tdir / name))
            weight_map.update({k: name for k in shard})
            shard, size, index = {}, 0, index + 1

    for key, value in state.items():
        shard[key] = value
        size += value.numel() * value.element_size()
        if size > 4 * 2**30:
            flush()
    flush()
    (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    parts["vae"].save_pretrained(folder / "vae", safe_serialization=True)
    parts["text_encoder"].save_pretrained(folder / "text_encoder", safe_serialization=True)
    parts["tokenizer"].save_pretrained(folder / "tokenizer")
    parts["scheduler"].save_pretrained(folder / "scheduler")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_served(folder: Path, args, device: torch.device, options: dict) -> None:
    """Served FPS through the real app (Ray Serve + HTTP + relay), TP=1 and TP=N GPUs."""
    import httpx
    import ray
    from ray import serve

    from bench_serve import KEY, start_session, watched_fps
    from deployments.app import build_app
    from deployments.config import ServingConfig
    from deployments.naming import NAMESPACE, registry_actor_name
    from served_app import CPU_CLUSTER, local_cluster

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    tps = [1] + ([gpus] if gpus > 1 and 40 % gpus == 0 else [])
    if device.type == "cpu":
        tps = [1]
    port = args.port or _free_port()
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    with local_cluster(**(CPU_CLUSTER if device.type == "cpu" else {})):
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for tp in tps:
            models = {"bench": {"kind": "helios", "path": str(folder), "tp_size": tp, "pool_size": 1,
                                "device": device.type, "dtype": dtype, "lookahead": args.chunks + 2,
                                "options": options, **({"cpus_per_worker": 0.25} if device.type == "cpu" else {})}}
            config = ServingConfig.model_validate({
                "app_name": "helios", "models": models, "session_linger_s": 1,
                "tenants": [{"name": "bench", "api_keys": [KEY], "quota": {"max_concurrent_sessions": 4}}],
                "front_door": {"num_cpus": 0.1, "autoscaling": None}, "relay": {"num_cpus": 0.1, "autoscaling": None},
            })
            serve.run(build_app(config), name="helios", route_prefix="/")
            ray.get(ray.get_actor(registry_actor_name("helios"), namespace=NAMESPACE).wait_warm.remote(1800))
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
            t0 = time.perf_counter()
            body = start_session(http, "bench", PROMPTS[3])
            fps, arr = watched_fps(http, body, args.chunks + 1, join_s=3600)
            emit(bench="gpu", metric="served", device=device_name(device), preset=args.preset, tp=tp,
                 steps=options["pyramid_steps"], served_fps=round(fps, 3), chunks=len(arr),
                 session_to_first_chunk_s=round(arr[0][2] - t0, 3))
            serve.delete("helios")


# -- main ------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", choices=["14b", "tiny"], default=None, help="cuda: 14b, cpu: tiny")
    p.add_argument("--steps", default="1,1,1;2,2,2", help="pyramid steps configs, ';'-separated")
    p.add_argument("--chunks", type=int, default=4, help="timed chunks per measurement (>= 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="cpu: torch threads")
    p.add_argument("--vae-dtype", choices=["float32", "bfloat16"], default=None, help="cuda: bfloat16, cpu: float32")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: from the device name)")
    p.add_argument("--serve", dest="serve", action="store_true", default=True)
    p.add_argument("--no-serve", dest="serve", action="store_false", help="skip the served-FPS runs")
    p.add_argument("--serve-dir", default=None, help="where the random stack is written for the app")
    p.add_argument("--port", type=int, default=None)
    # Transformer fast path (helios.model.fast.FastPathConfig, `StreamConfig.fast`).
    p.add_argument("--compile", action="store_true", help="torch.compile per stage shape, warmed at build")
    p.add_argument("--compile-mode", default=None, help="inductor mode (default | max-autotune)")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--attention", default=None, help="attention backend: auto | sdpa | math | flash | cudnn | fa3 ...")
    p.add_argument("--fp8", action="store_true", help="FP8 GEMMs for the transformer's linears")
    p.add_argument("--tp-overlap", action="store_true", help="overlap the TP all-reduce with the next GEMM")
    p.add_argument("--comm-timing", action="store_true", help="time every TP collective")
    args = p.parse_args(argv)
    args.preset = args.preset or ("14b" if args.device == "cuda" else "tiny")
    args.vae_dtype = args.vae_dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.chunks < 1:
        p.error(f"--chunks: must be >= 1, got {args.chunks}")
    try:
        args.steps_list = [[int(v) for v in part.split(",")] for part in args.steps.split(";") if part.strip()]
    except ValueError:
        p.error(f"--steps: expected e.g. '1,1,1;2,2,2', got {args.steps!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        emit(bench="gpu", status="not measured", reason="no CUDA device visible; run with --device cpu --preset tiny")
        return 2
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = device_name(device)
    peak = args.peak_tflops or next((v for k, v in GPU_PEAK_TFLOPS.items() if k in name), None)
    spec = preset(args.preset)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = build_components(args, spec, device, dtype)
    pipes = []
    for i, steps in enumerate(args.steps_list):
        pipe = make_pipeline(parts, args, spec, steps, device, dtype, first=i == 0)
        pipes.append(pipe)
        bench_steps(pipe, steps, args, device, peak)
    bench_text(pipes[0], device, args)
    bench_first_frame(pipes[0], device, args)
    emit(bench="gpu", metric="memory", device=name, preset=args.preset,
         peak_allocated_gib=round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
         note=None if device.type == "cuda" else "cpu: no device memory counter")
    for pipe in pipes:
        pipe.close()
    if args.serve:
        folder = Path(args.serve_dir or tempfile.mkdtemp(prefix="helios-bench-gpu-")) / f"random-{args.preset}"
        write_folder(parts, folder, spec)
        del parts, pipes
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # Playback at 240 fps (the maximum): the viewer then receives frames as fast as the group makes them.
        options = {"height": args.height or spec["height"], "width": args.width or spec["width"],
                   "pyramid_steps": args.steps_list[0], "vae_dtype": args.vae_dtype, "fps": 240}
        if fast_options(args):
            options["fast"] = fast_options(args)
        bench_served(folder, args, device, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
