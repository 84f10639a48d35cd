"""Tensor parallelism: TP=2 and TP=4 over gloo processes match diffusers (fp32, <= 1e-5)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from model_inputs import make_inputs

import model_tp_worker

FP32_TOL = 1e-5
WORLD = 4

pytestmark = pytest.mark.tp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tp_outputs(tp_ckpt, tmp_path_factory):
    """Run 4 gloo ranks once: TP=4 on the world group, TP=2 on two existing subgroups."""
    work = tmp_path_factory.mktemp("tp-run")
    inputs_file = work / "inputs.pt"
    torch.save(make_inputs(batch=1), inputs_file)
    mp.spawn(model_tp_worker.run, args=(WORLD, _free_port(), str(tp_ckpt), str(inputs_file), str(work)), nprocs=WORLD)
    return {(size, rank): torch.load(work / f"tp{size}_rank{rank}.pt") for size in (2, 4) for rank in range(WORLD)}


@pytest.mark.parametrize("size", [2, 4])
def test_tp_matches_diffusers(tp_outputs, tp_ckpt, diffusers_ref, size):
    kwargs = make_inputs(batch=1)
    with torch.no_grad():
        expected = diffusers_ref(tp_ckpt)(**kwargs, return_dict=False)[0]
    for rank in range(WORLD):
        got = tp_outputs[(size, rank)]
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= FP32_TOL, f"TP={size} rank {rank}"
