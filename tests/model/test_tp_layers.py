"""TP group handle and parallel layers without processes (world size 1 / argument checks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from helios.model.layers import ColumnParallelLinear, DistributedRMSNorm, RowParallelLinear, divide
from helios.parallel import TPGroup, init_tp_group


def test_tp_group_checks_rank():
    assert TPGroup(1, 2).rank == 1
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, 2\)"):
        TPGroup(2, 2)
    with pytest.raises(ValueError, match="world_size=0"):
        TPGroup(0, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0, world_size=2, backend="mpi"), r"backend='mpi' must be 'gloo' or 'nccl'"),
        (dict(rank=3, world_size=2), r"rank=3 must be in \[0, world_size=2\)"),
        (dict(rank=0, world_size=2, master_port=70000), r"master_port=70000"),
    ],
)
def test_init_tp_group_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        init_tp_group(**kwargs)


def test_from_process_group_needs_initialised_torch_distributed():
    if tdist.is_initialized():
        pytest.skip("torch.distributed initialised by another test in this process")
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        TPGroup.from_process_group(None)


def test_divide_names_the_dimension():
    assert divide(128, 4) == 32
    with pytest.raises(ValueError, match="out_features=130 is not divisible by the tensor-parallel size 4"):
        ColumnParallelLinear(8, 130, tp=TPGroup(0, 4))


def test_layers_at_world_size_one_are_plain_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    col, row, norm = ColumnParallelLinear(8, 12, tp=None), RowParallelLinear(12, 8, tp=None), DistributedRMSNorm(12, eps=1e-6, tp=None)
    for p in [*col.parameters(), *row.parameters(), *norm.parameters()]:
        p.data.normal_()
    y = row(norm(col(x)))
    ref = torch.nn.functional.linear(
        torch.nn.functional.rms_norm(torch.nn.functional.linear(x, col.weight, col.bias), (12,), norm.weight, 1e-6),
        row.weight,
        row.bias,
    )
    assert torch.allclose(y, ref)
    assert "tp=1" in repr(col) and "in_per_rank=12" in repr(row)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_nccl_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="backend='nccl' needs a CUDA device"):
        init_tp_group(0, 2, backend="nccl", master_port=29999)


def test_collective_without_process_group_is_a_clear_error():
    import deepspeed.comm as dscomm

    from helios.parallel import reduce_from_tp_region

    if dscomm.is_initialized():
        pytest.skip("deepspeed.comm initialised by another test in this process")
    with pytest.raises(RuntimeError, match=r"TPGroup\(rank=0, world_size=2\) has no process group"):
        reduce_from_tp_region(torch.ones(2), TPGroup(0, 2))


def test_sequence_parallel_argument_checks():
    from helios.config import HeliosConfig
    from helios.model import HeliosTransformer

    cfg = HeliosConfig.tiny(num_attention_heads=4)
    with pytest.raises(ValueError, match="combining tensor and sequence parallelism is not supported"):
        HeliosTransformer(cfg, tp_group=TPGroup(0, 2), sp_group=TPGroup(0, 2))
    with pytest.raises(ValueError, match="sp_size=3 does not divide num_attention_heads=4"):
        HeliosTransformer(cfg, sp_group=TPGroup(0, 3))
    with torch.device("meta"):
        model = HeliosTransformer(cfg, sp_group=TPGroup(1, 4))
    assert model.blocks[0].attn1.heads_per_rank == 4  # weights stay whole under SP
    assert model.blocks[0].attn1.sp is not None and model.blocks[0].attn2.sp is None


def test_split_sizes_cover_the_sequence():
    from helios.parallel.comm import split_sizes

    assert split_sizes(11040, 8) == [1380] * 8
    assert split_sizes(10, 4) == [3, 3, 2, 2]
