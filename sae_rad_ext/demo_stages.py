"""The demo's later stages (interpretation, steering, knowledge maps, publishing) and its printed summary.

Each stage calls the public entry point of its module; a stage whose module does not exist in this
install is skipped with a printed reason that is also recorded in ``summary.json["skipped_stages"]``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_rad_ext.data.study import FINDINGS, Study

__all__ = ["StageContext", "print_summary", "run_later_stages"]


@dataclass
class StageContext:
    """What the earlier demo stages produced, handed to the later ones."""

    cfg: Any
    """The :class:`~sae_rad_ext.demo.DemoConfig`."""
    ui: Any
    """Progress bars, stage timings, skip records."""
    model: Any
    """The HF ``Maira2ForConditionalGeneration`` (eval mode)."""
    hooked: Any
    """``HookedMaira2`` over ``model``."""
    processor: Any
    """``Maira2Processor`` with the model's tokenizer."""
    splits: dict[str, list[Study]]
    """Phantom studies by split (``train`` / ``validate`` / ``test``)."""
    sae: Any
    """The trained Matryoshka SAE (inference class, loaded from ``sae_dir``)."""
    sae_dir: Path
    layer: int
    x_test: torch.Tensor
    """``[n, d_in]`` test activations at the SAE's positions."""
    summary: dict[str, Any]
    """The summary being built (stages add their sections)."""


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            return None
        raise


def _publish(ctx: StageContext) -> dict[str, Any]:
    from sae_rad_ext.publish import build_site, records_from_sae, write_release

    run = ctx.summary.get("_interpretation_run")
    if run is None:
        run = records_from_sae(ctx.sae, ctx.hooked)
        run.meta.update(
            {
                "model_name": "tiny-maira2-phantom",
                "hook_name": f"blocks.{ctx.layer}.hook_resid_post",
                "positions": ctx.cfg.positions,
                "dataset": "phantom",
                "explainer": None,
                "note": "weights-only records (no interpretation stage in this install)",
            }
        )
    site = build_site(run, ctx.cfg.out / "dashboard", title="sae-rad demo: tiny MAIRA-2 on phantoms")
    rel = write_release(
        ctx.sae,
        ctx.cfg.out / "release",
        release="sae-rad-demo-phantom",
        model_name="tiny-maira2-phantom",
        positions=ctx.cfg.positions,
        dataset_path=str(ctx.cfg.out / "data"),
        eval_activations=ctx.x_test[:20000],
        description="Matryoshka BatchTopK SAE on a tiny MAIRA-2 trained on planted-truth phantoms",
    )
    return {
        "dashboard": str(site),
        "release": str(ctx.cfg.out / "release"),
        "release_sae": str(getattr(rel, "path", rel)),
        "n_feature_records": len(run),
    }


def run_later_stages(ctx: StageContext) -> None:
    """Interpretation → steering → knowledge maps → publishing, each if its module is installed."""
    ui = ctx.ui
    found = {n: _module(f"sae_rad_ext.interpret.{n}") for n in ("concepts", "steering", "knowledge_map")}
    for name in ("interpretation", "steering", "knowledge_maps"):
        key = {"interpretation": "concepts", "steering": "steering", "knowledge_maps": "knowledge_map"}[name]
        hook = _STAGES.get(name)
        if found[key] is None or hook is None:
            ui.skip(name, f"module sae_rad_ext.interpret.{key} is not in this install yet")
            continue
        with ui.stage(name):
            ctx.summary[name] = hook(ctx, found[key])
    with ui.stage("publish"):
        ctx.summary["publish"] = _publish(ctx)
    ctx.summary.pop("_interpretation_run", None)


_STAGES: dict[str, Any] = {}
"""Stage name → ``fn(ctx, module) -> dict``; filled as the interpretation modules land."""


# ---- printed summary ----------------------------------------------------------------------------
def _f(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def print_summary(summary: dict[str, Any], console: Any) -> None:
    """Rich tables of every number in ``summary`` (the same values as ``summary.json``)."""
    from rich.table import Table

    rep, sae, layers = summary.get("reports", {}), summary.get("sae", {}), summary.get("layers", {})
    t = Table(title=f"Tiny MAIRA-2: generated test reports vs planted truth (n={rep.get('n_studies')})")
    for c in (
        "finding",
        "F1",
        "precision",
        "recall",
        "chance F1",
        "labeler on true reports",
        "SAE best latent F1",
    ):
        t.add_column(c, justify="left" if c == "finding" else "right")
    for k in FINDINGS:
        t.add_row(
            k,
            _f(rep.get("f1", {}).get(k)),
            _f(rep.get("precision", {}).get(k)),
            _f(rep.get("recall", {}).get(k)),
            _f(rep.get("chance_f1", {}).get(k)),
            _f(rep.get("reference_f1", {}).get(k)),
            _f(sae.get("best_latent_f1", {}).get(k)),
        )
    console.print(t)

    t = Table(
        title="Per layer, frontal image tokens, held-out studies: linear probe / quick TopK-SAE best latent F1"
    )
    t.add_column("hook")
    for k in FINDINGS:
        t.add_column(k[:12], justify="right")
    for name, v in layers.items():
        t.add_row(name, *[f"{_f(v['probe_f1'][k])} / {_f(v['best_latent_f1'][k])}" for k in FINDINGS])
    console.print(t)

    if sae:
        t = Table(title=f"Matryoshka SAE {sae.get('hook_name')} ({sae.get('positions')}), test positions")
        for c in ("level (latents)", "explained variance", "L0", "EV image tokens", "L0 image tokens"):
            t.add_column(c, justify="right")
        for i, end in enumerate(sae.get("level_ends", [])):
            t.add_row(
                str(end),
                _f(sae["explained_variance"][i], 3),
                _f(sae["l0"][i], 1),
                _f(sae["explained_variance_image_tokens"][i], 3),
                _f(sae["l0_image_tokens"][i], 1),
            )
        console.print(t)
    for section in ("interpretation", "steering", "knowledge_maps"):
        if isinstance(summary.get(section), dict) and summary[section].get("table"):
            t = Table(title=section)
            rows = summary[section]["table"]
            for c in rows[0]:
                t.add_column(str(c))
            for r in rows[1:]:
                t.add_row(*[_f(x, 3) for x in r])
            console.print(t)
    t = Table(title="Stage timings (s)")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in summary.get("timings_s", {}).items():
        t.add_row(k, _f(float(v), 1))
    console.print(t)
    for k, v in summary.get("skipped_stages", {}).items():
        console.print(f"[yellow]skipped {k}: {v}")
    out = Path(summary["config"]["out"])
    console.print(f"Output: {out}/summary.json, model/, sae/, dashboard/, release/, reports/, data/")
