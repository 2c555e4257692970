"""``sae-rad steer``: strength sweep of one SAE feature, directional-control metrics and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sae_rad_ext.cli.app import app
from sae_rad_ext.cli.loaders import (
    check_sae_fits_model,
    load_model_for_command,
    load_sae_for_command,
    studies_for_command,
)
from sae_rad_ext.errors import BadInputError

_HELP = """Steer generated reports with one SAE feature at several strengths (beside an equal-norm random
direction) and measure, with the finding labeler, how often the target finding turns on / off and how
often other findings change. Writes reports.jsonl, metrics.json/.csv (target finding),
metrics_all_findings.csv, steering.png and sweep.json to --out.

--studies: any source `open_studies` reads (MIMIC-CXR-JPG, datasets folder, manifest, DICOM, phantom
folder) or `phantom:n=40,seed=1,image_size=128` for phantoms generated on the fly."""


def _coefs(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise typer.BadParameter(f"--coef must be comma-separated numbers like 0,2,4,8; got {text!r}") from e
    if not vals:
        raise typer.BadParameter("--coef is empty", param_hint="--coef")
    return vals


@app.command("steer", help=_HELP)
def steer(
    sae_path: Path = typer.Option(
        ..., "--sae", exists=True, file_okay=False, help="SAE folder (SAELens or ae.pt)."
    ),
    feature: int = typer.Option(..., "--feature", help="SAE latent id to steer."),
    coef: str = typer.Option("0,1,2,4,8", "--coef", help="Comma-separated coefficients (in --unit)."),
    studies: str = typer.Option(..., "--studies", help="Study source (see above)."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    model_name: str = typer.Option(
        "tiny", "--model", help="'tiny' (random tiny MAIRA-2) or a checkpoint folder."
    ),
    positions: str = typer.Option(
        "all", "--positions", help="Role selection: all, report, image, image:frontal, ..."
    ),
    clamp: bool = typer.Option(
        False, "--clamp/--add", help="Clamp the feature to the coefficient instead of adding."
    ),
    unit: str = typer.Option(
        "max_act", "--unit", help="absolute | max_act (× the feature's median per-study max)."
    ),
    finding: str | None = typer.Option(
        None, "--finding", help="Target finding (default: the most-changed one)."
    ),
    goal: str = typer.Option("on", "--goal", help="on (steer the finding in) | off (steer it out)."),
    split: str | None = typer.Option(None, "--split", help="Split of the source (train/validate/test)."),
    max_studies: int = typer.Option(32, "--max-studies", min=1),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", help="Seed of the random control direction."),
    no_random: bool = typer.Option(False, "--no-random", help="Skip the random-direction control."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    import torch

    from sae_rad_ext.adapters import Maira2Processor
    from sae_rad_ext.data.study import FINDINGS
    from sae_rad_ext.steering.evaluate import evaluate_control
    from sae_rad_ext.steering.steer import strength_sweep
    from sae_rad_ext.util.files import atomic_write
    from sae_rad_ext.util.progress import RichProgress

    if unit not in ("absolute", "max_act"):
        raise typer.BadParameter(f"--unit must be absolute or max_act, got {unit!r}", param_hint="--unit")
    if goal not in ("on", "off"):
        raise typer.BadParameter(f"--goal must be on or off, got {goal!r}", param_hint="--goal")
    if finding is not None and finding not in FINDINGS:
        raise typer.BadParameter(
            f"unknown finding {finding!r}; expected one of {', '.join(FINDINGS)}", param_hint="--finding"
        )
    coefficients = _coefs(coef)
    sae = load_sae_for_command(sae_path)
    if not 0 <= feature < sae.cfg.d_sae:
        raise typer.BadParameter(
            f"feature {feature} is outside the SAE's 0..{sae.cfg.d_sae - 1}", param_hint="--feature"
        )
    model = load_model_for_command(model_name, device)
    check_sae_fits_model(sae, model, "--model")
    sae = sae.to(device)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    items = list(studies_for_command(studies, split=split, limit=max_studies)())
    if not items:
        raise BadInputError(f"--studies {studies}: the source yielded no studies; check its path and --split")
    with RichProgress() as bar, torch.no_grad():
        bar.add("strength sweep", "generating")
        sweep = strength_sweep(
            model,
            proc,
            items,
            sae,
            feature,
            coefficients,
            unit=unit,  # type: ignore[arg-type]
            kind="clamp" if clamp else "add",
            positions=positions,
            random_control=not no_random,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=bar,
        )
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"study_id": sid, "condition": "baseline", "coefficient": 0.0, "report": r})
        for sid, r in zip(sweep.study_ids, sweep.baseline, strict=True)
    ]
    for cond, table in (("feature", sweep.reports), ("random", sweep.random_reports)):
        for c, reps in table.items():
            lines += [
                json.dumps({"study_id": sid, "condition": cond, "coefficient": c, "report": r})
                for sid, r in zip(sweep.study_ids, reps, strict=True)
            ]
    atomic_write(out / "reports.jsonl", "\n".join(lines) + "\n")
    evals = {f: evaluate_control(sweep, f, goal=goal) for f in FINDINGS}  # type: ignore[arg-type]
    auto = finding is None
    if auto:
        finding = max(FINDINGS, key=lambda f: (evals[f].best() or {}).get("target_rate", 0.0))
    ev = evaluate_control(
        sweep,
        finding,
        goal=goal,
        model=model,
        processor=proc,
        studies=items,  # type: ignore[arg-type]
        batch_size=batch_size,
    )
    ev.write(out)
    rows = ["finding,condition,coefficient,on_rate,off_rate,off_target_rate,parse_rate"]
    for f, e in evals.items():
        rows += [
            f"{f},{r.condition},{r.coefficient},{r.on_rate:.4f},{r.off_rate:.4f},{r.off_target_rate:.4f},"
            f"{r.parse_rate:.4f}"
            for r in e.rows
        ]
    atomic_write(out / "metrics_all_findings.csv", "\n".join(rows) + "\n")
    ev.plot(
        out / "steering.png",
        title=f"feature {feature} → {finding}{' (auto)' if auto else ''}, {len(items)} studies",
    )
    meta = {k: v for k, v in vars(sweep).items() if k not in ("reports", "random_reports", "baseline")}
    meta.update(
        {
            "finding": finding,
            "finding_auto_selected": auto,
            "sae": str(sae_path),
            "model": model_name,
            "studies": studies,
            "best": ev.best(),
        }
    )
    atomic_write(out / "sweep.json", json.dumps(meta, indent=2))
    b = ev.best()
    typer.echo(
        f"feature {feature} → {finding}{' (auto-selected)' if auto else ''}: best coef {b.get('coefficient')} "
        f"{goal}-rate {b.get('target_rate', 0):.2f} (random {b.get('random_target_rate')}), off-target "
        f"{b.get('off_target_rate', 0):.3f}, parse {b.get('parse_rate', 0):.2f}; wrote {out}"
    )
