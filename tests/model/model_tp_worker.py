"""Body of one gloo rank for the tensor-parallel tests (run under torch.multiprocessing.spawn).

With 4 ranks it runs the model at TP=4 (the whole world, fp32) and at TP=2 (two subgroups passed
in as existing process groups, fp32 and bf16; and the same subgroups passed as plain
torch.distributed ProcessGroups), writing each output to `out_dir` for the parent to compare,
plus what `init_tp_group` did when called again on the initialised world."""

from __future__ import annotations

import json

import torch
from tp_spawn import rank_start


def run(rank: int, world_size: int, port: int, checkpoint: str, inputs_file: str, out_dir: str) -> None:
    inputs, out, tp_world = rank_start(rank, world_size, port, inputs_file, out_dir)
    import torch.distributed as tdist

    from helios.parallel import TPGroup, init_tp_group
    from helios.weights import from_pretrained

    again = init_tp_group(rank, world_size, master_addr="127.0.0.1", master_port=port)
    try:
        init_tp_group((rank + 1) % world_size, world_size, master_addr="127.0.0.1", master_port=port)
        mismatch = "no error"
    except ValueError as exc:
        mismatch = str(exc)
    from helios.parallel import gather_from_tp_region

    gathered = gather_from_tp_region(torch.full((1, 2), float(rank)), tp_world, dim=1)
    checks = {"again": [again.rank, again.world_size], "mismatch": mismatch, "gathered": gathered.tolist()}
    (out / f"checks_rank{rank}.json").write_text(json.dumps(checks))

    # every rank creates every subgroup, in the same order (torch.distributed rule)
    pairs = [tdist.new_group(list(range(start, start + 2))) for start in range(0, world_size, 2)]
    tp_pair = TPGroup.from_process_group(pairs[rank // 2])
    runs = {
        "tp4_fp32": (tp_world, None, torch.float32),
        "tp2_fp32": (tp_pair, None, torch.float32),
        "tp2_bf16": (tp_pair, None, torch.bfloat16),
        "sp4_fp32": (None, tp_world, torch.float32),
        "sp2_fp32": (None, tp_pair, torch.float32),
        "tp2pg_fp32": (pairs[rank // 2], None, torch.float32),  # plain ProcessGroup, wrapped by the model
        "sp2pg_fp32": (None, pairs[rank // 2], torch.float32),
    }
    groups = {}
    for tag, (group, sp_group, dtype) in runs.items():
        model = from_pretrained(checkpoint, tp_group=group, sp_group=sp_group, dtype=dtype)
        held = model.tp_group or model.sp_group
        groups[tag] = [type(held).__name__, held.rank, held.world_size]
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.no_grad():
            result = model(**cast)
        torch.save(result, out / f"{tag}_rank{rank}.pt")
    (out / f"groups_rank{rank}.json").write_text(json.dumps(groups))
    tdist.barrier()
    tdist.destroy_process_group()
