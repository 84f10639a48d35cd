"""One gloo rank of the TP=2 stream parity test: run CHUNKS chunks, save latents and frames.

Usage: tp_worker.py RANK WORLD PORT PIPELINE_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

CHUNKS = 3
PROMPT = "a red fox running through snow"


def main(rank: int, world: int, port: int, folder: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from helios.model import HeliosTransformer
    from helios.parallel import init_tp_group
    from helios.pipeline import HeliosStreamPipeline

    group = init_tp_group(rank, world, master_addr="127.0.0.1", master_port=port, backend="gloo")
    pipe = HeliosStreamPipeline.from_pretrained(folder, tp_group=group, height=128, width=128, pyramid_steps=[1, 1, 1])
    assert isinstance(pipe.transformer, HeliosTransformer), type(pipe.transformer)
    pipe.reset(11)
    pipe.set_prompt(PROMPT)
    latents, frames = [], []
    for _ in range(CHUNKS):
        result = pipe.next_chunk()
        latents.append(pipe.last_latents.float())
        frames.append(result.frames)
    torch.save({"tp_size": group.world_size, "latents": torch.cat(latents, dim=2), "frames": torch.from_numpy(np.concatenate(frames))},
               Path(out_dir) / f"rank{rank}.pt")
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
