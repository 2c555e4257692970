"""Steering benchmark over every finding: best feature → validation sweep → held-out on/off-target rates.

    bench = run_steering_benchmark(hooked, processor, sae, val_studies, test_studies, out="runs/steer")
    bench.findings["pleural_effusion"].on_rate, .random_on_rate, .off_target_rate

Per finding:

1. the feature: given (``features={finding: id}``, e.g. from the interpretation module's
   ``best_feature_per_concept``) or picked on the validation studies by :func:`select_features` (best
   F1 of the per-study max activation at image positions vs the study's labels);
2. the coefficient: a sweep on validation studies (feature and equal-norm random direction; the plot);
   the chosen one is the highest on-rate with an off-target rate ≤ ``max_off_target`` and a parse rate
   ≥ ``min_parse_rate`` (else the best on-rate minus off-target rate minus missing parse rate);
3. the reported numbers: that coefficient on held-out test studies, feature vs random control.

Optionally (``descriptions=``) the feature-based report comparison of
:mod:`sae_rad_ext.steering.feature_reports` on the same split.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens import SAE

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.data.labels import binarize
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.evaluation.metrics import best_f1_threshold
from sae_rad_ext.steering.evaluate import ControlEval, evaluate_control
from sae_rad_ext.steering.feature_reports import (
    FeatureReportEval,
    feature_report_benchmark,
    study_truth_labels,
)
from sae_rad_ext.steering.steer import strength_sweep, study_feature_activations
from sae_rad_ext.util.files import write_json
from sae_rad_ext.util.progress import ProgressCallback, prefixed

__all__ = ["FindingSteering", "SelectedFeature", "SteeringBenchmark", "run_steering_benchmark", "select_features"]

class SelectedFeature(NamedTuple):
    """The feature :func:`select_features` picked for one finding."""

    feature: int
    """SAE latent index."""
    f1: float
    """Study-level F1 of the latent's per-study max at its best threshold, on the selection studies."""


def select_features(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Any],
    sae: SAE[Any],
    findings: Sequence[str] = FINDINGS,
    *,
    positions: Selection = "image",
    with_report: bool = False,
    batch_size: int = 16,
) -> dict[str, SelectedFeature]:
    """``{finding: SelectedFeature(feature, f1)}``: the latent whose per-study max over ``positions`` best predicts the
    finding (F1 at its best threshold on these studies). Use validation studies, report elsewhere.

    ``positions="report", with_report=True`` picks the feature that fires where the reference report is
    teacher-forced — the feature that *writes* the finding (a detection score that leaks the report, but
    for steering that is the point)."""
    acts = study_feature_activations(
        model,
        processor,
        studies,
        sae,
        range(sae.cfg.d_sae),
        positions=positions,
        with_report=with_report,
        batch_size=batch_size,
    )
    truth = [binarize(t) for t in study_truth_labels(studies)]
    alive = (acts > 0).any(0).nonzero()[:, 0].tolist()
    out: dict[str, SelectedFeature] = {}
    for f in findings:
        y = torch.tensor([t.get(f, 0) == 1 for t in truth])
        if not bool(y.any()):
            continue
        if not alive:
            out[f] = SelectedFeature(0, 0.0)
            continue
        _, f1s = best_f1_threshold(acts[:, alive], y, floor=0.0)
        # on equal F1 the highest feature id wins (as a max over (F1, id) pairs)
        j = len(alive) - 1 - int(f1s.flip(0).argmax())
        out[f] = SelectedFeature(int(alive[j]), float(f1s[j]))
    return out


@dataclass
class FindingSteering:
    """Held-out steering result for one finding's feature."""

    finding: str
    feature: int
    selection_f1: float | None
    """Validation F1 that picked the feature (None when the caller gave it)."""
    coefficient: float
    """Chosen on validation (in ``unit``)."""
    absolute: float
    on_rate: float
    """Test: share of studies without the finding (unsteered report) that state it after steering."""
    random_on_rate: float
    off_target_rate: float
    """Test: share of (study, other finding) labels changed."""
    random_off_target_rate: float
    off_target_any: float
    parse_rate: float
    baseline_parse_rate: float
    fluency_loss: float | None
    baseline_fluency_loss: float | None
    n_eligible: int
    """Test studies whose unsteered report lacks the finding (the on-rate's denominator)."""
    goal_met: bool
    """on-rate ≥ 0.8, off-target ≤ 0.1 and parse rate ≥ ``min_parse_rate`` (word loops do not count)."""
    validation: list[dict[str, Any]] = field(default_factory=list)
    """The validation sweep's rows (feature and random, every coefficient)."""
    examples: list[dict[str, str]] = field(default_factory=list)
    """First test studies: unsteered, feature-steered and random-steered report."""


@dataclass
class SteeringBenchmark:
    """Every finding's steering result plus the optional feature-based report comparison."""

    findings: dict[str, FindingSteering]
    coefficients: list[float]
    unit: str
    positions: str
    n_val: int
    n_test: int
    seconds: float
    feature_reports: FeatureReportEval | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """Compact numbers for a demo summary."""
        d = {
            f: {
                k: getattr(r, k)
                for k in (
                    "feature",
                    "coefficient",
                    "on_rate",
                    "random_on_rate",
                    "off_target_rate",
                    "random_off_target_rate",
                    "parse_rate",
                    "goal_met",
                )
            }
            for f, r in self.findings.items()
        }
        out: dict[str, Any] = {
            "per_finding": d,
            "unit": self.unit,
            "positions": self.positions,
            "n_test": self.n_test,
            "seconds": self.seconds,
        }
        if self.feature_reports is not None:
            fr = self.feature_reports
            out["feature_reports"] = {
                "feature_f1": fr.feature_f1,
                "model_f1": fr.model_f1,
                "feature_macro_f1": fr.feature_macro_f1,
                "model_macro_f1": fr.model_macro_f1,
            }
        return out

    def write(self, out: str | Path) -> Path:
        return write_json(Path(out) / "steering_benchmark.json", self.to_dict(), indent=2, default=str)


def _choose(ev: ControlEval, max_off_target: float, min_parse_rate: float) -> float:
    rows = [r for r in ev.rows if r.condition == "feature" and r.absolute != 0]
    ok = [r for r in rows if r.off_target_rate <= max_off_target and r.parse_rate >= min_parse_rate]
    if ok:
        return max(ok, key=lambda r: (r.on_rate, -abs(r.coefficient))).coefficient
    return max(
        rows,
        key=lambda r: (
            r.on_rate - r.off_target_rate - max(0.0, min_parse_rate - r.parse_rate),
            -abs(r.coefficient),
        ),
    ).coefficient


def run_steering_benchmark(
    model: HookedMaira2,
    processor: Maira2Processor,
    sae: SAE[Any],
    val_studies: Sequence[Any],
    test_studies: Sequence[Any],
    *,
    features: Mapping[str, Any] | None = None,
    descriptions: Mapping[int, Any] | None = None,
    coefficients: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    unit: str = "max_act",
    positions: Selection = "all",
    findings: Sequence[str] = FINDINGS,
    n_studies: int = 40,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    max_off_target: float = 0.1,
    min_parse_rate: float = 0.5,
    seed: int = 0,
    out: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> SteeringBenchmark:
    """Run the per-finding benchmark (see the module docstring); ``out`` also gets one plot per finding
    (``steering_<finding>.png``, validation sweep) and ``steering_benchmark.json``. ``progress``: each
    sweep's generated reports under stage ``"<finding> validation: strength sweep"`` / ``"<finding>
    test: strength sweep"``."""
    t0 = time.perf_counter()
    val, test = list(val_studies)[:n_studies], list(test_studies)[:n_studies]
    if not val or not test:
        raise ValueError(f"need validation and test studies; got {len(val)} and {len(test)}")
    chosen = (
        {f: (int(getattr(i, "feature", i)), None) for f, i in features.items()}
        if features is not None
        else select_features(model, processor, list(val_studies), sae, findings, batch_size=batch_size)
    )
    gen = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "positions": positions,
        "seed": seed,
    }
    results: dict[str, FindingSteering] = {}
    for f in findings:
        if f not in chosen:
            continue
        feat, sel_f1 = chosen[f]
        sw = strength_sweep(
            model,
            processor,
            val,
            sae,
            feat,
            [0.0, *coefficients],
            unit=unit,
            progress=prefixed(progress, f"{f} validation"),
            **gen,
        )
        ev = evaluate_control(sw, f)
        if out is not None:
            ev.plot(
                Path(out) / f"steering_{f}.png", title=f"{f}: feature {feat} (validation, {len(val)} studies)"
            )
        c = _choose(ev, max_off_target, min_parse_rate)
        tsw = strength_sweep(
            model,
            processor,
            test,
            sae,
            feat,
            [c],
            unit=unit,
            max_act=sw.scale,
            progress=prefixed(progress, f"{f} test"),
            **gen,
        )
        tev = evaluate_control(tsw, f, model=model, processor=processor, studies=test, batch_size=batch_size)
        fr = next(r for r in tev.rows if r.condition == "feature")
        rr = next(r for r in tev.rows if r.condition == "random")
        results[f] = FindingSteering(
            f,
            feat,
            sel_f1,
            c,
            fr.absolute,
            fr.on_rate,
            rr.on_rate,
            fr.off_target_rate,
            rr.off_target_rate,
            fr.off_target_any,
            fr.parse_rate,
            tev.baseline_parse_rate,
            fr.fluency_loss,
            tev.baseline_fluency_loss,
            fr.n_off_before,
            fr.on_rate >= 0.8 and fr.off_target_rate <= 0.1 and fr.parse_rate >= min_parse_rate,
            [asdict(r) for r in ev.rows],
            [
                {
                    "study_id": tsw.study_ids[i],
                    "unsteered": tsw.baseline[i],
                    "feature": tsw.reports[c][i],
                    "random": tsw.random_reports.get(c, [""] * len(test))[i],
                }
                for i in range(min(3, len(test)))
            ],
        )
    fre = None
    if descriptions:
        fre = feature_report_benchmark(
            model,
            processor,
            sae,
            descriptions,
            list(val_studies),
            test,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    bench = SteeringBenchmark(
        results,
        [float(c) for c in coefficients],
        unit,
        str(positions),
        len(val),
        len(test),
        time.perf_counter() - t0,
        fre,
    )
    if out is not None:
        bench.write(out)
    return bench
