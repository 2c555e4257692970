"""The offline demo: phantoms → tiny MAIRA-2 → SAE through SAELens → interpretation, steering, publishing.

``from sae_rad_ext.demo import DemoConfig, run_demo``. Importing this package stays cheap; the
pipeline is imported on first use.
"""

from __future__ import annotations

from sae_rad_ext.util.lazy import lazy_exports

_LAZY = {
    "DemoConfig": "sae_rad_ext.demo.pipeline",
    "run_demo": "sae_rad_ext.demo.pipeline",
}

__all__, __getattr__ = lazy_exports(__name__, _LAZY)
