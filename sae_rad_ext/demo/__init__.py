"""The offline demo: phantoms → tiny MAIRA-2 → SAE through SAELens → interpretation, steering, publishing.

``from sae_rad_ext.demo import DemoConfig, run_demo``. Importing this package stays cheap; the
pipeline is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DemoConfig": "sae_rad_ext.demo.pipeline",
    "run_demo": "sae_rad_ext.demo.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_rad_ext.demo' has no attribute {name!r}")
