"""``sae-rad demo``: phantoms → tiny MAIRA-2 → SAE through SAELens → interpretation/publishing, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from sae_rad_ext.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(
        Path("runs/demo"), "--out", help="Output folder (summary.json, model/, sae/, …)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Smoke run under a minute (tiny counts; numbers not meaningful)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantoms, the model and the SAE."),
    device: str = typer.Option("cpu", "--device", help="Torch device for the model and the SAE."),
    n_studies: int = typer.Option(
        None, "--n-studies", help="Phantom studies to generate (default 1200; quick 100)."
    ),
    cache_dir: Path = typer.Option(
        None,
        "--cache-dir",
        help="Trained-model cache root (default $SAE_RAD_EXT_CACHE or ~/.cache/sae-rad-ext).",
    ),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train the tiny model even if a cached one exists."
    ),
) -> None:
    """Run the whole pipeline on planted-truth phantom chest X-rays and print what it measured.

    Stages: phantom data (datasets + MIMIC-CXR-JPG layout) → tiny MAIRA-2 (trained once, then cached) →
    report F1 vs planted truth → per-layer probes → Matryoshka SAE through SAELens's runner → SAE
    metrics per level → interpretation / steering / publishing when installed. Every printed number is
    in OUT/summary.json.
    """
    import torch

    from sae_rad_ext.demo.pipeline import DemoConfig, run_demo

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter(f"--device {device}: CUDA is not available here; use --device cpu")
    kw = {"out": out, "seed": seed, "device": device, "cache_dir": cache_dir, "retrain": retrain}
    if n_studies is not None:
        if n_studies < 20:
            raise typer.BadParameter(f"--n-studies {n_studies}: need at least 20 to have train/test splits")
        kw["n_studies"] = n_studies
    cfg = DemoConfig.quick(**kw) if quick else DemoConfig(**kw)
    run_demo(cfg)
