"""Steering: SAE-feature interventions, steered generation, control metrics, feature-based reports.

Entry points are exported lazily (importing this package stays cheap)::

    from sae_rad_ext.steering import Intervention, steered_generate, run_steering_benchmark
"""

from __future__ import annotations

from sae_rad_ext.util.lazy import lazy_exports

_LAZY = {
    "Intervention": "sae_rad_ext.steering.interventions",
    "intervention_hooks": "sae_rad_ext.steering.interventions",
    "SteeredReports": "sae_rad_ext.steering.steer",
    "SweepResult": "sae_rad_ext.steering.steer",
    "random_direction": "sae_rad_ext.steering.steer",
    "steered_generate": "sae_rad_ext.steering.steer",
    "strength_sweep": "sae_rad_ext.steering.steer",
    "study_feature_activations": "sae_rad_ext.steering.steer",
    "ControlEval": "sae_rad_ext.steering.evaluate",
    "ControlRow": "sae_rad_ext.steering.evaluate",
    "evaluate_control": "sae_rad_ext.steering.evaluate",
    "FindingSteering": "sae_rad_ext.steering.benchmark",
    "SelectedFeature": "sae_rad_ext.steering.benchmark",
    "SteeringBenchmark": "sae_rad_ext.steering.benchmark",
    "run_steering_benchmark": "sae_rad_ext.steering.benchmark",
    "select_features": "sae_rad_ext.steering.benchmark",
    "FeatureReporter": "sae_rad_ext.steering.feature_reports",
    "FeatureReportEval": "sae_rad_ext.steering.feature_reports",
    "calibrate_feature_reporter": "sae_rad_ext.steering.feature_reports",
    "feature_report_benchmark": "sae_rad_ext.steering.feature_reports",
}

__all__, __getattr__ = lazy_exports(__name__, _LAZY)
