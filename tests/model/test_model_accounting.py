"""Parameter, memory and FLOPs accounting (meta device: nothing allocated)."""

from __future__ import annotations

import json

import pytest
import torch

from helios.accounting import count_params, forward_flops, main
from helios.config import HeliosConfig

HELIOS_14B_PARAMS = 14_312_427_584


@pytest.fixture(scope="module")
def tp4_report():
    return count_params(HeliosConfig.helios_14b(), tp=4, dtype=torch.bfloat16)


def test_14b_parameter_count_on_meta(tp4_report):
    assert tp4_report.params_total == HELIOS_14B_PARAMS


def test_14b_per_rank_split(tp4_report):
    sharded_total = HELIOS_14B_PARAMS - tp4_report.params_replicated
    assert tp4_report.params_per_rank == sharded_total // 4 + tp4_report.params_replicated
    # bf16 except the fp32-kept modules (time embedder, adaLN tables, norms)
    assert 2 * tp4_report.params_per_rank < tp4_report.bytes_per_rank < 2.1 * tp4_report.params_per_rank


def test_14b_full_resolution_flops_match_design():
    flops = forward_flops(HeliosConfig.helios_14b(), 11040, tp=4)
    assert flops.current_tokens == 8640
    assert 355e12 < flops.flops_per_forward < 365e12  # DESIGN: ~360 TFLOP
    assert flops.flops_per_forward / 4 < flops.flops_per_rank < flops.flops_per_forward / 3.9
    # 3 activation all-reduces per block, ~113 MB each in bf16 at 11,040 tokens
    assert flops.allreduce_payload_bytes == 40 * (2 * 11040 + 8640) * 5120 * 2


def test_cli_json(capsys):
    assert main(["--preset", "tiny", "--tp", "2", "--dtype", "fp32", "--tokens", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tp"] == 2 and out["params_per_rank"] < out["params_total"]
    assert out["bytes_per_rank"] == 4 * out["params_per_rank"]


def test_cli_bad_tp(capsys):
    assert main(["--preset", "14b", "--tp", "3"]) == 2
    assert "tp_size=3 does not divide num_attention_heads=40" in capsys.readouterr().err


def test_ulysses_sp_accounting():
    cfg = HeliosConfig.helios_14b()
    full = forward_flops(cfg, 11040)
    sp8 = forward_flops(cfg, 11040, sp=8)
    assert full.flops_per_forward == sp8.flops_per_forward
    assert full.flops_per_forward / 8 < sp8.flops_per_rank < full.flops_per_forward / 7.5
    # per block: q, k, v and the output, 1380 tokens x 5120 bf16 each, 7/8 of it leaves the rank
    assert sp8.alltoall_payload_bytes == 40 * 4 * 1380 * 5120 * 2 * 7 // 8
    with pytest.raises(ValueError, match="combining tensor and sequence parallelism"):
        forward_flops(cfg, 11040, tp=2, sp=2)
    with pytest.raises(ValueError, match="sp=3 must be >= 1 and divide num_attention_heads=40"):
        forward_flops(cfg, 11040, sp=3)
