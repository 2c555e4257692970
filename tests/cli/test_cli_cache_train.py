"""sae-rad cache / train: --help documents every field, the template round-trips, a tiny end-to-end train."""

from __future__ import annotations

import dataclasses
import json
import re

import yaml
from sae_lens import LanguageModelSAERunnerConfig
from typer.testing import CliRunner

from sae_rad_ext.cli.app import app
from sae_rad_ext.training.run_config import SECTIONS, load_config


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m|[│╭╮╰╯─]", " ", text))


def test_help_documents_every_field():
    runner = CliRunner()
    out = _plain(runner.invoke(app, ["train", "--help"], terminal_width=200).output)
    for section, fields in SECTIONS.items():
        assert f"{section}:" in out
        for name in fields:
            assert f"{name} (default" in out, name
    for f in dataclasses.fields(LanguageModelSAERunnerConfig):
        assert f"{f.name} (default" in out, f.name
    assert "--resume" in out and "--print-config-template" in out
    cache_out = _plain(runner.invoke(app, ["cache", "--help"], terminal_width=200).output)
    assert "torchrun" in cache_out and "studies_per_shard (default" in cache_out


def test_config_template_loads(tmp_path):
    res = CliRunner().invoke(app, ["train", "--print-config-template"])
    assert res.exit_code == 0
    parsed = yaml.safe_load(res.output)
    assert set(parsed) == {"model", "data", "positions", "cache", "runner"}
    p = tmp_path / "t.yaml"
    p.write_text(res.output)
    cfg = load_config(p)
    assert cfg["runner"]["hook_name"] == "blocks.15.hook_resid_post"
    assert cfg["runner"]["sae"]["architecture"] == "rad_matryoshka_batchtopk"


def test_unknown_fields_are_rejected(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"data": {"phantom": {"n": 2}, "sourse": "x"}}))
    res = CliRunner().invoke(app, ["train", str(p)])
    (line,) = res.stderr.strip().splitlines()  # one line, no traceback
    assert res.exit_code == 2 and line.startswith(f"error: {p}: ") and "'sourse'" in line


def _train_config(tmp_path, steps: int = 20) -> dict:
    return {
        "model": {"name": "tiny", "seed": 0},
        "data": {"phantom": {"n": 6, "seed": 1, "image_size": 112}},
        "positions": {"select": "maira2_sae_paper_with_images"},
        "runner": {
            "hook_name": "blocks.1.hook_resid_post",
            "sae": {
                "architecture": "batchtopk",
                "d_sae": 128,
                "k": 8,
                "normalize_activations": "expected_average_only_in",
            },
            "context_size": 128,
            "store_batch_size_prompts": 3,
            "n_batches_in_buffer": 4,
            "train_batch_size_tokens": 64,
            "training_tokens": 64 * steps,
            "n_batches_for_norm_estimate": 2,
            "logger": {"log_to_wandb": False},
            "n_checkpoints": 1,
            "checkpoint_path": str(tmp_path / "ckpt"),
            "output_path": str(tmp_path / "out"),
            "verbose": False,
        },
    }


def test_sae_rad_train_end_to_end_and_resume(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(_train_config(tmp_path)))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(p)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "image:frontal" in res.output and "tok/s" in res.output
    md = json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]
    assert md["hook_name"] == "blocks.1.hook_resid_post" and md["model_name"] == "tiny-maira2"
    assert md["position_selection"] == "maira2_sae_paper_with_images"
    assert md["dataset_path"].startswith("phantom:n=6")
    ckpts = sorted((tmp_path / "ckpt").glob("*/*/trainer_state.pt"))
    assert ckpts
    # the checkpoint was written with fused Adam (the default); SAELens's own optimizer resumes from it
    res = runner.invoke(app, ["train", str(p), "--resume", "--quiet", "--optimizer", "stock"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert f"resuming from {ckpts[-1].parent}" in res.output


def test_train_rejects_an_unknown_optimizer(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(_train_config(tmp_path)))
    res = CliRunner().invoke(app, ["train", str(p), "--optimizer", "sgd"])
    out = " ".join(res.output.replace("│", " ").split())  # rich may wrap the error box
    assert res.exit_code == 2 and "expected one of fused_adam, stock, got 'sgd'" in out


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "train.yaml"
    p.write_text(yaml.safe_dump(_train_config(tmp_path)))
    res = CliRunner().invoke(app, ["train", str(p), "--resume", "--quiet"])
    assert res.exit_code != 0 and "no checkpoint" in res.output
