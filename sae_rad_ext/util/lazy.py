"""Lazy package exports: a subpackage names its public objects and their modules, and each module is
imported on first attribute access (so ``import sae_rad_ext.interpret`` stays cheap)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package``: ``exports`` maps each public name to the dotted module
    that defines it. Unknown names raise ``AttributeError`` as a normal module would."""
    table = dict(exports)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's required name
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(table), __getattr__
