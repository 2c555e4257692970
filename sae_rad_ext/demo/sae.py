"""The demo's SAE stages: a Matryoshka BatchTopK SAE trained through SAELens's runner (``make_runner``) on
image + report activations, then measured on held-out phantoms (EV / L0 per level, best latent per finding).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_rad_ext.data.study import Study
from sae_rad_ext.util.progress import ProgressCallback, ProgressEvent, Ticker, sae_lens_tqdm

if TYPE_CHECKING:
    from sae_rad_ext.adapters.hooked import HookedMaira2
    from sae_rad_ext.adapters.prompts import Maira2Processor

__all__ = ["demo_runner_config", "evaluate_demo_sae", "train_demo_sae"]


def demo_runner_config(
    cfg: Any, d_model: int, layer: int, out: Path, *, training_tokens: int | None = None, seed: int | None = None
) -> Any:
    """The demo's SAELens runner config: a Matryoshka BatchTopK SAE (``cfg``: a :class:`DemoConfig`) on
    ``blocks.{layer}.hook_resid_post``, written to ``out``. Also used by examples that train the same
    SAE at other layers."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_rad_ext.saes.matryoshka_training import RadMatryoshkaBatchTopKTrainingSAEConfig

    tokens = training_tokens if training_tokens is not None else cfg.sae_training_tokens
    steps = tokens // cfg.sae_batch_tokens
    sae_cfg = RadMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_model,
        d_sae=cfg.d_sae,
        k=cfg.k,
        group_fractions=list(cfg.group_fractions),
        threshold_start_step=steps // 2,
        normalize_activations="expected_average_only_in",
        device=cfg.device,
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        hook_name=f"blocks.{layer}.hook_resid_post",
        model_name="tiny-maira2-phantom",
        dataset_path="",
        context_size=128,
        training_tokens=tokens,
        train_batch_size_tokens=cfg.sae_batch_tokens,
        store_batch_size_prompts=32,
        n_batches_in_buffer=16,
        lr=cfg.sae_lr,
        lr_warm_up_steps=min(50, steps // 10),
        device=cfg.device,
        seed=cfg.seed if seed is None else seed,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out),
        checkpoint_path=None,
        n_checkpoints=0,
        dead_feature_window=max(50, steps // 4),
        feature_sampling_window=max(50, steps // 4),
        verbose=False,
        n_eval_batches=2,
        eval_batch_size_prompts=8,
        n_batches_for_norm_estimate=cfg.norm_estimate_batches,
    )


def train_demo_sae(
    cfg: Any,
    hooked: HookedMaira2,
    proc: Maira2Processor,
    splits: dict[str, list[Study]],
    layer: int,
    *,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train the demo's SAE (:func:`demo_runner_config`) on the train split through SAELens's runner into
    ``cfg.out / "sae"``. ``progress``: stage ``"SAE blocks.<layer> (SAELens runner)"`` counts training
    tokens served (total ``cfg.sae_training_tokens``); SAELens's own tqdm bars are silenced."""
    from sae_rad_ext.training.runner import make_runner

    out = cfg.out / "sae"
    if out.exists():
        shutil.rmtree(out)
    rc = demo_runner_config(cfg, hooked.cfg.d_model, layer, out)
    torch.manual_seed(cfg.seed)  # the runner initialises the SAE: seed before, not after
    runner = make_runner(
        rc,
        hooked,
        splits["train"],
        positions=cfg.positions,
        processor=proc,
        eval_studies=splits["validate"] or splits["test"],
        data_description=f"phantom:n={cfg.n_studies},seed={cfg.seed},split=train",
    )
    stage = f"SAE blocks.{layer} (SAELens runner)"

    def on_progress(e: ProgressEvent) -> None:
        if e.stage == "train" and progress is not None:
            progress(ProgressEvent(stage, e.done, cfg.sae_training_tokens))

    runner.activations_store.on_progress = on_progress
    with sae_lens_tqdm(None):  # SAELens's own bars draw nothing; the store's events above show progress
        runner.run()
    return out


def evaluate_demo_sae(
    cfg: Any,
    hooked: HookedMaira2,
    proc: Maira2Processor,
    splits: dict[str, list[Study]],
    sae_dir: Path,
    layer: int,
    *,
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], Any, torch.Tensor]:
    """Explained variance / L0 per Matryoshka level on test activations and the best latent per finding;
    returns ``(summary section, SAE, test activations)``. ``progress``: stage ``"SAE eval activations"``
    counts studies."""
    from sae_lens import SAE

    from sae_rad_ext.activations.extract import iter_activations
    from sae_rad_ext.adapters.roles import Role
    from sae_rad_ext.evaluation.phantom_benchmark import best_latent_f1, study_truth

    sae = SAE.load_from_disk(str(sae_dir), device=cfg.device)
    hook = f"blocks.{layer}.hook_resid_post"
    tr, te = splits["train"][: cfg.n_probe_train], splits["test"]
    tick = Ticker(progress, "SAE eval activations", len(tr) + len(te))
    rows: dict[str, list[Any]] = {"train": [], "test": []}
    for name, studies in (("train", tr), ("test", te)):
        for b in iter_activations(
            hooked, studies, hook, processor=proc, positions=cfg.positions, batch_size=32
        ):
            rows[name].append(b)
            tick(len(b.study_ids))
    x_test = torch.cat([b.acts for b in rows["test"]])
    roles_test = torch.cat([b.role for b in rows["test"]])
    lm = sae.level_metrics(x_test)
    lm_img = sae.level_metrics(x_test[roles_test == int(Role.IMAGE)])

    def study_max(batches: list[Any]) -> torch.Tensor:  # [n_studies, d_sae] max over image tokens
        out = []
        with torch.no_grad():
            for b in batches:
                img = b.role == int(Role.IMAGE)
                z = sae.encode(b.acts[img])
                m = torch.zeros(len(b.study_ids), z.shape[1])
                m.scatter_reduce_(0, b.study_index[img][:, None].expand_as(z), z, reduce="amax")
                out.append(m)
        return torch.cat(out)

    best = best_latent_f1(study_max(rows["train"]), study_truth(tr), study_max(rows["test"]), study_truth(te))
    fracs = [round(float(v), 4) for v in lm.explained_variance]
    res = {
        "path": str(sae_dir),
        "hook_name": hook,
        "positions": cfg.positions,
        "d_sae": sae.cfg.d_sae,
        "level_ends": lm.level_ends,
        "n_test_positions": int(x_test.shape[0]),
        "explained_variance": fracs,
        "l0": [round(float(v), 3) for v in lm.l0],
        "explained_variance_image_tokens": [round(float(v), 4) for v in lm_img.explained_variance],
        "l0_image_tokens": [round(float(v), 3) for v in lm_img.l0],
        "best_latent_f1": {k: v["f1"] for k, v in best.items()},
        "best_latent": {k: v["latent"] for k, v in best.items()},
    }
    return res, sae, x_test
