"""Crash a resumable writer at a chosen moment, from the test side (the package carries no kill hooks).

The activation cache renames ``.shards/shard_k.partial`` to ``shard_k`` when a shard is complete and
then records it by ``os.replace``-ing ``manifest-rank<r>.json`` into place. :func:`arm` wraps
``os.replace`` so that ``crash()`` runs

- ``point="recorded"``: right after the ``n``-th manifest write (n shards recorded in this process);
- ``point="partial"``: right before the ``n``-th ``*.partial`` rename (that shard half-written).

In-process tests pass a ``crash`` that raises; :data:`DRIVER` runs ``sae-rad`` in a subprocess armed
to SIGKILL itself, so nothing but the kernel ends the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

POINTS = ("recorded", "partial")


def arm(point: str, n: int, crash: Callable[[], None]) -> Callable[[], None]:
    """Patch ``os.replace`` to call ``crash()`` at the ``n``-th ``point``; returns a function that undoes it."""
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    real = os.replace
    seen = [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if point == "partial" and Path(src).name.endswith(".partial"):
            seen[0] += 1
            if seen[0] == n:
                crash()
        real(src, dst, *args, **kwargs)
        if point == "recorded" and Path(dst).name.startswith("manifest-rank"):
            seen[0] += 1
            if seen[0] == n:
                crash()

    os.replace = replace

    def disarm() -> None:
        os.replace = real

    return disarm


DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import _crash
_crash.arm({point!r}, {n!r}, lambda: os.kill(os.getpid(), signal.SIGKILL))
from sae_rad_ext.cli.app import app
app(sys.argv[1:], prog_name="sae-rad")
"""
"""``python -c`` source that runs ``sae-rad <argv>`` armed to SIGKILL itself; format with ``tests`` (this
folder), ``point`` and ``n``."""
