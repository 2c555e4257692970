"""Interpretation: feature statistics, concept alignment, auto-interp, steering, knowledge maps.

The interpretation pipeline's entry points are exported lazily (importing this package stays cheap)::

    from sae_rad_ext.interpret import interpret, InterpretConfig, best_feature_per_concept
"""

from __future__ import annotations

from sae_rad_ext.util.lazy import lazy_exports

_LAZY = {
    "interpret": "sae_rad_ext.interpret.run",
    "InterpretConfig": "sae_rad_ext.interpret.run",
    "InterpretResult": "sae_rad_ext.interpret.run",
    "AlignmentRow": "sae_rad_ext.interpret.concepts",
    "AlignmentTable": "sae_rad_ext.interpret.concepts",
    "align_concepts": "sae_rad_ext.interpret.concepts",
    "best_feature_per_concept": "sae_rad_ext.interpret.concepts",
    "FeatureStats": "sae_rad_ext.interpret.stats",
    "FeatureStatsAccumulator": "sae_rad_ext.interpret.stats",
    "ScanConfig": "sae_rad_ext.interpret.scan",
    "scan": "sae_rad_ext.interpret.scan",
    "ScoreStore": "sae_rad_ext.interpret.score_store",
    "collect_examples": "sae_rad_ext.interpret.feature_examples",
    "EnrichmentExplainer": "sae_rad_ext.interpret.explain",
    "LLMExplainer": "sae_rad_ext.interpret.explain",
    "CallableExplainer": "sae_rad_ext.interpret.explain",
    "FeatureContext": "sae_rad_ext.interpret.explain",
    "detection_score": "sae_rad_ext.interpret.score",
    "fuzzing_score": "sae_rad_ext.interpret.score",
    "ChatClient": "sae_rad_ext.interpret.llm_client",
}

__all__, __getattr__ = lazy_exports(__name__, _LAZY)
