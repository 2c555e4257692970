"""sae-rad-ext: SAELens for radiology multimodal LLMs (MAIRA-2 and the LLaVA family).

Importing this package registers its SAE architectures with SAELens (the only import-time side effect).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
