"""``interpret(model, sae, studies, out)``: the whole pipeline, resumable, writing every output.

Stages (each skipped when its output exists and its inputs' fingerprint matches ``stages.json``):

1. ``scan`` — one streaming pass (``scan/``: statistics, study-level scores per position kind, map/mask
   overlap; see :mod:`~sae_rad_ext.interpret.scan`);
2. ``align`` — concept alignment (``alignment.jsonl/.csv``) and RecSAE confidence (``confidence.jsonl``);
3. ``examples`` — a targeted second model pass over the chosen features' top / quantile-sampled / held-out
   studies (``examples.jsonl``, ``images/``, ``heatmaps/``);
4. ``explain`` + ``score`` — explanations (``explanations/{hook}_latent{i}.txt``) and scores with a
   shuffled-explanation baseline (``scores/<scorer>/{hook}_latent{i}.txt``, delphi's layout);
5. records — the :class:`~sae_rad_ext.records.InterpretationRun` (``run.json``,
   ``features.jsonl``, ``arrays.safetensors`` in ``out``), ``features.csv`` (feature, explanation, scores,
   best concept, F1) and ``summary.json`` (best feature per concept and position kind).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.interpret.assemble import build_records, features_table
from sae_rad_ext.interpret.autointerp import explain_and_score
from sae_rad_ext.interpret.autointerp import summary as summarize
from sae_rad_ext.interpret.concepts import (
    AlignmentRow,
    AlignmentTable,
    align_concepts,
    best_feature_per_concept,
)
from sae_rad_ext.interpret.confidence import Confidence, feature_confidence
from sae_rad_ext.interpret.scan import MapOverlap, ScanConfig, scan
from sae_rad_ext.interpret.score_store import ScoreStore
from sae_rad_ext.interpret.stats import FeatureStats
from sae_rad_ext.records import Explanation, FeatureExample, InterpretationRun
from sae_rad_ext.util.files import write_json, write_jsonl
from sae_rad_ext.util.progress import ProgressCallback

__all__ = ["InterpretConfig", "InterpretResult", "interpret"]

SCAN_VERSION = 3
"""Bumped when the scan's outputs change meaning (2: salted holdout hash; 3: patient-level split of
``evaluation.splits``), so old scans are redone."""


@dataclass
class InterpretConfig:
    """Options of :func:`interpret` (the CLI's flags)."""

    hook_name: str | None = None
    """Hook the SAE reads; default: the SAE's ``cfg.metadata.hook_name``."""
    stats_positions: str | None = None
    """Positions of the statistics / top examples (a TokenRoles selection); default: the SAE's
    ``cfg.metadata.positions`` / ``position_selection`` (what ``sae-rad train`` writes) if set, else
    ``maira2_sae_paper_with_images`` (no prompt boilerplate)."""
    concepts: tuple[str, ...] = (*FINDINGS, "no_finding")
    batch_size: int = 4
    generate: bool = True
    max_new_tokens: int = 96
    top_n: int = 20
    holdout_fraction: float = 0.5
    max_features: int = 256
    """Features that get examples, explanations and scores (best-aligned and most frequent first)."""
    n_examples: int = 10
    n_detect: int = 20
    """Held-out activating and as many silent studies per detection score."""
    explainer: str = "offline"
    """``offline`` or ``llm`` (needs an LLM client); a callable passed to :func:`interpret` overrides it."""
    scorers: tuple[str, ...] = ("detection", "fuzzing")
    """Any of ``detection``, ``fuzzing``, ``embedding``, ``llm``."""
    heatmaps: bool = True
    seed: int = 0

    def scan_config(self, hook: str, positions: str | None = None) -> ScanConfig:
        return ScanConfig(
            hook_name=hook,
            stats_positions=self.stats_positions or positions or "maira2_sae_paper_with_images",
            concepts=tuple(self.concepts),
            batch_size=self.batch_size,
            generate=self.generate,
            max_new_tokens=self.max_new_tokens,
            top_n=self.top_n,
            holdout_fraction=self.holdout_fraction,
        )


@dataclass
class InterpretResult:
    """What :func:`interpret` produced (everything is also on disk under ``out``)."""

    out: Path
    run: InterpretationRun
    stats: FeatureStats
    alignment: AlignmentTable
    best: dict[str, AlignmentRow]
    """Concept → fit-chosen best feature over the non-leaking kinds (holdout metrics)."""
    best_by_kind: dict[str, dict[str, AlignmentRow]]
    """Kind → concept → best feature in that kind (``report_tf`` included, marked as leaking)."""
    confidence: dict[int, Confidence]
    explanations: dict[int, Explanation]
    scores: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    """Feature → scorer → metrics (``…_shuffled`` keys for the baseline)."""


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sae_fingerprint(sae: SAE[Any]) -> str:
    w = sae.W_enc.detach().float()
    return _fingerprint(
        sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else str(sae.cfg),
        float(w.sum()),
        float(w.abs().sum()),
        float(sae.W_dec.detach().float().sum()),
    )


def _iter(studies: Any) -> Iterable[Study]:
    """A fresh pass over ``studies``; a list stays a list (its length is the scan's progress total)."""
    if callable(studies) and not hasattr(studies, "__iter__"):
        return studies()
    if hasattr(studies, "reopen"):
        return studies.reopen()
    return studies if isinstance(studies, Sequence) else iter(studies)


def interpret(
    model: HookedMaira2,
    sae: SAE[Any],
    studies: Sequence[Study] | Callable[[], Iterable[Study]] | Any,
    out: str | Path,
    cfg: InterpretConfig | None = None,
    *,
    explainer: Callable | None = None,
    llm_client: Any = None,
    embedder: Any = None,
    studies_key: str | None = None,
    processor: Maira2Processor | None = None,
    progress: ProgressCallback | None = None,
) -> InterpretResult:
    """Run the pipeline on ``studies`` (a list, a zero-argument factory, or a reader with ``reopen()``;
    iterated twice: the scan and the targeted examples pass).

    ``studies_key`` names the study source for resumption (a list's study ids are used when omitted; a
    factory without a key always re-scans). ``explainer`` (``FeatureContext -> str | Explanation``)
    overrides ``cfg.explainer``; ``llm_client`` (:class:`~sae_rad_ext.interpret.llm_client.ChatClient`)
    enables the ``llm`` explainer / scorer; ``embedder`` replaces MiniLM in the embedding scorer.

    ``progress`` gets the stages that run, in order: ``"scan studies"`` (studies; total known for a
    list), ``"examples"`` (studies of the targeted pass), ``"explain"`` and ``"score"`` (features).
    Resumed stages send nothing."""
    cfg = cfg or InterpretConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = sae.cfg.metadata  # SAELens metadata: a missing key reads as None
    hook = cfg.hook_name or md.hook_name
    if not hook:
        raise ValueError(
            "no hook name: the SAE's cfg.metadata has no hook_name; pass InterpretConfig(hook_name=...)"
        )
    if studies_key is None and isinstance(studies, Sequence):
        studies_key = _fingerprint([s.study_id for s in studies])
    stages_path = out / "stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    scfg = cfg.scan_config(hook, md.positions or md.position_selection)
    fp_scan = _fingerprint(
        SCAN_VERSION, _sae_fingerprint(sae), studies_key or f"unkeyed-{id(studies)}", asdict(scfg)
    )
    scan_dir = out / "scan"
    if stages.get("scan") != fp_scan or not (scan_dir / "stats.safetensors").is_file():
        stages.pop("examples", None)
        acc, overlap = scan(
            model,
            sae,
            _iter(studies),
            scan_dir,
            scfg,
            processor=processor,
            progress=progress,
        )
        stats = acc.result()
        stats.save(scan_dir)
        overlap.save(scan_dir / "overlap.safetensors")
        stages["scan"] = fp_scan
        write_json(stages_path, stages, default=str)
    stats = FeatureStats.load(scan_dir)
    overlap = MapOverlap.load(scan_dir / "overlap.safetensors")
    store = ScoreStore(scan_dir)
    concepts = list(cfg.concepts)
    table = align_concepts(store, concepts, overlap=overlap)
    table.save(out)
    best = best_feature_per_concept(table)
    best_by_kind = {k: best_feature_per_concept(table, k, allow_leaks=True) for k in store.kinds}
    feats = _choose_features(stats, table, best_by_kind, cfg.max_features)
    fit, hold = store.split_mask("fit"), store.split_mask("holdout")
    S = store.block("stats")  # [n, d_sae] (study-level; one column per feature)
    fit_st = [s for s, m in zip(store.studies, fit.tolist(), strict=True) if m]
    hold_st = [s for s, m in zip(store.studies, hold.tolist(), strict=True) if m]
    conf = {
        f: feature_confidence(f, S[fit, f], fit_st, S[hold, f], hold_st, n=cfg.n_detect, seed=cfg.seed)
        for f in feats
    }
    write_jsonl(out / "confidence.jsonl", [asdict(c) for c in conf.values()], default=str)
    # ---- examples (second, targeted model pass) ----
    wanted, roles = _wanted_examples(stats, S, store, feats, hold, cfg)
    fp_ex = _fingerprint(fp_scan, sorted((k, sorted(v)) for k, v in wanted.items()), cfg.heatmaps)
    if stages.get("examples") != fp_ex or not (out / "examples.jsonl").is_file():
        from sae_rad_ext.interpret.feature_examples import collect_examples

        ex = collect_examples(
            model,
            sae,
            _iter(studies),
            wanted,
            hook,
            out=out,
            processor=processor,
            batch_size=cfg.batch_size,
            heatmaps=cfg.heatmaps,
            progress=progress,
        )
        write_jsonl(
            out / "examples.jsonl",
            [{"feature": f, **asdict(e)} for (f, _), e in sorted(ex.items())],
            default=str,
        )
        stages["examples"] = fp_ex
        write_json(stages_path, stages, default=str)
    examples: dict[tuple[int, str], FeatureExample] = {}
    with open(out / "examples.jsonl") as fh:
        for line in fh:
            d = json.loads(line)
            f = d.pop("feature")
            examples[(f, d["study_id"])] = FeatureExample(**d)
    # ---- explain + score ----
    expl, scores = explain_and_score(
        cfg,
        feats,
        stats,
        S,
        store,
        fit,
        hold,
        examples,
        roles,
        hook,
        out,
        explainer,
        llm_client,
        embedder,
        progress,
    )
    run = build_records(sae, model, stats, table, conf, expl, examples, roles, feats, hook)
    run.meta.update(
        {
            "hook_name": hook,
            "positions": scfg.stats_positions,
            "n_studies": len(store),
            "n_tokens": stats.n_total_positions,
            "explainer": _explainer_name(cfg, explainer),
            "scorers": list(cfg.scorers),
            "interpretation_config": asdict(cfg),
        }
    )
    run.save(out)
    features_table(out / "features.csv", run, conf)
    summary = summarize(best, best_by_kind, scores, expl, conf, stats)
    write_json(out / "summary.json", summary, default=str)
    return InterpretResult(out, run, stats, table, best, best_by_kind, conf, expl, scores)


def _explainer_name(cfg: InterpretConfig, explainer: Any) -> str:
    return "callable" if explainer is not None else cfg.explainer


def _choose_features(stats: FeatureStats, table: AlignmentTable, best_by_kind: dict, k: int) -> list[int]:
    alive = set(torch.nonzero(stats.fire_count > 0).flatten().tolist())
    must = [r.feature for by in best_by_kind.values() for r in by.values() if r.feature in alive]
    key: dict[int, float] = {}
    for r in table.rows:
        if r.leaks is None and r.feature in alive:
            key[r.feature] = max(key.get(r.feature, -1.0), r.fit_f1)
    freq = stats.frac_nonzero
    rest = sorted(alive, key=lambda f: (-key.get(f, -1.0), -float(freq[f])))
    out = list(dict.fromkeys(must + rest))
    return sorted(out[: max(k, len(set(must)))])


def _wanted_examples(
    stats: FeatureStats,
    S: torch.Tensor,
    store: ScoreStore,
    feats: list[int],
    hold: torch.Tensor,
    cfg: InterpretConfig,
) -> tuple[dict[str, list[tuple[int, int]]], dict[int, dict[str, list[str]]]]:
    """Which (feature, position) to collect per study, and per feature which study ids play which part
    (``top``: published top examples, ``sample``: quantile groups, ``holdout``: fuzzing)."""
    wanted: dict[str, set[tuple[int, int]]] = {}
    roles: dict[int, dict[str, list[str]]] = {}
    ids = stats.study_ids
    hold_idx = torch.nonzero(hold).flatten()
    for f in feats:
        r: dict[str, list[str]] = {"top": [], "sample": [], "holdout": []}
        for v, si, p in zip(
            stats.top_values[f].tolist(),
            stats.top_study[f].tolist(),
            stats.top_position[f].tolist(),
            strict=True,
        ):
            if si >= 0 and v > 0 and len(r["top"]) < cfg.n_examples:
                wanted.setdefault(ids[si], set()).add((f, p))
                r["top"].append(ids[si])
        for v, si, p in zip(
            stats.sample_values[f].tolist(),
            stats.sample_study[f].tolist(),
            stats.sample_position[f].tolist(),
            strict=True,
        ):
            if si >= 0 and v > 0 and len(r["sample"]) < 2 * cfg.n_examples:
                wanted.setdefault(ids[si], set()).add((f, p))
                r["sample"].append(ids[si])
        col = S[hold_idx, f]
        k = min(5, int((col > 0).sum()))
        for i in hold_idx[col.topk(k).indices].tolist() if k else []:
            wanted.setdefault(store.studies[i].study_id, set()).add((f, -1))
            r["holdout"].append(store.studies[i].study_id)
        roles[f] = r
    # a study's (feature, -1) pair is redundant when the same feature already has a position there
    out = {}
    for sid, pairs in wanted.items():
        have = {f for f, p in pairs if p >= 0}
        out[sid] = sorted((f, p) for f, p in pairs if p >= 0 or f not in have)
    return out, roles
