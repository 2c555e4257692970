"""Training from image+text studies through SAELens's stock runner (make_runner)."""

from __future__ import annotations

import json

import pytest
import torch
from _studies import random_studies
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
)
from sae_lens.training.activation_scaler import ActivationScaler
from sae_rad_ext.adapters.hooked import HookedMaira2

from sae_rad_ext import MATRYOSHKA_ARCHITECTURE, RadMatryoshkaBatchTopKTrainingSAEConfig
from sae_rad_ext.data.phantom.generator import generate_studies
from sae_rad_ext.training.runner import EVAL_MASK_TOKEN, StudySAETrainingRunner, make_runner

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return HookedMaira2.tiny(seed=0)


def _cfg(tmp_path, steps: int, sae=None, **kw) -> LanguageModelSAERunnerConfig:
    base = dict(
        sae=sae
        or BatchTopKTrainingSAEConfig(
            d_in=128, d_sae=128, k=8, normalize_activations="expected_average_only_in"
        ),
        hook_name=HOOK,
        context_size=128,
        store_batch_size_prompts=4,
        n_batches_in_buffer=4,
        train_batch_size_tokens=64,
        training_tokens=64 * steps,
        n_batches_for_norm_estimate=3,
        logger=LoggingConfig(
            log_to_wandb=True, wandb_log_frequency=5, eval_every_n_wandb_logs=2
        ),  # WANDB_MODE=disabled
        n_eval_batches=1,
        eval_batch_size_prompts=2,
        checkpoint_path=str(tmp_path / "ckpt"),
        output_path=str(tmp_path / "out"),
        device="cpu",
        verbose=False,
    )
    base.update(kw)
    return LanguageModelSAERunnerConfig(**base)


def _phantoms():
    return generate_studies(8, seed=3, image_size=112)


def test_stock_runner_trains_from_studies_with_metadata(model, tmp_path):
    sae_cfg = RadMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=128,
        d_sae=128,
        k=8,
        group_sizes=[32, 32, 64],
        threshold_start_step=5,
        normalize_activations="expected_average_only_in",
    )
    runner = make_runner(
        _cfg(tmp_path, steps=20, sae=sae_cfg, n_checkpoints=1),
        model,
        _phantoms,
        positions="maira2_sae_paper_with_images",
        data_description="phantom:n=8,seed=3",
    )
    assert isinstance(runner, StudySAETrainingRunner)
    sae = runner.run()
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert saved["architecture"] == MATRYOSHKA_ARCHITECTURE and saved["group_sizes"] == [32, 32, 64]
    md = saved["metadata"]
    assert md["hook_name"] == HOOK and md["model_name"] == "tiny-maira2"
    assert md["model_class_name"] == "HookedMaira2"
    assert md["position_selection"] == "maira2_sae_paper_with_images"
    assert md["dataset_path"] == "phantom:n=8,seed=3"
    assert {"image:frontal", "report", "all"} <= set(md["role_norms"])
    assert md["role_norms"]["image:frontal"]["count"] > 0
    # the stock checkpoint layout, with our store state
    ckpts = list((tmp_path / "ckpt").glob("*/*/activations_store_state.safetensors"))
    assert ckpts and json.loads((ckpts[0].parent / "cfg.json").read_text())["metadata"]["role_norms"]
    loaded = SAE.load_from_disk(str(tmp_path / "out"))
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.d_sae == sae.cfg.d_sae


def test_stock_evals_run_on_image_batches(model, tmp_path):
    runner = make_runner(_cfg(tmp_path, steps=5), model, lambda: random_studies(4), positions="report")
    tokens = runner.activations_store.get_batch_tokens(2)
    batch = runner.activations_store.eval_batch_for(tokens)
    keep = batch.roles.mask("report")
    assert torch.equal(tokens == EVAL_MASK_TOKEN, ~keep)  # non-selected positions are masked for the evals
    runner.activations_store.reset_input_dataset()
    runner._set_sae_metadata()  # what run() does first
    metrics = runner.evaluator(runner.sae, runner.activations_store, ActivationScaler())
    assert 0 < metrics["model_performance_preservation"]["ce_loss_without_sae"] < 20
    assert metrics["token_stats"]["total_tokens_eval_sparsity_variance"] > 0
    assert "explained_variance" in metrics["reconstruction_quality"]


@pytest.mark.slow
def test_resume_fast_forwards_the_study_stream(model, tmp_path):
    cfg = _cfg(tmp_path, steps=12, n_checkpoints=1)
    runner = make_runner(cfg, model, lambda: random_studies(6), positions="all")
    runner.run()
    ckpt = sorted((tmp_path / "ckpt").glob("*/*/trainer_state.pt"))[0].parent
    cfg2 = _cfg(tmp_path / "b", steps=12, resume_from_checkpoint=str(ckpt))
    r2 = make_runner(cfg2, model, lambda: random_studies(6), positions="all")
    r2.activations_store.load_from_checkpoint(ckpt)
    saved = runner.activations_store  # the first run consumed at least the checkpoint's studies
    assert 0 < r2.activations_store.n_dataset_processed <= saved.n_dataset_processed
    r2.run()  # continues from the checkpoint's step to training_tokens


@pytest.mark.slow
def test_few_hundred_steps_explained_variance_rises(model, tmp_path):
    cfg = _cfg(
        tmp_path,
        steps=300,
        logger=LoggingConfig(log_to_wandb=False),
        lr=4e-3,
        sae=BatchTopKTrainingSAEConfig(
            d_in=128, d_sae=256, k=16, normalize_activations="expected_average_only_in"
        ),
    )
    runner = make_runner(
        cfg,
        model,
        lambda: generate_studies(24, seed=5, image_size=112),
        positions="maira2_sae_paper_with_images",
    )
    from sae_rad_ext.activations.extract import iter_activations

    x = torch.cat(
        [
            b.acts
            for b in iter_activations(
                model,
                generate_studies(4, seed=99, image_size=112),
                HOOK,
                positions="maira2_sae_paper_with_images",
            )
        ]
    )

    def ev(sae):
        with torch.no_grad():
            rec = sae.decode(sae.encode(x))
        return 1 - (x - rec).pow(2).sum() / (x - x.mean(0)).pow(2).sum()

    before = ev(runner.sae)
    sae = runner.run()
    after = ev(sae)
    print(f"explained variance on held-out phantom studies: {before:.3f} -> {after:.3f}")
    assert after > before + 0.3 and after > 0.6


def _trainer(seed: int, warm_up: int = 4):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    sae = BatchTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4)
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=10**6,
        device="cpu",
        autocast=False,
        lr=1e-2,
        lr_end=1e-3,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=warm_up,
        adam_beta1=0.9,
        adam_beta2=0.99,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=8,
        dead_feature_window=100,
        feature_sampling_window=100,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=cfg, sae=BatchTopKTrainingSAE(sae), data_provider=iter(()))


def test_use_fused_adam_continues_the_same_optimisation():
    """Swapping mid-run carries moments, step count, current lr and the scheduler: same trajectory."""
    from sae_rad_ext.training.runner import use_fused_adam

    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 16, generator=g) for _ in range(8)]
    a, b = _trainer(1), _trainer(1)
    for x in batches[:3]:
        a.step(x), b.step(x)
    assert use_fused_adam(b) is True and use_fused_adam(b) is True  # idempotent
    assert all(grp["fused"] for grp in b.optimizer.param_groups)
    assert b.lr_scheduler.optimizer is b.optimizer
    assert b.optimizer.param_groups[0]["lr"] == a.optimizer.param_groups[0]["lr"]
    for x in batches[3:]:
        a.step(x), b.step(x)
        assert b.optimizer.param_groups[0]["lr"] == pytest.approx(
            a.optimizer.param_groups[0]["lr"], rel=1e-12
        )
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(float(sa[i]["step"]) == float(sb[i]["step"]) == 8 for i in sa)
    for (n, pa), pb in zip(a.sae.named_parameters(), b.sae.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-5), n
    # the stock trainer can load what the fused one saves (checkpoints stay stock)
    c = _trainer(1)
    c.optimizer.load_state_dict(b.optimizer.state_dict())


def test_use_fused_adam_leaves_other_optimizers_alone():
    from sae_rad_ext.training.runner import use_fused_adam

    t = _trainer(2)
    t.optimizer = torch.optim.SGD(t.sae.parameters(), lr=0.1)
    assert use_fused_adam(t) is False and isinstance(t.optimizer, torch.optim.SGD)


def test_runner_optimizer_choice(model, tmp_path, monkeypatch):
    import sae_rad_ext.training.runner as tr

    with pytest.raises(ValueError, match=r"optimizer must be one of \('fused_adam', 'stock'\), got 'sgd'"):
        make_runner(
            _cfg(tmp_path, steps=2), model, lambda: random_studies(2), positions="all", optimizer="sgd"
        )
    seen = []
    real = tr.use_fused_adam
    monkeypatch.setattr(tr, "use_fused_adam", lambda t: seen.append(real(t)) or seen[-1])
    cfg = _cfg(tmp_path, steps=3, logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None)
    make_runner(cfg, model, lambda: random_studies(4), positions="all").run()
    assert seen == [True]
    cfg = _cfg(tmp_path / "s", steps=3, logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None)
    make_runner(cfg, model, lambda: random_studies(4), positions="all", optimizer="stock").run()
    assert seen == [True]  # "stock" never swaps
