"""Evaluation: shared metrics (F1, AUROC, best thresholds), the patient-level split, the phantom benchmark.

Imported lazily so that low layers can use :mod:`sae_rad_ext.evaluation.metrics` without pulling in
the benchmark (which sits above the SAE and activation layers).
"""

from __future__ import annotations

from sae_rad_ext.util.lazy import lazy_exports

_LAZY = {
    "BinaryMetrics": "sae_rad_ext.evaluation.metrics",
    "auroc": "sae_rad_ext.evaluation.metrics",
    "best_f1_threshold": "sae_rad_ext.evaluation.metrics",
    "binary_metrics": "sae_rad_ext.evaluation.metrics",
    "f1": "sae_rad_ext.evaluation.metrics",
    "f1_by_key": "sae_rad_ext.evaluation.metrics",
    "precision_recall_f1": "sae_rad_ext.evaluation.metrics",
    "assign_split": "sae_rad_ext.evaluation.splits",
    "holdout_mask": "sae_rad_ext.evaluation.splits",
    "split_position": "sae_rad_ext.evaluation.splits",
    "split_unit": "sae_rad_ext.evaluation.splits",
    "ReportEval": "sae_rad_ext.evaluation.phantom_benchmark",
    "evaluate_reports": "sae_rad_ext.evaluation.phantom_benchmark",
    "probe_layers": "sae_rad_ext.evaluation.phantom_benchmark",
}

__all__, __getattr__ = lazy_exports(__name__, _LAZY)
