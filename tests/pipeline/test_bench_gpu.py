"""bench/gpu.sh's CPU mode runs the GPU benchmark's code end to end and prints every key.

One subprocess (it starts its own Ray cluster for the served run): tiny model, 64x64, one
pyramid config, one timed chunk. Only the JSON keys and basic consistency are asserted,
never a speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KEYS = {
    "build": {"device", "preset", "dtype", "seconds", "transformer_params", "text_encoder_params"},
    "stage": {"steps", "height", "width", "frames_per_chunk", "text_ms", "stage_ms", "sampler_other_ms",
              "denoise_ms", "decode_ms", "chunk_tflop", "denoise_tflops", "peak_tflops", "mfu"},
    "overlap": {"steps", "sync_chunk_ms", "overlapped_chunk_ms", "overlap_gained_ms", "speedup", "sync_fps",
                "overlapped_fps", "end_to_end_tflops", "end_to_end_mfu"},
    "text": {"tokens", "encode_ms", "background"},
    "first_frame": {"steps", "new_prompt_s", "cached_prompt_s"},
    "memory": {"peak_allocated_gib"},
    "served": {"tp", "steps", "served_fps", "chunks", "session_to_first_chunk_s"},
}


def test_gpu_sh_cpu_mode_prints_every_measurement(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--preset", "tiny", "--steps", "1,1,1",
           "--chunks", "1", "--warmup", "0", "--height", "64", "--width", "64", "--threads", "1",
           "--serve-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_metric = {line["metric"]: line for line in lines}
    assert sorted(by_metric) == sorted(KEYS), [line["metric"] for line in lines]
    for metric, keys in KEYS.items():
        missing = keys - set(by_metric[metric])
        assert not missing, f"{metric}: missing {sorted(missing)}"
    stage, overlap = by_metric["stage"], by_metric["overlap"]
    assert len(stage["stage_ms"]) == 3 and all(v > 0 for v in stage["stage_ms"].values())
    assert stage["decode_ms"] > 0 and stage["chunk_tflop"] > 0 and stage["frames_per_chunk"] == 33
    assert overlap["sync_chunk_ms"] > 0 and overlap["overlapped_chunk_ms"] > 0
    assert by_metric["served"]["tp"] == 1 and by_metric["served"]["served_fps"] > 0
