"""Reusable dense ``[d_sae, d_in]`` buffers for the ``W_dec`` gradient.

Autograd needs a dense gradient for a dense parameter. Allocating a fresh one (256 MiB at 16384×4096
fp32) costs page faults comparable to the whole sparse backward on a 2-core CPU, so each weight keeps a
small pool of buffers. A buffer is reused only when **nothing else references its memory** (its storage
use count is back to the pool's own reference: the previous ``W_dec.grad`` was dropped, e.g. by
``optimizer.zero_grad()``, and no caller kept it). Otherwise (gradient accumulation, several ops using the
same weight in one graph, a caller keeping the result) a fresh buffer is used. So reuse is invisible to
callers; ``reuse_grad_buffer=False`` always allocates.

The kernels overwrite every row of the buffer (zeros where no latent was active), so buffers need no
clearing. The handed-out tensor is a fresh view, so autograd installs it as ``W_dec.grad`` without a copy.
"""

from __future__ import annotations

import weakref

import torch

_POOL_MAX = 3
_POOLS: dict[int, _Pool] = {}


def _use_count(t: torch.Tensor) -> int | None:
    fn = getattr(torch._C, "_storage_Use_Count", None)
    if fn is None:  # pragma: no cover - private API missing: never reuse
        return None
    return fn(t.untyped_storage()._cdata)


class _Pool:
    def __init__(self, W: torch.Tensor):
        self.W_ref = weakref.ref(W)
        self.items: list[tuple[torch.Tensor, int]] = []  # (buffer, use count when exclusively ours)

    def get(self, shape, dtype, device) -> torch.Tensor:
        for t, base in self.items:
            if t.shape == shape and t.dtype == dtype and t.device == device and _use_count(t) == base:
                return t.view_as(t)
        t = torch.empty(shape, dtype=dtype, device=device)
        base = _use_count(t)
        if base is not None:
            self.items = [it for it in self.items if it[0].shape == shape and it[0].dtype == dtype]
            self.items.append((t, base))
            if len(self.items) > _POOL_MAX:
                self.items.pop(0)
            return t.view_as(t)
        return t


def grad_buffer(W: torch.Tensor, dtype: torch.dtype, reuse: bool = True) -> torch.Tensor:
    """An uninitialised ``W``-shaped tensor for the weight gradient (every row must be written)."""
    if not reuse:
        return torch.empty(W.shape, dtype=dtype, device=W.device)
    key = id(W)
    pool = _POOLS.get(key)
    if pool is None or pool.W_ref() is not W:
        pool = _Pool(W)
        _POOLS[key] = pool
        weakref.finalize(W, _POOLS.pop, key, None)
    return pool.get(W.shape, dtype, W.device)
