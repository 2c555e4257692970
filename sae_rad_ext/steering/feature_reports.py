"""SAE-Rad-style feature-based reports: compile a FINDINGS section from the features active on a study.

    reporter = calibrate_feature_reporter(descriptions, val_acts, val_truth, features)
    texts = reporter.compile(test_acts)                         # one findings paragraph per study
    ev = feature_report_benchmark(model, processor, sae, descriptions, val_studies, test_studies)
    ev.feature_f1, ev.model_f1                                  # per-finding F1 vs truth, side by side

``descriptions`` maps a feature id to a short text: an auto-interp explanation, or a concept label
turned into a sentence (:func:`concept_descriptions`). The labeler reads which finding(s) each
description asserts; a feature is used for a finding only if, on the validation split, ``activation >=
threshold`` predicts that finding with F1 ≥ ``min_f1`` (the threshold is the F1-maximising one there).
On a study the descriptions of the used features above their thresholds are joined (strongest first,
duplicates dropped). Activations are pooled over image positions by default, so nothing of any report
leaks into a feature-based report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.data.labels import binarize, label_report
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.evaluation.metrics import best_f1_threshold, f1_by_key
from sae_rad_ext.steering.steer import steered_generate, study_feature_activations
from sae_rad_ext.util.files import write_json

__all__ = [
    "FINDING_SENTENCES",
    "FeatureReportEval",
    "FeatureReporter",
    "calibrate_feature_reporter",
    "concept_descriptions",
    "feature_report_benchmark",
    "study_truth_labels",
]

FINDING_SENTENCES: dict[str, str] = {
    "cardiomegaly": "The heart is enlarged.",
    "pleural_effusion": "There is a pleural effusion.",
    "pneumothorax": "There is a pneumothorax.",
    "lung_opacity": "There is a focal lung opacity.",
    "pacemaker": "A cardiac pacemaker is present.",
    "support_lines_tubes": "Support lines and tubes are present.",
}
"""A positive sentence per finding, for features known only by their concept label."""


def concept_descriptions(feature_concepts: Mapping[int, str] | Mapping[str, Any]) -> dict[int, str]:
    """Descriptions from concept labels: ``{feature: finding}``, or ``{finding: row}`` where ``row`` has a
    ``.feature`` (e.g. ``best_feature_per_concept(...)`` of the interpretation module) or is an int."""
    out: dict[int, str] = {}
    for k, v in feature_concepts.items():
        feat, concept = (k, v) if isinstance(k, int) else (int(getattr(v, "feature", v)), k)
        if concept not in FINDING_SENTENCES:
            raise ValueError(f"no sentence for concept {concept!r}; known: {list(FINDING_SENTENCES)}")
        out[int(feat)] = FINDING_SENTENCES[concept]
    return out


def _findings_in(text: str) -> list[str]:
    lab = binarize(label_report(text))
    return [k for k in FINDINGS if lab.get(k) == 1]


@dataclass
class FeatureReporter:
    """Calibrated description + threshold per used feature."""

    features: list[int]
    """Column order of the activation matrices ``compile`` takes."""
    descriptions: dict[int, str]
    thresholds: dict[int, float]
    """Used features only: activation threshold (fire when ``act >= threshold``; the validation F1 cut of
    :func:`sae_rad_ext.evaluation.metrics.best_f1_threshold` with ``floor=0``)."""
    finding_of: dict[int, str] = field(default_factory=dict)
    """The finding each used feature's description asserts (what it was calibrated on)."""
    val_f1: dict[int, float] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    """Feature → why it is not used (no finding in its description, weak on validation)."""

    def compile(self, acts: torch.Tensor) -> list[str]:
        """``acts [n_studies, len(features)]`` → one findings paragraph per study ("" when nothing fires)."""
        if acts.dim() != 2 or acts.shape[1] != len(self.features):
            raise ValueError(
                f"acts must be [n_studies, {len(self.features)}] (columns = reporter.features); "
                f"got {tuple(acts.shape)}"
            )
        col = {f: j for j, f in enumerate(self.features)}
        texts = []
        for row in acts.tolist():
            hits = [
                (row[col[f]] / max(t, 1e-12) if t > 0 else row[col[f]], f)
                for f, t in self.thresholds.items()
                if row[col[f]] >= t
            ]
            seen, parts = set(), []
            for _, f in sorted(hits, reverse=True):
                d = self.descriptions[f].strip()
                d = d if d.endswith(".") else d + "."
                if d not in seen:
                    seen.add(d)
                    parts.append(d[:1].upper() + d[1:])
            texts.append(" ".join(parts))
        return texts


def calibrate_feature_reporter(
    descriptions: Mapping[int, Any],
    val_acts: torch.Tensor,
    val_truth: Sequence[Mapping[str, int | None]],
    features: Sequence[int],
    *,
    min_f1: float = 0.5,
) -> FeatureReporter:
    """Pick a threshold per described feature on the validation split (see the module docstring).

    ``val_acts [n_val, len(features)]``; ``val_truth``: one label dict per validation study.
    """
    features = [int(f) for f in features]
    if val_acts.shape != (len(val_truth), len(features)):
        raise ValueError(
            f"val_acts must be [{len(val_truth)} studies, {len(features)} features]; "
            f"got {tuple(val_acts.shape)}"
        )
    missing = [f for f in descriptions if int(f) not in features]
    if missing:
        raise ValueError(f"described features {missing} have no activation column; features={features}")
    rep = FeatureReporter(features, {int(k): str(getattr(v, "text", v)) for k, v in descriptions.items()}, {})
    for j, f in enumerate(features):
        if f not in rep.descriptions:
            continue
        found = _findings_in(rep.descriptions[f])
        if not found:
            rep.skipped[f] = "the labeler reads no positive finding in its description"
            continue
        y = torch.tensor([binarize(dict(t)).get(found[0], 0) == 1 for t in val_truth])
        if not bool(y.any()):
            rep.skipped[f] = f"no validation study has {found[0]}"
            continue
        thr_t, f1_t = best_f1_threshold(val_acts[:, j], y, floor=0.0)
        thr, f1 = float(thr_t), float(f1_t)
        if f1 < min_f1:
            rep.skipped[f] = f"validation F1 {f1:.2f} < min_f1 {min_f1} for {found[0]}"
            continue
        rep.thresholds[f], rep.finding_of[f], rep.val_f1[f] = thr, found[0], f1
    return rep


def study_truth_labels(studies: Sequence[Any]) -> list[dict[str, int | None]]:
    """Per study its ``labels`` (planted / dataset truth), else the labeler on its reference report."""
    return [dict(s.labels) if getattr(s, "labels", None) else label_report(s.report) for s in studies]


@dataclass
class FeatureReportEval:
    """Feature-based reports vs the model's own generated reports, against the studies' truth."""

    feature_f1: dict[str, float]
    """Per-finding F1 of the labeler on the compiled feature-based reports."""
    model_f1: dict[str, float]
    """Per-finding F1 of the labeler on the model's own greedy reports of the same studies."""
    feature_macro_f1: float
    model_macro_f1: float
    covered: list[str]
    """Findings with at least one calibrated feature (others can never be stated by feature reports)."""
    n_val: int
    n_test: int
    positions: str
    reporter: FeatureReporter
    examples: list[dict[str, str]] = field(default_factory=list)
    """A few test studies: id, compiled report, model report, reference report."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        return write_json(Path(path), self.to_dict(), indent=2, default=str)


def _report_f1(texts: Sequence[str], truth: Sequence[Mapping[str, int | None]]) -> dict[str, float]:
    """Per-finding F1 of the labeler on ``texts`` against ``truth`` (uncertain counts as positive)."""
    pred = [binarize(label_report(t)) for t in texts]
    return f1_by_key(pred, [binarize(dict(t)) for t in truth], FINDINGS)


def feature_report_benchmark(
    model: HookedMaira2,
    processor: Maira2Processor,
    sae: SAE[Any],
    descriptions: Mapping[int, Any],
    val_studies: Sequence[Any],
    test_studies: Sequence[Any],
    *,
    positions: Selection = "image",
    min_f1: float = 0.5,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    model_reports: Sequence[str] | None = None,
    n_examples: int = 5,
) -> FeatureReportEval:
    """Calibrate on ``val_studies``, compile reports for ``test_studies``, and compare their per-finding
    F1 with the model's own generated reports (pass ``model_reports`` to reuse ones you have)."""
    if not descriptions:
        raise ValueError("descriptions is empty: give {feature: text} (or concept_descriptions({...}))")
    feats = sorted(int(f) for f in descriptions)
    val_studies, test_studies = list(val_studies), list(test_studies)
    kw = {"positions": positions, "batch_size": batch_size}
    val_acts = study_feature_activations(model, processor, val_studies, sae, feats, **kw)
    test_acts = study_feature_activations(model, processor, test_studies, sae, feats, **kw)
    reporter = calibrate_feature_reporter(
        descriptions, val_acts, study_truth_labels(val_studies), feats, min_f1=min_f1
    )
    texts = reporter.compile(test_acts)
    if model_reports is None:
        model_reports = steered_generate(
            model, processor, test_studies, None, [], max_new_tokens=max_new_tokens, batch_size=batch_size
        ).reports
    truth = study_truth_labels(test_studies)
    ff, mf = _report_f1(texts, truth), _report_f1(model_reports, truth)
    ex = [
        {"study_id": str(s.study_id), "feature_report": t, "model_report": m, "reference": s.report}
        for s, t, m in list(zip(test_studies, texts, model_reports, strict=True))[:n_examples]
    ]
    return FeatureReportEval(
        ff,
        mf,
        sum(ff.values()) / len(ff),
        sum(mf.values()) / len(mf),
        sorted(set(reporter.finding_of.values())),
        len(val_studies),
        len(test_studies),
        str(positions),
        reporter,
        ex,
    )
