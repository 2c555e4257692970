"""``sae-rad cache CONFIG`` and ``sae-rad train CONFIG [--resume]``: activations of image+text studies
into SAELens (see :mod:`sae_rad_ext.training.run_config` for the config file, :mod:`sae_rad_ext.activations.cache` and
:mod:`sae_rad_ext.training.runner` for what runs)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.errors import BadInputError, SaeRadError
from sae_rad_ext.training.run_config import config_template, help_text

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


class _Progress:
    """Rich progress bars: model positions (tokens/s) and, when training, tokens served to the trainer."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.start = time.monotonic()
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def add(self, key: str, description: str, total: int | None, unit: str) -> None:
        self.tasks[key] = (self.progress.add_task(description, total=total, rate="", unit=unit), unit)
        self.counts[key] = 0

    def advance(self, key: str, n: int, rate_of: int | None = None) -> None:
        task, unit = self.tasks[key]
        self.counts[key] += n
        dt = max(time.monotonic() - self.start, 1e-9)
        rate = (rate_of if rate_of is not None else self.counts[key]) / dt
        self.progress.update(task, advance=n, rate=f"{rate:,.0f} {unit}/s")

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


@contextlib.contextmanager
def _quiet_sae_lens_tqdm(quiet: bool) -> Iterator[None]:
    """SAELens's trainer draws its own tqdm bar; hide it while the rich bars run."""
    if not quiet:
        yield
        return
    import functools

    import sae_lens.training.activation_scaler as scaler_mod
    import sae_lens.training.sae_trainer as trainer_mod

    mods = (trainer_mod, scaler_mod)
    old = [m.tqdm for m in mods]
    for m, t in zip(mods, old, strict=True):
        m.tqdm = functools.partial(t, disable=True)
    try:
        yield
    finally:
        for m, t in zip(mods, old, strict=True):
            m.tqdm = t


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
    with _Progress(enabled=not quiet and rank == 0) as bar:
        bar.add("studies", "studies (this rank)", n_studies, "studies")
        bar.add("tokens", "positions (this rank)", None, "tok")

        def progress(n_st: int, n_tok: int) -> None:
            bar.advance("studies", n_st)
            bar.advance("tokens", n_tok)

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
            progress=progress,
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
    with _Progress(enabled=not quiet) as bar, _quiet_sae_lens_tqdm(not quiet):
        bar.add("llm", "model → activations", None, "tok")
        bar.add("train", "SAE training tokens", run_cfg.training_tokens, "tok")
        if run_cfg.resume_from_checkpoint and Path(run_cfg.resume_from_checkpoint).name.isdigit():
            bar.advance(
                "train", int(Path(run_cfg.resume_from_checkpoint).name), rate_of=0
            )  # samples already trained
            bar.counts["train"] = 0
        runner.activations_store.on_progress = lambda kind, n: bar.advance(kind, n)
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
