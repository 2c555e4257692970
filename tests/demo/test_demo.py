"""`sae-rad demo --quick` end to end, the trained-model cache, and the phantom benchmark's measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.demo.tiny_training import TinyModelConfig, cached_tiny_maira2, patch_targets
from sae_rad_ext.evaluation.phantom_benchmark import best_latent_f1, evaluate_reports, probe_f1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "SAE_RAD_EXT_CACHE": str(out / "cache")}
    cmd = [sys.executable, "-m", "sae_rad_ext", "demo", "--quick", "--out", str(out / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "run" / "summary.json").read_text()), proc.stdout


def test_quick_demo_summary(quick_run):
    out, s, stdout = quick_run
    for key in (
        "config",
        "data",
        "model",
        "reports",
        "layers",
        "sae",
        "timings_s",
        "skipped_stages",
        "publish",
    ):
        assert key in s, key
    assert s["data"]["n_train"] > 0 and s["data"]["n_test"] > 0
    rep = s["reports"]
    assert rep["n_studies"] > 0 and set(rep["f1"]) == set(FINDINGS)
    assert all(v is None or 0.0 <= v <= 1.0 for v in rep["f1"].values())
    assert all(v is None or 0.0 <= v <= 1.0 for v in rep["reference_f1"].values())
    layers = s["layers"]
    assert list(layers) == [f"blocks.{i}.hook_resid_post" for i in range(len(layers))]
    for v in layers.values():
        assert set(v["probe_f1"]) == set(FINDINGS) and set(v["best_latent_f1"]) == set(FINDINGS)
    sae = s["sae"]
    n_levels = len(sae["level_ends"])
    assert n_levels == 4 and len(sae["explained_variance"]) == n_levels and len(sae["l0"]) == n_levels
    assert all(a <= b + 1e-6 for a, b in zip(sae["l0"], sae["l0"][1:], strict=False))  # nested levels
    assert (
        sae["hook_name"] == "blocks.1.hook_resid_post" and sae["positions"] == "maira2_sae_paper_with_images"
    )
    assert s["timings_s"]["total"] > 0 and {"data", "model", "sae"} <= set(s["timings_s"])
    assert "Stage timings" in stdout  # the printed summary
    assert not s.get("failed_stages"), s.get("failed_stages")


def test_quick_demo_outputs_load(quick_run):
    from sae_lens import SAE
    from sae_rad_ext.adapters.loading import load_maira2

    from sae_rad_ext import RadMatryoshkaSAE

    out, s, _ = quick_run
    run = out / "run"
    sae = SAE.load_from_disk(str(run / "sae"))
    assert isinstance(sae, RadMatryoshkaSAE) and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    model, tok = load_maira2(run / "model")
    assert tok is not None and model.config.vision_config.image_size == 128
    assert (run / "data" / "mimic" / "mimic-cxr-2.0.0-metadata.csv").exists()
    assert (run / "reports" / "generated_test_reports.jsonl").exists()
    # the trained model is cached: same config -> no training (the train factory must not be called)
    info = json.loads((run / "model" / "training.json").read_text())
    cfg = TinyModelConfig(**info["config"])

    def no_train():
        raise AssertionError("cache miss: training was called")

    res = cached_tiny_maira2(cfg, no_train, cache_dir=out / "cache")
    assert not res.trained and res.path.name == f"tiny-maira2-{cfg.key()}"
    assert TinyModelConfig(**{**info["config"], "lm_epochs": 2.0}).key() != cfg.key()


def test_quick_demo_release_sae_is_the_release_folder(quick_run):
    """summary.json's publish.release_sae is the SAE's folder inside the release (it once held a repr)."""
    from sae_lens import SAE

    from sae_rad_ext import RadMatryoshkaSAE

    out, s, _ = quick_run
    pub = s["publish"]
    folder = Path(pub["release_sae"])
    assert folder.is_dir(), pub["release_sae"]
    assert folder.parent == Path(pub["release"]) == out / "run" / "release"
    for name in ("cfg.json", "sae_weights.safetensors", "release_info.json"):
        assert (folder / name).is_file(), name
    loaded = SAE.load_from_disk(str(folder))
    trained = SAE.load_from_disk(str(out / "run" / "sae"))
    assert isinstance(loaded, RadMatryoshkaSAE) and loaded.cfg.d_sae == trained.cfg.d_sae
    assert torch.equal(loaded.W_dec, trained.W_dec)


def test_patch_targets_follow_masks():
    s = next(iter(generate_studies(1, seed=3, image_size=64, finding_probs={"pleural_effusion": 1.0})))
    t = patch_targets(s, grid=4, threshold=0.02)
    m = s.metadata["masks"]["frontal"]["pleural_effusion"].astype(float)
    cover = m.reshape(4, 16, 4, 16).mean((1, 3)).ravel()
    j = FINDINGS.index("pleural_effusion")
    assert t.shape == (16, len(FINDINGS)) and t[:, j].sum() > 0
    np.testing.assert_array_equal(t[:, j], (cover > 0.02).astype(np.float32))


def test_evaluate_reports_on_true_reports_is_the_labeler_ceiling():
    studies = list(generate_studies(12, seed=5, image_size=64, lateral_prob=0, prior_prob=0))
    ev = evaluate_reports([s.report for s in studies], studies)
    assert ev.f1 == ev.reference_f1
    empty = evaluate_reports([""] * len(studies), studies)  # says nothing -> recall 0 where positives exist
    assert all(empty.recall[k] == 0.0 for k in FINDINGS)
    with pytest.raises(ValueError, match="one report per study"):
        evaluate_reports(["x"], studies)


def test_best_latent_and_probe_find_a_planted_signal():
    g = torch.Generator().manual_seed(0)
    n, d = 200, 32
    y = (torch.rand(n, len(FINDINGS), generator=g) < 0.3).long().numpy()
    z = torch.rand(n, d, generator=g) * 0.5
    z[:, 7] = (
        torch.as_tensor(y[:, 1]).float() * 2.0 + torch.rand(n, generator=g) * 0.1
    )  # latent 7 = finding 1
    tr, te = np.arange(120), np.arange(120, n)
    best = best_latent_f1(z[tr], y[tr], z[te], y[te])
    assert best[FINDINGS[1]]["latent"] == 7 and best[FINDINGS[1]]["f1"] == 1.0
    assert best[FINDINGS[0]]["f1"] < 0.8
    pf = probe_f1(z[tr].numpy(), y[tr], z[te].numpy(), y[te])
    assert pf[FINDINGS[1]] > 0.95 and pf[FINDINGS[0]] < 0.8
