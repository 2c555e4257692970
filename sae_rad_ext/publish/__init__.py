"""Publishing: SAELens releases, Neuronpedia files, HTML dashboards.

The data contract is :mod:`sae_rad_ext.records` (``FeatureRecord``, ``InterpretationRun``);
interpretation produces it, every publisher here consumes it.
"""

from sae_rad_ext.publish.html import build_site, render_overlay
from sae_rad_ext.publish.neuronpedia import (
    NeuronpediaSettings,
    steering_vector_payloads,
    write_bulk_export,
    write_dashboard_batches,
    write_neuronpedia,
)
from sae_rad_ext.publish.release import register_release, write_model_card, write_release
from sae_rad_ext.records import (
    ConceptScore,
    Explanation,
    FeatureExample,
    FeatureRecord,
    InterpretationRun,
    QuantileGroup,
    records_from_sae,
)

__all__ = [
    "ConceptScore",
    "Explanation",
    "FeatureExample",
    "FeatureRecord",
    "InterpretationRun",
    "NeuronpediaSettings",
    "QuantileGroup",
    "build_site",
    "records_from_sae",
    "register_release",
    "render_overlay",
    "steering_vector_payloads",
    "write_bulk_export",
    "write_dashboard_batches",
    "write_model_card",
    "write_neuronpedia",
    "write_release",
]
