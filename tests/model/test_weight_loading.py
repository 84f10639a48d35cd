"""Per-rank slicing loader: each rank materialises exactly its slice; bad checkpoints fail clearly."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from helios.config import HeliosConfig
from helios.model import HeliosTransformer
from helios.parallel import TPGroup
from helios.weights import CheckpointIndex, from_pretrained

TP = 4


@pytest.fixture(scope="module")
def full_tensors(tp_ckpt) -> dict[str, torch.Tensor]:
    index = CheckpointIndex(tp_ckpt)
    assert len(index.files) > 1  # really a sharded save_pretrained checkpoint
    return {name: src[:] for name, src in index.slices()}


@pytest.fixture(scope="module")
def rank_loads(tp_ckpt):
    return [from_pretrained(tp_ckpt, tp_group=TPGroup(rank, TP), return_report=True) for rank in range(TP)]


def test_each_rank_holds_exactly_its_slice(rank_loads, full_tensors):
    for rank, (model, _) in enumerate(rank_loads):
        for name, param in model.named_parameters():
            full = full_tensors[name]
            if param.shard_dim is None:
                expected = full
            else:
                expected = full.chunk(TP, dim=param.shard_dim)[rank]
            assert param.shape == expected.shape, name
            assert torch.equal(param, expected), f"rank {rank} {name}"


def test_rank_bytes_add_up_to_sharded_plus_replicated(rank_loads, full_tensors):
    model0 = rank_loads[0][0]
    sharded = sum(full_tensors[n].numel() for n, p in model0.named_parameters() if p.shard_dim is not None)
    replicated = sum(full_tensors[n].numel() for n, p in model0.named_parameters() if p.shard_dim is None)
    assert sharded + replicated == sum(t.numel() for t in full_tensors.values())
    assert sharded > replicated / 4  # the test would be vacuous with nothing sharded
    per_rank_numel = [sum(p.numel() for p in m.parameters()) for m, _ in rank_loads]
    assert sum(per_rank_numel) == sharded + TP * replicated
    for (model, report), numel in zip(rank_loads, per_rank_numel):
        assert report.bytes_read == numel * 4  # fp32 checkpoint: a rank reads only its own bytes
        assert sorted(report.loaded) == sorted(n for n, _ in model.named_parameters())


def test_rank_holds_quarter_of_attention(rank_loads):
    model = rank_loads[1][0]
    attn = model.blocks[0].attn1
    assert attn.heads_per_rank == 1
    assert attn.to_q.weight.shape == (32, 128)
    assert attn.to_out[0].weight.shape == (128, 32)
    assert attn.norm_q.weight.shape == (32,)
    assert attn.history_key_scale.shape == (1,)
    assert model.blocks[0].ffn.net[0].proj.weight.shape == (32, 128)
    assert model.proj_out.weight.shape == (64, 128)  # replicated


def test_tp_size_not_dividing_heads(tp_ckpt):
    with pytest.raises(ValueError, match=r"tp_size=3 does not divide num_attention_heads=4"):
        from_pretrained(tp_ckpt, tp_group=TPGroup(0, 3))
    with pytest.raises(ValueError, match=r"tp_size=8 does not divide num_attention_heads=4"):
        HeliosTransformer(HeliosConfig.tiny(num_attention_heads=4), tp_group=TPGroup(0, 8))


def _edited_copy(src, dst, edit) -> None:
    shutil.copytree(src, dst)
    file = dst / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_is_named(tiny_ckpt, tmp_path):
    _edited_copy(tiny_ckpt, tmp_path / "ckpt", lambda t: t.pop("blocks.1.attn2.to_v.bias"))
    with pytest.raises(ValueError, match=r"missing tensors \['blocks.1.attn2.to_v.bias'\]"):
        from_pretrained(tmp_path / "ckpt")


def test_misshaped_tensor_is_named(tiny_ckpt, tmp_path):
    def edit(t):
        t["blocks.0.ffn.net.2.weight"] = torch.zeros(64, 100)

    _edited_copy(tiny_ckpt, tmp_path / "ckpt", edit)
    with pytest.raises(ValueError, match=r"blocks.0.ffn.net.2.weight: shape \[64, 100\] in checkpoint, expected \[64, 128\]"):
        from_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"blocks.0.ffn.net.2.weight: shape \[64, 100\] in checkpoint, expected \[64, 128\]") as info:
        from_pretrained(tmp_path / "ckpt", tp_group=TPGroup(1, 2))
    assert "missing" not in str(info.value)


def test_unexpected_tensor_is_named_and_diffusers_ignores_are_ignored(tiny_ckpt, tmp_path):
    def edit(t):
        t["blocks.0.extra.weight"] = torch.zeros(3)
        t["blocks.0.attn2.norm_added_q.weight"] = torch.zeros(3)

    _edited_copy(tiny_ckpt, tmp_path / "ckpt", edit)
    with pytest.raises(ValueError, match=r"unexpected tensors \['blocks.0.extra.weight'\]"):
        from_pretrained(tmp_path / "ckpt")


def test_missing_folder_and_files(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError, match="no transformer config.json"):
        from_pretrained(tmp_path)
    shutil.copy(tiny_ckpt / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="no diffusion_pytorch_model.safetensors"):
        from_pretrained(tmp_path)


def test_pipeline_folder_layout_and_device_dtype(tiny_ckpt, tmp_path):
    shutil.copytree(tiny_ckpt, tmp_path / "pipe" / "transformer")
    model = from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert not any(p.is_meta or p.requires_grad for p in model.parameters())


def test_dtype_and_device_arguments(tiny_ckpt):
    assert from_pretrained(tiny_ckpt, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype='int8' must be one of"):
        from_pretrained(tiny_ckpt, dtype="int8")
    with pytest.raises(ValueError, match=r"device='nowhere' is not a valid torch device"):
        from_pretrained(tiny_ckpt, device="nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' requested but CUDA is not available"):
            from_pretrained(tiny_ckpt, device="cuda")


def test_tiny_checkpoint_has_no_untouched_parameter(full_tensors, tiny_ckpt):
    tiny = {name: src[:] for name, src in CheckpointIndex(tiny_ckpt).slices()}
    for name, tensor in {**full_tensors, **tiny}.items():
        assert tensor.numel() == 1 or tensor.unique().numel() > tensor.numel() // 2, f"{name} is not random"
        assert not torch.all(tensor == 1) and not torch.all(tensor == 0), f"{name} kept its initial value"


def test_load_weights_from_a_full_state_dict_keeps_the_rank_slice(full_tensors):
    model = HeliosTransformer(HeliosConfig.tiny(num_attention_heads=4, is_amplify_history=True), tp_group=TPGroup(1, 2))
    loaded = model.load_weights(full_tensors.items())
    assert len(loaded) == len(full_tensors)
    assert torch.equal(model.blocks[1].attn2.to_k.weight, full_tensors["blocks.1.attn2.to_k.weight"][64:])
    assert torch.equal(model.blocks[1].ffn.net[2].weight, full_tensors["blocks.1.ffn.net.2.weight"][:, 64:])
