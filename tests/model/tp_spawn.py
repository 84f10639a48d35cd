"""Gloo ranks for the TP tests: the parent spawns them on a free port, each rank starts the same way.

A uniquely named module (like model_inputs), so it never collides with another area's helpers on sys.path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(run: Callable[..., None], world: int, checkpoint: Path | str, work: Path, inputs: dict) -> Path:
    """Run `run(rank, world, port, checkpoint, inputs_file, out_dir)` in `world` processes; the folder they wrote to."""
    inputs_file = work / "inputs.pt"
    torch.save(inputs, inputs_file)
    mp.spawn(run, args=(world, free_port(), str(checkpoint), str(inputs_file), str(work)), nprocs=world)
    return work


def rank_start(rank: int, world_size: int, port: int, inputs_file: str, out_dir: str) -> tuple[dict, Path, Any]:
    """In a rank: offline, one thread, the world's TP group over gloo. (inputs, output folder, TPGroup)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from helios.parallel import init_tp_group

    tp = init_tp_group(rank, world_size, master_addr="127.0.0.1", master_port=port, backend="gloo")
    return torch.load(inputs_file), Path(out_dir), tp
