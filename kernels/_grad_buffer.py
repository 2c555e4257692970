"""Dense ``W_dec``-shaped gradient buffers that only ever have *touched* rows written.

Autograd needs a dense ``[d_sae, d_in]`` gradient for a dense parameter, and allocating + zeroing it
(256 MiB at 16384×4096 fp32) costs more than the sparse work itself on a 2-core CPU. With
``reuse=True`` the buffer is kept per parameter and, on the next backward, only the rows touched last
time are re-zeroed before the new rows are written (sorted segment sum, ``index_copy_``).

Contract for ``reuse=True`` (what a training loop does anyway): the returned gradient tensor is handed
to autograd, which installs it as ``W_dec.grad`` (no copy); drop it before the next backward
(``optimizer.zero_grad(set_to_none=True)``, the default) and do not write non-zeros into its untouched
rows. If ``W_dec.grad`` still aliases the buffer at the next backward (gradient accumulation), a fresh
zeroed buffer is used instead (and kept as the new buffer; the old one is left to ``W.grad``), so
accumulation stays correct.
"""

from __future__ import annotations

import weakref

import torch

_CACHE: dict[int, _Buffer] = {}


class _Buffer:
    def __init__(self, W: torch.Tensor, dtype: torch.dtype, reuse: bool):
        self.W_ref = weakref.ref(W)
        self.dtype = dtype
        self.reuse = reuse
        self.tensor: torch.Tensor | None = None
        self.touched: torch.Tensor | None = None

    def begin(self) -> None:
        """Start one backward: get a buffer whose rows are all zero."""
        W = self.W_ref()
        self._fresh = True
        if self.reuse and self.tensor is not None:
            g = W.grad if W.is_leaf else None
            aliased = g is not None and g.untyped_storage().data_ptr() == self.tensor.untyped_storage().data_ptr()
            if not aliased:
                self._fresh = False
                if self.touched is not None and self.touched.numel():
                    self.tensor.index_fill_(0, self.touched, 0)
        if self._fresh:
            self._t = torch.zeros(W.shape, dtype=self.dtype, device=W.device)
        else:
            self._t = self.tensor
        self._uniqs = []

    def write(self, prim, idx, val, row, G) -> None:
        """Write the rows of the latents in ``idx`` (disjoint from earlier writes of this backward)."""
        self._uniqs.append(prim.grad_weight_into(idx, val, row, G, self._t))

    def finish(self) -> torch.Tensor:
        t = self._t
        self._t = None
        if not self.reuse:
            return t
        # After an accumulation step the old buffer stays W.grad (autograd adds this one into it) and is
        # forgotten here; the fresh one becomes the buffer, with its touched rows known.
        self.tensor = t
        self.touched = torch.cat(self._uniqs) if self._uniqs else None
        return t.view_as(t)  # a new TensorImpl: autograd installs it as W.grad without cloning

    def fill(self, prim, idx, val, row, G) -> torch.Tensor:
        self.begin()
        self.write(prim, idx, val, row, G)
        return self.finish()


def weight_grad_buffer(W: torch.Tensor, dtype: torch.dtype, reuse: bool) -> _Buffer:
    if not reuse:
        return _Buffer(W, dtype, False)
    key = id(W)
    buf = _CACHE.get(key)
    if buf is None or buf.W_ref() is not W or buf.dtype != dtype:
        buf = _Buffer(W, dtype, True)
        _CACHE[key] = buf
        weakref.finalize(W, _CACHE.pop, key, None)
    return buf
