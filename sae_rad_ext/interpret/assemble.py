"""Interpretation results → :class:`~sae_rad_ext.records.InterpretationRun` and ``features.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_rad_ext.interpret.concepts import AlignmentTable
from sae_rad_ext.interpret.confidence import Confidence
from sae_rad_ext.interpret.stats import FeatureStats
from sae_rad_ext.records import (
    ConceptScore,
    Explanation,
    FeatureExample,
    InterpretationRun,
    QuantileGroup,
    records_from_sae,
)
from sae_rad_ext.util.files import atomic_open

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_rad_ext.protocols import Unembedding

__all__ = ["build_records", "features_table", "quantile_groups"]


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def quantile_groups(
    values: list[float],
    examples: list[FeatureExample | None],
    vmax: float,
    n_groups: int = 4,
    per_group: int = 3,
) -> list[QuantileGroup]:
    """Equal-width activation intervals of ``(0, vmax]``; ``bin_contains`` is the share of the reservoir
    (a uniform sample of firing studies) whose maximum falls in the interval."""
    if vmax <= 0 or not values:
        return []
    groups = []
    for g in range(n_groups):
        lo, hi = vmax * g / n_groups, vmax * (g + 1) / n_groups
        inside = [i for i, v in enumerate(values) if lo < v <= hi or (g == 0 and v == lo)]
        exs = [examples[i] for i in inside if examples[i] is not None][:per_group]
        groups.append(QuantileGroup(round(lo, 6), round(hi, 6), round(len(inside) / len(values), 6), exs))
    return groups


def build_records(
    sae: SAE[Any],
    model: Unembedding | None,
    stats: FeatureStats,
    table: AlignmentTable,
    conf: dict[int, Confidence],
    expl: dict[int, Explanation],
    examples: dict[tuple[int, str], FeatureExample],
    roles: dict[int, dict[str, list[str]]],
    feats: list[int],
    hook: str,
) -> InterpretationRun:
    """One record per SAE latent: statistics for all, examples / explanations / concepts for ``feats``;
    weights-only fields (decoder norms, logits when ``model`` has ``W_U``, neighbours) from the SAE."""
    try:
        base = records_from_sae(sae, model, with_vectors=True)
    except ValueError:  # the model has no W_U, or one whose width is not the SAE's d_in: no logits
        base = records_from_sae(sae, None, with_vectors=True)
    frac, mean, fire = stats.frac_nonzero, stats.mean_activation, stats.fire_count
    chosen = set(feats)
    recs = []
    for r in base.records:
        f = r.index
        r.frac_nonzero = float(frac[f])
        r.max_activation = float(stats.act_max[f])
        r.mean_activation = float(mean[f])
        r.hist_edges, r.hist_counts = stats.histogram(f)
        r.role_frequency = {k: round(v, 8) for k, v in stats.role_frequency(f).items()}
        r.notes["n_firing_positions"] = int(fire[f])
        if stats.n_firing_studies is not None:
            r.notes["n_firing_studies"] = int(stats.n_firing_studies[f])
        if f in chosen:
            rl = roles.get(f, {})
            r.top_examples = [examples[(f, s)] for s in rl.get("top", []) if (f, s) in examples]
            sv = [v for v in stats.sample_values[f].tolist() if v > 0]
            ss = [stats.study_ids[i] for i in stats.sample_study[f].tolist() if i >= 0][: len(sv)]
            r.quantile_groups = quantile_groups(
                sv, [examples.get((f, s)) for s in ss], float(stats.act_max[f])
            )
            if f in expl:
                r.explanations = [expl[f]]
            c = conf.get(f)
            if c is not None:
                r.notes.update(
                    {
                        "recsae_confidence": _num(c.confidence),
                        "recsae_interpretable": c.interpretable,
                        "recsae_dictionary": ", ".join(c.dictionary),
                    }
                )
        rows = table.for_feature(f)[:8]
        r.concepts = [
            ConceptScore(
                concept=x.concept,
                f1=_num(x.f1),
                auroc=_num(x.auroc),
                precision=_num(x.precision),
                recall=_num(x.recall),
                iou=_num(x.iou),
                positions=x.kind + (" (leaks)" if x.leaks else ""),
            )
            for x in rows
        ]
        recs.append(r)
    return InterpretationRun(
        recs,
        {
            **base.meta,
            "hook_name": hook,
            "dead_features": stats.dead_features(),
            "dense_features": stats.dense_features(),
        },
    )


def features_table(path: str | Path, run: InterpretationRun, conf: dict[int, Confidence]) -> Path:
    """``features.csv``: one row per explained feature — explanation, scores, best concept, F1, AUROC, IoU."""
    path = Path(path)
    score_keys = sorted({k for r in run.records for e in r.explanations for k in e.scores})
    cols = [
        "feature",
        "frac_nonzero",
        "max_activation",
        "explanation",
        *score_keys,
        "best_concept",
        "positions",
        "concept_f1",
        "concept_auroc",
        "concept_iou",
        "recsae_confidence",
    ]
    with atomic_open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in run.records:
            if not r.explanations:
                continue
            e, c = r.explanations[0], r.best_concept
            cf = conf.get(r.index)
            w.writerow(
                [
                    r.index,
                    f"{r.frac_nonzero:.6g}",
                    f"{r.max_activation:.6g}",
                    e.text,
                    *[e.scores.get(k, "") for k in score_keys],
                    c.concept if c else "",
                    c.positions if c else "",
                    _fmt(c.f1 if c else None),
                    _fmt(c.auroc if c else None),
                    _fmt(c.iou if c else None),
                    _fmt(cf.confidence if cf else None),
                ]
            )
    return path


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
