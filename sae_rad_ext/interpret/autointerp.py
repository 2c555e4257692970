"""Explaining and scoring the chosen features (the ``explain`` + ``score`` stages of :func:`interpret`).

:func:`explain_and_score` builds a :class:`~sae_rad_ext.interpret.explain.FeatureContext` per feature from the
fit split, runs the explainer, then scores each explanation on held-out studies with every requested scorer
and the same scorer given a shuffled (another feature's) explanation; it writes delphi's layout
``explanations/{hook}_latent{i}.txt`` and ``scores/<scorer>/{hook}_latent{i}.txt``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_rad_ext.interpret.score import (
    EmbeddingJudge,
    KeywordJudge,
    LLMJudge,
    detection_score,
    fuzzing_score,
    shuffled,
)
from sae_rad_ext.records import Explanation, FeatureExample
from sae_rad_ext.util.files import atomic_write_text, to_json
from sae_rad_ext.util.progress import ProgressCallback, Ticker

if TYPE_CHECKING:  # run.py imports this module
    from sae_rad_ext.interpret.concepts import AlignmentRow
    from sae_rad_ext.interpret.confidence import Confidence
    from sae_rad_ext.interpret.llm_client import ChatClient
    from sae_rad_ext.interpret.run import InterpretConfig
    from sae_rad_ext.interpret.score_store import ScoreStore
    from sae_rad_ext.interpret.stats import FeatureStats

__all__ = ["explain_and_score", "summary"]


def explain_and_score(
    cfg: InterpretConfig,
    feats: list[int],
    stats: FeatureStats,
    S: torch.Tensor,  # [n_studies, d_sae] study-level scores
    store: ScoreStore,
    fit: torch.Tensor,  # [n_studies] bool
    hold: torch.Tensor,  # [n_studies] bool
    examples: dict[tuple[int, str], FeatureExample],
    roles: dict[int, dict[str, list[str]]],
    hook: str,
    out: Path,
    explainer: Callable[..., Any] | None,
    llm_client: ChatClient | None,
    embedder: Callable[[list[str]], torch.Tensor] | None,
    progress: ProgressCallback | None = None,
) -> tuple[dict[int, Explanation], dict[int, dict[str, dict[str, float]]]]:
    """Explain each feature of ``feats`` then score every explanation (see the module docstring);
    returns ``(explanations, scores)``. ``progress``: stage ``"explain"`` then ``"score"``, each counting
    features."""
    from sae_rad_ext.interpret.explain import EnrichmentExplainer, FeatureContext, LLMExplainer

    if explainer is None:
        if cfg.explainer == "llm":
            if llm_client is None:
                raise ValueError("explainer='llm' needs an llm_client (ChatClient.from_env() / --llm-url)")
            explainer = LLMExplainer(llm_client)
        elif cfg.explainer == "offline":
            explainer = EnrichmentExplainer()
        else:
            raise ValueError(f"explainer must be 'offline' or 'llm' (or a callable); got {cfg.explainer!r}")
    else:
        from sae_rad_ext.interpret.explain import CallableExplainer

        explainer = (
            explainer
            if isinstance(explainer, CallableExplainer | EnrichmentExplainer | LLMExplainer)
            else CallableExplainer(explainer)
        )
    fit_idx, hold_idx = torch.nonzero(fit).flatten(), torch.nonzero(hold).flatten()
    fit_st = [store.studies[i] for i in fit_idx.tolist()]
    expl: dict[int, Explanation] = {}
    tick = Ticker(progress, "explain", len(feats))
    for f in feats:
        col = S[fit_idx, f]
        k = min(cfg.n_examples, int((col > 0).sum()))
        top = col.topk(k) if k else None
        ctx = FeatureContext(
            feature=f,
            top=[fit_st[i] for i in top.indices.tolist()] if top is not None else [],
            top_values=top.values.tolist() if top is not None else [],
            background=fit_st,
            examples=[examples[(f, s)] for s in roles[f]["top"] if (f, s) in examples],
            role_frequency=stats.role_frequency(f),
            hook_name=hook,
        )
        expl[f] = explainer(ctx)
        tick(1)
    judges: dict[str, Any] = {}
    if "detection" in cfg.scorers:
        judges["detection"] = KeywordJudge()
    if "embedding" in cfg.scorers:
        judges["embedding"] = EmbeddingJudge(embedder)
    if "llm" in cfg.scorers:
        if llm_client is None:
            raise ValueError("the llm scorer needs an llm_client (ChatClient.from_env() / --llm-url)")
        judges["llm"] = LLMJudge(llm_client)
    base = shuffled({f: e.text for f, e in expl.items()}, seed=cfg.seed)
    scores: dict[int, dict[str, dict[str, float]]] = {}
    g = torch.Generator().manual_seed(cfg.seed)
    hold_st = [store.studies[i] for i in hold_idx.tolist()]
    tick = Ticker(progress, "score", len(feats))
    for f in feats:
        col = S[hold_idx, f]
        k = min(cfg.n_detect, int((col > 0).sum()))
        pos = [hold_st[i] for i in col.topk(k).indices.tolist()] if k else []
        silent = torch.nonzero(col <= 0).flatten()
        neg = [hold_st[i] for i in silent[torch.randperm(len(silent), generator=g)[: cfg.n_detect]].tolist()]
        sc: dict[str, dict[str, float]] = {}
        for name, judge in judges.items():
            sc[name] = detection_score(expl[f].text, pos, neg, judge)
            sc[f"{name}_shuffled"] = detection_score(base[f], pos, neg, judge)
        if "fuzzing" in cfg.scorers:
            exs = [examples[(f, s)] for s in roles[f]["holdout"] if (f, s) in examples]
            sc["fuzzing"] = fuzzing_score(expl[f].text, exs, seed=cfg.seed)
            sc["fuzzing_shuffled"] = fuzzing_score(base[f], exs, seed=cfg.seed)
        scores[f] = sc
        e = expl[f]
        for name, m in sc.items():
            for metric in ("f1", "auroc"):
                if metric in m and not math.isnan(m[metric]):
                    e.scores[f"{name}_{metric}"] = round(m[metric], 4)
        safe_hook = hook.replace("/", "_")
        atomic_write_text(out / "explanations" / f"{safe_hook}_latent{f}.txt", to_json(e.text))
        for name in {n.removesuffix("_shuffled") for n in sc}:
            atomic_write_text(
                out / "scores" / name / f"{safe_hook}_latent{f}.txt",
                to_json(
                    {
                        "explanation": e.text,
                        "metrics": sc[name],
                        "shuffled_explanation": base[f],
                        "shuffled_metrics": sc.get(f"{name}_shuffled"),
                    }
                ),
            )
        tick(1)
    return expl, scores


def summary(
    best: dict[str, AlignmentRow],
    best_by_kind: dict[str, dict[str, AlignmentRow]],
    scores: dict[int, dict[str, dict[str, float]]],
    expl: dict[int, Explanation],
    conf: dict[int, Confidence],
    stats: FeatureStats,
) -> dict[str, Any]:
    """The interpretation run's ``summary.json`` body: best feature per concept (overall and per position
    kind), mean detection/fuzzing scores per scorer, and counts of explained, interpretable, dead and dense
    features."""
    def mean(key: str, metric: str) -> float | None:
        v = [
            s[key][metric]
            for s in scores.values()
            if key in s and metric in s[key] and not math.isnan(s[key][metric])
        ]
        return sum(v) / len(v) if v else None

    return {
        "best_feature_per_concept": {c: asdict(r) for c, r in best.items()},
        "best_by_kind": {k: {c: asdict(r) for c, r in by.items()} for k, by in best_by_kind.items()},
        "scores_mean": {
            k: {m: mean(k, m) for m in ("f1", "auroc", "balanced_accuracy")}
            for k in sorted({n for s in scores.values() for n in s})
        },
        "n_explained": len(expl),
        "n_interpretable": sum(c.interpretable for c in conf.values()),
        "dead": len(stats.dead_features()),
        "dense": len(stats.dense_features()),
    }


