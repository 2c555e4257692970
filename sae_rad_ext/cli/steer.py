"""``sae-rad steer``: strength sweep of one SAE feature, directional-control metrics and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from sae_rad_ext.cli.app import app

_HELP = """Steer generated reports with one SAE feature at several strengths (beside an equal-norm random
direction) and measure, with the finding labeler, how often the target finding turns on / off and how
often other findings change. Writes reports.jsonl, metrics.json/.csv (target finding),
metrics_all_findings.csv, steering.png and sweep.json to --out.

--studies: any source `open_studies` reads (MIMIC-CXR-JPG, datasets folder, manifest, DICOM, phantom
folder) or `phantom:n=40,seed=1,image_size=128` for phantoms generated on the fly."""


def _load_sae(path: Path) -> Any:
    from sae_lens import SAE

    import sae_rad_ext  # noqa: F401  (registers our architectures)

    if (path / "cfg.json").is_file():
        return SAE.load_from_disk(str(path))
    if (path / "ae.pt").is_file():
        from sae_rad_ext.publish.release import register_release

        register_release("_sae_rad_steer_input", path.parent, [path.name])
        return SAE.from_pretrained("_sae_rad_steer_input", path.name)
    raise typer.BadParameter(
        f"{path} holds neither cfg.json (SAELens) nor ae.pt (maira-2-sae format)", param_hint="--sae"
    )


def _studies(source: str, split: str | None, limit: int) -> list[Any]:
    if source.startswith("phantom:"):
        from sae_rad_ext.data.phantom.generator import generate_studies, parse_phantom_source

        try:
            kw: dict[str, Any] = parse_phantom_source(source)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--studies") from None
        n = min(int(kw.pop("n", limit)), limit)
        return list(generate_studies(n, int(kw.pop("seed", 0)), **kw))
    from sae_rad_ext.data.readers import open_studies

    kw = {"max_studies": limit}
    if split:
        kw["split"] = split
    return list(open_studies(source, **kw))


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
    from rich.progress import Progress

    from sae_rad_ext.adapters import HookedMaira2, Maira2Processor
    from sae_rad_ext.data.study import FINDINGS
    from sae_rad_ext.steering.evaluate import _atomic_write, evaluate_control
    from sae_rad_ext.steering.steer import strength_sweep

    if unit not in ("absolute", "max_act"):
        raise typer.BadParameter(f"--unit must be absolute or max_act, got {unit!r}", param_hint="--unit")
    if goal not in ("on", "off"):
        raise typer.BadParameter(f"--goal must be on or off, got {goal!r}", param_hint="--goal")
    if finding is not None and finding not in FINDINGS:
        raise typer.BadParameter(
            f"unknown finding {finding!r}; expected one of {', '.join(FINDINGS)}", param_hint="--finding"
        )
    coefficients = _coefs(coef)
    sae = _load_sae(sae_path)
    if not 0 <= feature < sae.cfg.d_sae:
        raise typer.BadParameter(
            f"feature {feature} is outside the SAE's 0..{sae.cfg.d_sae - 1}", param_hint="--feature"
        )
    model = (HookedMaira2.tiny() if model_name == "tiny" else HookedMaira2.from_pretrained(model_name)).to(
        device
    )
    if model.cfg.d_model != sae.cfg.d_in:
        raise typer.BadParameter(
            f"the SAE reads d_in={sae.cfg.d_in} but the model's d_model is {model.cfg.d_model}; "
            "pass the model the SAE was trained on (--model)",
            param_hint="--model",
        )
    sae = sae.to(device)
    proc = Maira2Processor.from_model_config(model.model.config, model.tokenizer)
    items = _studies(studies, split, max_studies)
    if not items:
        raise typer.BadParameter(f"{studies} yielded no studies", param_hint="--studies")
    n_runs = 1 + sum(1 for c in coefficients if c != 0 or clamp) * (1 if no_random or clamp else 2)
    with Progress() as bar, torch.no_grad():
        task = bar.add_task("generating", total=n_runs * len(items))
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
            tick=lambda n: bar.advance(task, n),
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
    _atomic_write(out / "reports.jsonl", "\n".join(lines) + "\n")
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
    _atomic_write(out / "metrics_all_findings.csv", "\n".join(rows) + "\n")
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
    _atomic_write(out / "sweep.json", json.dumps(meta, indent=2))
    b = ev.best()
    typer.echo(
        f"feature {feature} → {finding}{' (auto-selected)' if auto else ''}: best coef {b.get('coefficient')} "
        f"{goal}-rate {b.get('target_rate', 0):.2f} (random {b.get('random_target_rate')}), off-target "
        f"{b.get('off_target_rate', 0):.3f}, parse {b.get('parse_rate', 0):.2f}; wrote {out}"
    )
