"""``sae-rad interpret``: statistics, concept alignment, examples, explanations and scores for an SAE."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.cli.loaders import load_model_for_command, load_sae_for_command, studies_for_command

_HELP = """Interpret an SAE on a study source: one streaming pass (feature statistics, study-level scores
at image / last-prompt / generated-report / teacher-forced-report positions, map-vs-mask overlap), concept
alignment (fit-split threshold, holdout metrics), RecSAE confidence, a targeted examples pass (contexts,
patch maps, heatmaps), explanations and scores with a shuffled baseline. Writes an InterpretationRun
(run.json, features.jsonl) that `sae-rad export --interpretation` publishes, delphi-style
explanations/ and scores/, alignment.csv, features.csv and summary.json to --out. Re-running with the
same inputs skips the finished model passes.

--studies: any source `open_studies` reads (MIMIC-CXR-JPG, datasets folder, manifest, DICOM, phantom
folder) or `phantom:n=200,seed=1,image_size=112` for phantoms generated on the fly."""


@app.command("interpret", help=_HELP)
def interpret_cmd(
    sae: Path = typer.Option(
        ..., "--sae", exists=True, file_okay=False, help="SAE folder (SAELens cfg.json or ae.pt)."
    ),
    studies: str = typer.Option(..., "--studies", help="Study source (see above)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable)."),
    model: str = typer.Option("tiny", "--model", help="'tiny' (random tiny MAIRA-2) or a checkpoint folder."),
    hook_name: str | None = typer.Option(
        None, "--hook-name", help="Hook the SAE reads (default: its cfg.json)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Split(s) of the source, e.g. test or validate,test."
    ),
    max_studies: int | None = typer.Option(None, "--max-studies", min=1),
    positions: str | None = typer.Option(
        None,
        "--positions",
        help="Positions for the statistics (TokenRoles selection; default: the SAE's, else "
        "maira2_sae_paper_with_images).",
    ),
    generate: bool = typer.Option(
        True, "--generate/--no-generate", help="Also score the model's own generated report."
    ),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    max_features: int = typer.Option(256, "--max-features", min=1, help="Features to explain and score."),
    holdout_fraction: float = typer.Option(0.5, "--holdout-fraction", min=0.05, max=0.95),
    explainer: str = typer.Option("offline", "--explainer", help="offline | llm"),
    scorers: str = typer.Option(
        "detection,fuzzing", "--scorers", help="Comma list of detection, fuzzing, embedding, llm."
    ),
    llm_url: str | None = typer.Option(
        None, "--llm-url", envvar="SAE_RAD_LLM_BASE_URL", help="OpenAI-compatible base URL."
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", envvar="SAE_RAD_LLM_MODEL"),
    llm_key: str | None = typer.Option(None, "--llm-key", envvar="SAE_RAD_LLM_API_KEY"),
    llm_timeout: float = typer.Option(60.0, "--llm-timeout"),
    no_heatmaps: bool = typer.Option(False, "--no-heatmaps", help="Skip heatmap PNGs (patch maps are kept)."),
    device: str = typer.Option("cpu", "--device"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    from sae_rad_ext.interpret.run import InterpretConfig, interpret
    from sae_rad_ext.util.progress import RichProgress

    names = tuple(s.strip() for s in scorers.split(",") if s.strip())
    bad = [s for s in names if s not in ("detection", "fuzzing", "embedding", "llm")]
    if bad:
        raise typer.BadParameter(
            f"unknown scorer(s) {bad}; expected detection, fuzzing, embedding, llm", param_hint="--scorers"
        )
    if explainer not in ("offline", "llm"):
        raise typer.BadParameter(
            f"--explainer must be offline or llm, got {explainer!r}", param_hint="--explainer"
        )
    client = None
    if explainer == "llm" or "llm" in names:
        from sae_rad_ext.interpret.llm_client import ChatClient, LLMError

        try:
            client = ChatClient.from_env(
                base_url=llm_url, model=llm_model, api_key=llm_key, timeout=llm_timeout
            )
        except LLMError as e:
            raise typer.BadParameter(str(e), param_hint="--llm-url") from e
    sae_model = load_sae_for_command(sae, device)
    hooked = load_model_for_command(model, device)
    cfg = InterpretConfig(
        hook_name=hook_name,
        stats_positions=positions,
        batch_size=batch_size,
        generate=generate,
        max_new_tokens=max_new_tokens,
        max_features=max_features,
        holdout_fraction=holdout_fraction,
        explainer=explainer,
        scorers=names,
        heatmaps=not no_heatmaps,
    )
    key = json.dumps([studies, split, max_studies, model])
    with RichProgress(enabled=not quiet) as bar:
        res = interpret(
            hooked,
            sae_model,
            studies_for_command(studies, split=split, limit=max_studies),
            out,
            cfg,
            llm_client=client,
            studies_key=key,
            progress=bar,
        )
    typer.echo(
        f"interpretation run: {out} ({len(res.explanations)} features explained; "
        f"{len(res.stats.dead_features())} dead of {res.stats.d_sae})"
    )
    typer.echo(f"{'concept':<22}{'feature':>8}  {'positions':<20}{'F1':>7}{'AUROC':>8}{'IoU':>7}")
    for c, r in res.best.items():
        iou = "" if r.iou is None else f"{r.iou:.2f}"
        typer.echo(f"{c:<22}{r.feature:>8}  {r.kind:<20}{r.f1:>7.3f}{r.auroc:>8.3f}{iou:>7}")
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["scores_mean"].items():
        if not name.endswith("_shuffled") and m.get("auroc") is not None:
            sh = summary["scores_mean"].get(f"{name}_shuffled", {})
            f1s, aus = (float("nan") if sh.get(k) is None else sh[k] for k in ("f1", "auroc"))
            typer.echo(
                f"{name}: mean F1 {m['f1']:.3f} AUROC {m['auroc']:.3f}  (shuffled explanations: F1 {f1s:.3f} "
                f"AUROC {aus:.3f})"
            )
