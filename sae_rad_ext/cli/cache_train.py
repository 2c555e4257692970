"""``sae-rad cache CONFIG`` and ``sae-rad train CONFIG [--resume]``: activations of image+text studies
into SAELens (see :mod:`sae_rad_ext.training.run_config` for the config file, :mod:`sae_rad_ext.activations.cache` and
:mod:`sae_rad_ext.training.runner` for what runs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.errors import BadInputError, SaeRadError
from sae_rad_ext.training.run_config import config_template, help_text
from sae_rad_ext.util.progress import RichProgress, sae_lens_tqdm

_CACHE_HELP = (
    "Cache hook activations of image+text studies in SAELens's cached-activations format (resumable "
    "shards; rerun the same command after a kill to continue). Multi-process: torchrun --nproc_per_node N "
    "$(which sae-rad) cache CONFIG (each rank a disjoint shard of studies; rank 0 merges)."
)
_TRAIN_HELP = (
    "Train an SAE on image+text activations through SAELens's LanguageModelSAETrainingRunner (its mixing "
    "buffer, normalisation, wandb logging, checkpoints and evals), from studies or from a cache "
    "(runner.use_cached_activations: true). --resume continues from the newest checkpoint under "
    "runner.checkpoint_path."
)


def _epilog(include_runner: bool) -> str:
    # typer/rich wraps paragraphs; a blank line between fields keeps one field per line.
    return "\n\n".join(line for line in help_text(include_runner).splitlines() if line.strip())


def _template(value: bool) -> None:
    if value:
        typer.echo(config_template(), nl=False)
        raise typer.Exit()


_TEMPLATE_OPT = typer.Option(
    False,
    "--print-config-template",
    callback=_template,
    is_eager=True,
    help="Print a commented YAML config with every field (defaults and examples) and exit.",
)


def _print_norms(title: str, norms: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("role", "count", "share", "mean ‖x‖", "rms ‖x‖"):
        table.add_column(col, justify="left" if col == "role" else "right")
    for k, v in norms.items():
        table.add_row(
            k,
            f"{v['count']:,}",
            f"{100 * v['fraction']:.1f}%",
            f"{v['mean_norm']:.4g}",
            f"{v['rms_norm']:.4g}",
        )
    Console().print(table)


@contextlib.contextmanager
def _config_errors(config: Path) -> Iterator[None]:
    """Report a bad config (unknown field, wrong type, inconsistent settings) as a
    :class:`~sae_rad_ext.errors.BadInputError` naming the file."""
    try:
        yield
    except SaeRadError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        text = str(e).strip("'\"")
        where = "" if str(config) in text else f"{config}: "
        raise BadInputError(
            f"{where}{text} (see `sae-rad train --print-config-template` for every field)"
        ) from e


def _local_device(device: str) -> str:
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


@app.command("cache", help=_CACHE_HELP, epilog=_epilog(False))
def cache(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML/JSON config (see below)."),
    print_config_template: bool = _TEMPLATE_OPT,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    from sae_rad_ext.activations.cache import cache_activations
    from sae_rad_ext.training.run_config import build_model, build_studies, load_config

    with _config_errors(config):
        cfg = load_config(config)
    cfg["model"]["device"] = _local_device(cfg["model"]["device"])
    c, r = cfg["cache"], cfg["runner"]
    if not c["path"]:
        raise typer.BadParameter("the cache section needs `path`", param_hint="CONFIG")
    model = build_model(cfg["model"])
    with _config_errors(config):
        studies, description, n_studies = build_studies(cfg["data"])
    hook = r.get("hook_name") or f"blocks.{min(15, model.cfg.n_layers - 1)}.hook_resid_post"
    rank = int(os.environ.get("RANK", "0"))
    with RichProgress(enabled=not quiet and rank == 0) as bar:
        bar.add("studies", "studies (this rank)", n_studies, unit="studies")
        bar.add("positions", "positions (this rank)", None, unit="tok")

        result = cache_activations(
            model,
            studies,
            c["path"],
            hook,
            context_size=int(c["context_size"] or r.get("context_size", 128)),
            positions=cfg["positions"]["select"],
            batch_size=int(c["batch_size"] or r.get("store_batch_size_prompts", 8)),
            studies_per_shard=int(c["studies_per_shard"]),
            with_report=cfg["positions"]["with_report"],
            task=cfg["positions"]["task"],
            dtype=c["dtype"],
            model_name=model.cfg.model_name,
            data_description=description,
            keep_shards=bool(c["keep_shards"]),
            progress=bar,
        )
    if rank == 0:
        typer.echo(
            f"cache {result.path}: {result.n_studies} studies, {result.n_rows} rows × {c['context_size'] or r.get('context_size', 128)} "
            f"positions (+{result.n_remainder} in remainder.safetensors), hook {hook}, positions "
            f"{cfg['positions']['select']!r}; {result.shards_written} shard(s) written now"
        )
        _print_norms(f"activation norms per role ({hook})", result.role_norms)


@app.command("train", help=_TRAIN_HELP, epilog=_epilog(True))
def train(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML/JSON config (see below)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint under runner.checkpoint_path."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        exists=True,
        file_okay=False,
        help="Continue from this checkpoint folder (implies --resume).",
    ),
    print_config_template: bool = _TEMPLATE_OPT,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    optimizer: str = typer.Option(
        "fused_adam",
        "--optimizer",
        help="fused_adam: SAELens's Adam with fused=True (same update, less optimizer time); "
        "stock: SAELens's optimizer untouched.",
    ),
) -> None:
    from sae_rad_ext.training.runner import OPTIMIZERS

    if optimizer not in OPTIMIZERS:
        raise typer.BadParameter(
            f"expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}", param_hint="--optimizer"
        )
    from sae_rad_ext.training.run_config import (
        build_eval_studies,
        build_model,
        build_runner_config,
        build_studies,
        latest_checkpoint,
        load_config,
    )
    from sae_rad_ext.training.runner import make_runner

    with _config_errors(config):
        cfg = load_config(config)
    base_ckpt = cfg["runner"].get("checkpoint_path", "checkpoints")
    model = build_model(cfg["model"])
    with _config_errors(config):
        studies, description, _ = build_studies(cfg["data"])
        run_cfg = build_runner_config(cfg, model)
    if resume or checkpoint is not None:
        ckpt = checkpoint or (latest_checkpoint(base_ckpt) if base_ckpt else None)
        if ckpt is None:
            raise typer.BadParameter(
                f"--resume: no checkpoint (trainer_state.pt) under {base_ckpt}/<run>/<n>/"
            )
        run_cfg.resume_from_checkpoint = str(ckpt)
        run_cfg.checkpoint_path = str(Path(ckpt).parent)  # keep writing into the same run folder
        typer.echo(f"resuming from {ckpt}")
    runner = make_runner(
        run_cfg,
        model,
        studies,
        positions=cfg["positions"]["select"],
        with_report=cfg["positions"]["with_report"],
        eval_studies=build_eval_studies(cfg["data"]),
        data_description=description,
        optimizer=optimizer,
    )
    runner.activations_store.task = cfg["positions"]["task"]
    resumed = run_cfg.resume_from_checkpoint
    already = int(Path(resumed).name) if resumed and Path(resumed).name.isdigit() else 0  # samples trained
    with RichProgress(enabled=not quiet) as bar, sae_lens_tqdm(None):  # SAELens's own bars: silenced
        bar.add("llm", "model → activations", None, unit="tok")
        bar.add("train", "SAE training tokens", run_cfg.training_tokens, unit="tok", completed=already)
        runner.activations_store.on_progress = bar
        sae = runner.run()
    md = sae.cfg.metadata
    typer.echo(
        f"trained {sae.cfg.architecture()} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} on {md.hook_name} of "
        f"{md.model_name}, positions {md.position_selection!r}; saved to {run_cfg.output_path}"
        + (
            f"; checkpoints in {run_cfg.checkpoint_path}"
            if run_cfg.n_checkpoints or run_cfg.save_final_checkpoint
            else ""
        )
    )
    if md.role_norms:
        _print_norms(f"activation norms per role ({md.hook_name})", md.role_norms)
