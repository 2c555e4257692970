"""Activation cache: SAELens's cached-activations format, resumable shards, 2 gloo ranks == 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from _crash import DRIVER, arm
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
)
from typer.testing import CliRunner

from sae_rad_ext.activations.cache import cache_activations, load_cache_positions, read_cache_info
from sae_rad_ext.cli.app import app

HOOK = "blocks.1.hook_resid_post"
CTX = 16
N_STUDIES = 8
ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, name: str) -> Path:
    cfg = {
        "model": {"name": "tiny", "seed": 0},
        "data": {"phantom": {"n": N_STUDIES, "seed": 7, "image_size": 112}},
        "positions": {"select": "maira2_sae_paper_with_images"},
        "runner": {"hook_name": HOOK, "context_size": CTX, "store_batch_size_prompts": 2},
        "cache": {"path": str(tmp_path / name), "studies_per_shard": 3},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli_cache(cfg: Path) -> None:
    res = CliRunner().invoke(app, ["cache", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)


def _rows(path: Path) -> dict[tuple[str, int], torch.Tensor]:
    """(study_id, position) -> [acts..., token_id, role, image_slot, patch_row, patch_col]."""
    p = load_cache_positions(path)
    keys = list(zip(p["study_id"], p["position"].tolist(), strict=True))
    assert len(set(keys)) == len(keys), "duplicated positions"
    meta = torch.stack(
        [p[c].double() for c in ("token_ids", "role", "image_slot", "patch_row", "patch_col")], 1
    )
    return dict(zip(keys, torch.cat([p["acts"].double(), meta], 1), strict=True))


def _same_rows(a: Path, b: Path, exact: bool = True) -> None:
    """Same set of positions with the same roles; activations bit-equal (same process) or within float
    noise (another process may use another thread count, so another summation order)."""
    ra, rb = _rows(a), _rows(b)
    assert set(ra) == set(rb)
    keys = sorted(ra)
    xa, xb = torch.stack([ra[k] for k in keys]), torch.stack([rb[k] for k in keys])
    assert torch.equal(xa[:, -5:], xb[:, -5:])
    assert torch.equal(xa, xb) if exact else torch.allclose(xa, xb, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    _cli_cache(_config(tmp, "c1"))
    return tmp / "c1"


def test_format_is_saelens_cached_activations(reference):
    ds = datasets.load_from_disk(str(reference))
    assert ds.features[HOOK].shape == (CTX, 128)
    assert {
        "token_ids",
        "study_id",
        "study_index",
        "position",
        "role",
        "image_slot",
        "patch_row",
        "patch_col",
    } <= set(ds.column_names)
    info = read_cache_info(reference)
    assert (
        info["complete"] and info["hook_name"] == HOOK and info["positions"] == "maira2_sae_paper_with_images"
    )
    assert info["model_name"] == "tiny-maira2" and info["n_studies"] == N_STUDIES
    assert info["n_positions"] == len(ds) * CTX + info["n_remainder"] and info["n_remainder"] < CTX
    assert {"image:frontal", "report"} <= set(info["role_norms"])
    rows = _rows(reference)
    assert {k[0] for k in rows} == {f"phantom-7-{i}" for i in range(N_STUDIES)}  # every study, once
    assert not (reference / ".shards").exists()


def test_resume_after_crash_gives_identical_rows(tmp_path, reference):
    from sae_rad_ext.adapters.hooked import HookedMaira2

    from sae_rad_ext.data.phantom.generator import generate_studies

    model = HookedMaira2.tiny(seed=0)
    kw = dict(context_size=CTX, positions="maira2_sae_paper_with_images", batch_size=2, studies_per_shard=3)
    studies = lambda: generate_studies(N_STUDIES, 7, image_size=112)  # noqa: E731
    out = tmp_path / "c"

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    def crashing_run(point: str, n: int) -> None:
        disarm = arm(point, n, crash)
        try:
            with pytest.raises(Crash):
                cache_activations(model, studies, out, HOOK, **kw)
        finally:
            disarm()

    crashing_run("recorded", 2)  # crash right after the 2nd shard is recorded
    assert len(json.loads((out / ".shards" / "manifest-rank0.json").read_text())["shards"]) == 2
    crashing_run("partial", 1)  # crash while the next shard is half-written
    assert (out / ".shards" / "shard_000002.partial").exists()
    assert not (out / ".shards" / "shard_000002").exists()
    result = cache_activations(model, studies, out, HOOK, **kw)
    assert result.shards_written == 1  # only the missing shard was redone
    _same_rows(reference, out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, SAE_RAD_DIST_BACKEND="gloo", OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.update(extra)
    return env


def test_two_gloo_ranks_equal_one_process(tmp_path, reference):
    cfg = _config(tmp_path, "c2")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "sae_rad_ext",
        "cache",
        str(cfg),
        "--quiet",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifests = list((tmp_path / "c2").glob(".shards/manifest-rank*.json"))
    assert not manifests  # merged and cleaned up
    _same_rows(reference, tmp_path / "c2", exact=False)


@pytest.mark.slow
def test_sigkill_mid_cache_then_rerun(tmp_path, reference):
    """`sae-rad cache` SIGKILLed after a recorded shard, then mid-shard; the rerun finishes the same cache."""
    cfg = _config(tmp_path, "c3")
    args = ["cache", str(cfg), "--quiet"]
    tests = str(Path(__file__).resolve().parents[1])
    for point, n in (("recorded", 2), ("partial", 1)):
        driver = DRIVER.format(tests=tests, point=point, n=n)
        res = subprocess.run(
            [sys.executable, "-c", driver, *args], cwd=tmp_path, env=_env(), capture_output=True, timeout=600
        )
        assert res.returncode == -9, res.stderr[-2000:]
    shards = tmp_path / "c3" / ".shards"
    assert len(json.loads((shards / "manifest-rank0.json").read_text())["shards"]) == 2
    assert (shards / "shard_000002.partial").exists()
    cmd = [sys.executable, "-m", "sae_rad_ext", *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _same_rows(reference, tmp_path / "c3", exact=False)


def test_stock_runner_reads_the_cache(tmp_path, reference):
    """The bare SAELens runner trains from our cache with use_cached_activations=True."""
    from datasets import Dataset
    from sae_rad_ext.adapters.hooked import HookedMaira2

    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=128, d_sae=64),
        hook_name=HOOK,
        context_size=CTX,
        use_cached_activations=True,
        cached_activations_path=str(reference),
        store_batch_size_prompts=4,
        n_batches_in_buffer=4,
        train_batch_size_tokens=32,
        training_tokens=32 * 20,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(tmp_path / "sae"),
        verbose=False,
    )
    # evals are off; the stock store still wants a token dataset beside the cache
    runner = LanguageModelSAETrainingRunner(
        cfg,
        override_model=HookedMaira2.tiny(seed=0),
        override_dataset=Dataset.from_dict({"tokens": [[0] * CTX]}),
    )
    runner.run()
    assert (tmp_path / "sae" / "cfg.json").exists()
    first = runner.activations_store.cached_activation_dataset
    assert first is not None and first.features[HOOK].shape == (CTX, 128)


def test_sae_rad_train_from_cache(tmp_path, reference):
    cfg = {
        "model": {"name": "tiny"},
        "data": {"phantom": {"n": 4, "seed": 7, "image_size": 112}},
        "positions": "maira2_sae_paper_with_images",
        "cache": {"path": str(reference)},
        "runner": {
            "hook_name": HOOK,
            "context_size": CTX,
            "use_cached_activations": True,
            "sae": {"architecture": "standard", "d_sae": 64},
            "store_batch_size_prompts": 4,
            "n_batches_in_buffer": 4,
            "train_batch_size_tokens": 32,
            "training_tokens": 640,
            "logger": {"log_to_wandb": False},
            "checkpoint_path": None,
            "output_path": str(tmp_path / "out"),
            "verbose": False,
        },
    }
    p = tmp_path / "t.json"
    p.write_text(json.dumps(cfg))
    res = CliRunner().invoke(app, ["train", str(p), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    md = json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]
    assert md["cached_activations_path"] == str(reference)
    assert (
        md["position_selection"] == "maira2_sae_paper_with_images" and md["role_norms"]["report"]["count"] > 0
    )
