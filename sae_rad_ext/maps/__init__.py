"""Knowledge maps: where a finding lives in the model (probes, UMAP, lesioning, patching, saliency).

Entry points are exported lazily::

    from sae_rad_ext.maps import MapConfig, build_knowledge_maps, recommend_layer
"""

from __future__ import annotations

from sae_rad_ext.util.lazy import lazy_exports

_LAZY = {
    "TECHNIQUES": "sae_rad_ext.maps.knowledge_maps",
    "KnowledgeMaps": "sae_rad_ext.maps.knowledge_maps",
    "MapConfig": "sae_rad_ext.maps.knowledge_maps",
    "Recommendation": "sae_rad_ext.maps.knowledge_maps",
    "build_knowledge_maps": "sae_rad_ext.maps.knowledge_maps",
    "recommend_layer": "sae_rad_ext.maps.knowledge_maps",
}

__all__, __getattr__ = lazy_exports(__name__, _LAZY)
