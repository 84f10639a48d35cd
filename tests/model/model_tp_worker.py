"""Body of one gloo rank for the tensor-parallel tests (run under torch.multiprocessing.spawn).

With 4 ranks it runs the model at TP=4 (the whole world) and at TP=2 (two subgroups passed in
as existing process groups), writing each output to `out_dir` for the parent to compare."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def run(rank: int, world_size: int, port: int, checkpoint: str, inputs_file: str, out_dir: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from helios.model import HeliosTransformer
    from helios.parallel import TPGroup, init_tp_group

    inputs = torch.load(inputs_file)
    out = Path(out_dir)

    tp_world = init_tp_group(rank, world_size, master_addr="127.0.0.1", master_port=port, backend="gloo")
    # every rank creates every subgroup, in the same order (torch.distributed rule)
    pairs = [tdist.new_group(list(range(start, start + 2))) for start in range(0, world_size, 2)]
    groups = {world_size: tp_world, 2: TPGroup.from_process_group(pairs[rank // 2])}
    for size, group in groups.items():
        model = HeliosTransformer.from_pretrained(checkpoint, tp_group=group)
        with torch.no_grad():
            result = model(**inputs)
        torch.save(result, out / f"tp{size}_rank{rank}.pt")
    tdist.barrier()
    tdist.destroy_process_group()
