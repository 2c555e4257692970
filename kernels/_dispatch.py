"""Backend → primitive module (same function names in both)."""

from __future__ import annotations


def ops(backend: str):
    if backend == "triton":
        from . import _triton_ops

        return _triton_ops
    from . import _torch_ops

    return _torch_ops
