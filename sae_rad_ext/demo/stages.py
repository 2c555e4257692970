"""The demo's later stages (interpretation, steering, knowledge maps, publishing) and its printed summary.

Each stage calls the public entry point of its module; a stage whose module does not exist in this
install is skipped with a printed reason that is also recorded in ``summary.json["skipped_stages"]``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.util.progress import prefixed

if TYPE_CHECKING:
    from sae_rad_ext.adapters.hooked import HookedMaira2
    from sae_rad_ext.adapters.maira2 import Maira2ForConditionalGeneration
    from sae_rad_ext.adapters.prompts import Maira2Processor
    from sae_rad_ext.saes.matryoshka import RadMatryoshkaSAE

__all__ = ["StageContext", "print_summary", "run_later_stages"]


@dataclass
class StageContext:
    """What the earlier demo stages produced, handed to the later ones."""

    cfg: Any
    """The :class:`~sae_rad_ext.demo.pipeline.DemoConfig`."""
    ui: Any
    """The pipeline's display: ``ui.bars`` (a :class:`~sae_rad_ext.util.progress.RichProgress`, the
    progress callback), stage timings, skip records."""
    model: Maira2ForConditionalGeneration
    """The HF ``Maira2ForConditionalGeneration`` (eval mode)."""
    hooked: HookedMaira2
    """``HookedMaira2`` over ``model``."""
    processor: Maira2Processor
    """``Maira2Processor`` with the model's tokenizer."""
    splits: dict[str, list[Study]]
    """Phantom studies by split (``train`` / ``validate`` / ``test``)."""
    sae: RadMatryoshkaSAE
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
        "release_sae": str(rel.folder),
        "n_feature_records": len(run),
    }


def _interpretation(ctx: StageContext) -> dict[str, Any]:
    from sae_rad_ext.interpret.run import InterpretConfig, interpret

    quick = ctx.cfg.quick_mode
    studies = ctx.splits["validate"] + ctx.splits["test"]
    icfg = InterpretConfig(
        hook_name=f"blocks.{ctx.layer}.hook_resid_post",
        stats_positions=ctx.cfg.positions,
        batch_size=16,
        generate=False,
        max_features=8 if quick else 48,
        n_examples=3 if quick else 6,
        n_detect=4 if quick else 10,
        scorers=("detection",),
        heatmaps=True,
        seed=ctx.cfg.seed,
        # interpret's fit/holdout split is the patient split salted apart from the phantoms' own
        # (evaluation.splits): half of validate+test fits the thresholds, the other half is the holdout.
        holdout_fraction=0.5,
    )
    res = interpret(
        ctx.hooked,
        ctx.sae,
        studies,
        ctx.cfg.out / "interpret",
        icfg,
        processor=ctx.processor,
        progress=prefixed(ctx.ui.bars, "interpret"),
    )
    ctx.summary["_interpretation_run"] = res.run
    best = {
        c: {
            k: getattr(r, k)
            for k in ("feature", "kind", "f1", "precision", "recall", "auroc", "iou", "pointing", "leaks")
        }
        for c, r in res.best.items()
    }
    table = [["concept", "feature", "kind", "F1", "AUROC", "IoU", "pointing"]] + [
        [c, b["feature"], b["kind"], b["f1"], b["auroc"], b["iou"], b["pointing"]] for c, b in best.items()
    ]
    return {
        "path": str(res.out),
        "n_studies": len(studies),
        "generated_kind": False,
        "best_feature_per_concept": best,
        "n_explained": len(res.explanations),
        "n_interpretable": sum(c.interpretable for c in res.confidence.values()),
        "table": table,
    }


def _steering(ctx: StageContext) -> dict[str, Any]:
    from sae_rad_ext.steering.benchmark import run_steering_benchmark

    quick = ctx.cfg.quick_mode
    # features=None: the benchmark picks each finding's feature on validation studies (the interpretation's
    # choice was fitted on test studies, see _interpretation) and reports on test studies.
    features = None
    bench = run_steering_benchmark(
        ctx.hooked,
        ctx.processor,
        ctx.sae,
        ctx.splits["validate"],
        ctx.splits["test"],
        features=features,
        coefficients=(4.0,) if quick else (2.0, 8.0),
        findings=("pleural_effusion",) if quick else FINDINGS,
        n_studies=4 if quick else 12,
        max_new_tokens=24 if quick else ctx.cfg.max_new_tokens,
        batch_size=16,
        seed=ctx.cfg.seed,
        out=ctx.cfg.out / "steering",
        progress=prefixed(ctx.ui.bars, "steering"),
    )
    out = bench.summary()
    out["table"] = [
        ["finding", "feature", "coef", "on-rate", "random on", "off-target", "random off", "goal"]
    ] + [
        [
            f,
            v["feature"],
            v["coefficient"],
            v["on_rate"],
            v["random_on_rate"],
            v["off_target_rate"],
            v["random_off_target_rate"],
            v["goal_met"],
        ]
        for f, v in out["per_finding"].items()
    ]
    out["path"] = str(ctx.cfg.out / "steering")
    return out


def _knowledge_maps(ctx: StageContext) -> dict[str, Any]:
    from dataclasses import asdict

    from sae_rad_ext.maps.knowledge_maps import MapConfig, build_knowledge_maps

    quick = ctx.cfg.quick_mode
    mcfg = MapConfig(
        techniques=("probe",) if quick else ("probe", "patch"),
        n_pairs=2 if quick else 6,
        pair_lateral_prob=0.0,
        pair_prior_prob=0.0,
        patch_roles=("image:frontal", "prompt", "report"),
        seed=ctx.cfg.seed,
    )
    studies = ctx.splits["validate"] + ctx.splits["test"]
    maps = build_knowledge_maps(
        ctx.hooked,
        studies,
        ctx.cfg.out / "knowledge_maps",
        mcfg,
        processor=ctx.processor,
        progress=prefixed(ctx.ui.bars, "knowledge map"),
    )
    rec = asdict(maps.recommendation)
    return {
        "path": str(ctx.cfg.out / "knowledge_maps"),
        "techniques": list(mcfg.techniques),
        "recommended_layer": rec["layer"],
        "probe_layer": rec["probe_layer"],
        "patch_layer": rec["patch_layer"],
        "sae_layer": ctx.layer,
        "reasons": rec["reasons"],
        "seconds": maps.seconds,
        "table": [["recommended layer", "probe layer", "patch layer", "demo SAE layer"]]
        + [[rec["layer"], rec["probe_layer"], rec["patch_layer"], ctx.layer]],
    }


_STAGES: dict[str, tuple[str, Any]] = {
    "interpretation": ("sae_rad_ext.interpret.run", _interpretation),
    "steering": ("sae_rad_ext.steering.benchmark", _steering),
    "knowledge_maps": ("sae_rad_ext.maps.knowledge_maps", _knowledge_maps),
}
"""Stage name → (module it needs, ``fn(ctx) -> dict``)."""


def run_later_stages(ctx: StageContext) -> None:
    """Interpretation → steering → knowledge maps → publishing, each if its module is installed (else skipped, recorded)."""
    ui = ctx.ui
    for name, (module, fn) in _STAGES.items():
        if _module(module) is None:
            ui.skip(name, f"module {module} is not in this install")
            continue
        _guarded(ctx, name, fn)
    _guarded(ctx, "publish", _publish)
    ctx.summary.pop("_interpretation_run", None)


def _guarded(ctx: StageContext, name: str, fn: Any) -> None:
    """Run a later stage; a failure is printed and recorded in ``summary["failed_stages"]`` (the SAE and
    the numbers before it are kept) instead of losing the whole run."""
    with ctx.ui.stage(name):
        try:
            ctx.summary[name] = fn(ctx)
        except Exception as e:  # noqa: BLE001 - recorded and shown, never silent
            import traceback

            ctx.summary.setdefault("failed_stages", {})[name] = f"{type(e).__name__}: {e}"
            ctx.ui.console.print(f"[red]stage {name!r} failed: {type(e).__name__}: {e}")
            ctx.ui.console.print(traceback.format_exc(limit=6))


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
