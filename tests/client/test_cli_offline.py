"""CLI pieces that need no server: check, timelines, argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helios.client import cli
from helios.client.check import count_parameters, preset_config, tp_plan
from helios.client.timeline import load_timeline


def test_check_counts_match_the_diffusers_reference_model():
    """Our per-config count equals the parameters of diffusers' Helios built on the meta device."""
    import torch
    from diffusers.models.transformers.transformer_helios import HeliosTransformer3DModel

    cfg = preset_config("tiny")
    keys = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "has_multi_term_memory_patch")
    rope = {"rope_dim": (12, 10, 10)} if cfg["attention_head_dim"] == 32 else {}
    with torch.device("meta"):
        ref = HeliosTransformer3DModel(**{k: cfg[k] for k in keys}, **rope)
    assert count_parameters(cfg)["total"] == sum(p.numel() for p in ref.parameters())
    assert count_parameters(preset_config("14b"))["total"] == 14_312_427_584


def test_check_reports_the_model_areas_accounting():
    # No fallback count: a broken helios.accounting fails here instead of being skipped.
    from helios.accounting import count_params
    from helios.config import HeliosConfig

    for tp in (1, 4):
        exact = count_params(HeliosConfig.helios_14b(), tp)
        ours = count_parameters(preset_config("14b"), tp)
        plan = tp_plan(preset_config("14b"), tp)
        assert (exact.params_total, exact.params_per_rank, exact.params_replicated) == \
            (ours["total"], ours["per_rank"], ours["replicated"])
        assert (plan["params_total"], plan["params_per_rank"], plan["params_source"]) == \
            (exact.params_total, exact.params_per_rank, "helios.accounting")


def test_tp_plan_shards_and_rejects_bad_sizes():
    cfg = preset_config("14b")
    p1, p4 = tp_plan(cfg, 1), tp_plan(cfg, 4)
    assert p4["heads_per_rank"] == 10 and p4["tokens_per_forward"] == 11_040
    assert p4["allreduces_per_forward"] == 120 and p4["allreduce_mb"] == pytest.approx(113.0, abs=0.1)
    # Sharded weights split 4 ways, replicated ones do not.
    assert p4["params_per_rank"] - p4["params_replicated"] == (p1["params_per_rank"] - p1["params_replicated"]) // 4
    assert p1["weights_gib_per_rank"] == pytest.approx(26.66, abs=0.01)
    with pytest.raises(ValueError, match="tp: 3"):
        tp_plan(cfg, 3)


def test_helios_check_cli(capsys):
    assert cli.main(["check", "--preset", "14b", "--tp", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["tp"] == 4 and report["device"]["device"] in ("cpu", "cuda")
    assert cli.main(["check", "--preset", "14b", "--tp", "4"]) == 0
    assert "TP plan:  4 ranks" in capsys.readouterr().out
    assert cli.main(["check", "--preset", "huge"]) == 2
    assert "preset" in capsys.readouterr().err


def test_timeline_parsing_and_errors(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"x")
    good = tmp_path / "t.yaml"
    good.write_text("model: test-pattern\ntimeline:\n  0: a cat\n  2: {prompt: a dog}\n  3: {image: cat.png, transition: blend}\n")
    tl, base = load_timeline(good)
    assert base == tmp_path and tl.model == "test-pattern" and tl.total_chunks == 5
    assert [tl.prompt_at(c) for c in range(5)] == ["a cat", "a cat", "a dog", "a dog", "a dog"]
    cases = {
        "timeline:\n  1: a cat\n": "chunk 0 needs a prompt",
        "timeline:\n  0: a cat\n  2: {}\n": "needs a prompt, an image",
        "timeline:\n  0: a cat\n  2: {image: missing.png}\n": "timeline.2.image",
        "timeline:\n  0: a cat\n  -1: x\n": ">= 0",
        "timeline:\n  0: {prompt: a, colour: red}\n": "colour",
        "timeline: [1, 2]\n": "timeline",
        "timeline: {0: [unclosed\n": "not valid YAML",
    }
    for text, expected in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=expected.replace(".", r"\.").replace("(", r"\(")):
            load_timeline(bad)


def test_cli_reports_bad_input_without_a_traceback(capsys, tmp_path):
    assert cli.main(["generate", "--prompt", "x", "--chunks", "0", "--url", "http://127.0.0.1:9"]) == 2
    assert "--chunks" in capsys.readouterr().err
    assert cli.main(["play", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert cli.main(["session", "command", "sid", "set_seed", "seed", "--url", "http://127.0.0.1:9"]) == 2
    assert "key=value" in capsys.readouterr().err
    # No server listening: a clear one-line error, exit 1.
    assert cli.main(["session", "get", "sid", "--url", "http://127.0.0.1:9", "--api-key", "k"]) == 1
    assert "error:" in capsys.readouterr().err


def test_helios_serve_runs_the_readme_command(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: calls.append(argv))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert cli.main(["serve"]) == 0
    (argv,) = calls
    assert Path(argv[0]).name == "serve" and argv[1:] == ["run", "serve_config.yaml"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve"]) == 2
    assert "serve_config.yaml" in capsys.readouterr().err
