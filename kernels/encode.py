"""Top-k and batch-top-k encoders chunked over ``d_sae`` with a sparse hand-written backward.

The selection runs under ``no_grad`` one ``[N, chunk]`` slab of ``relu(x @ W_enc + b_enc)`` at a time
(running top-k merge), so the dense ``[N, d_sae]`` pre-activation is never kept. The returned values go
through :class:`_SelectedPreacts`, whose backward only touches the selected (row, latent) pairs:

* ``∂x[n]       = Σ_j g[n, j] · W_enc[:, idx[n, j]]``  (gather-sum over ``W_encᵀ``),
* ``∂W_enc[:, f] = Σ_{(n, j): idx = f} g[n, j] · x[n]`` (sorted segment sum over touched latents),
* ``∂b_enc[f]    = Σ_{(n, j): idx = f} g[n, j]``,

with ``g`` zeroed where the ReLU is inactive (value 0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import check_float, resolve_backend, sort1d
from ._dispatch import ops
from ._grad_buffer import grad_buffer

_DEFAULT_CHUNK_ELEMS = 1 << 22  # N·chunk elements per slab (16 MiB fp32)


class TopK(NamedTuple):
    """Per-row top-k codes of ``relu(x @ W_enc + b_enc)``."""

    values: torch.Tensor
    """``[N, k]`` post-ReLU activations, descending per row (may contain 0 if a row has < k positives)."""
    indices: torch.Tensor
    """``[N, k]`` long latent ids of ``values``."""


class BatchTopK(NamedTuple):
    """Batch-top-k codes in row-sorted flat (CSR) form."""

    values: torch.Tensor
    """``[nnz]`` kept post-ReLU activations (all > 0), rows in order, latents ascending within a row."""
    indices: torch.Tensor
    """``[nnz]`` long latent ids."""
    offsets: torch.Tensor
    """``[N+1]`` long; row ``n`` owns ``values[offsets[n]:offsets[n+1]]``."""
    min_value: torch.Tensor
    """0-dim fp32: the smallest kept activation (0 if none kept) — the statistic behind the EMA inference
    threshold of BatchTopK SAEs (SAELens ``topk_threshold``, dictionary_learning ``threshold``)."""


class _SelectedPreacts(torch.autograd.Function):
    """Identity on already-selected activations with a sparse backward to ``x``, ``W_enc``, ``b_enc``."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, vals, idx, offsets, backend):
        ctx.save_for_backward(x, W_enc, vals, idx, offsets)
        ctx.backend = backend
        ctx.b_dtype = b_enc.dtype
        return vals.clone()

    @staticmethod
    def backward(ctx, gv):
        x, W_enc, vals, idx, offsets = ctx.saved_tensors
        prim = ops(ctx.backend)
        d_in, d_sae = W_enc.shape
        N = x.shape[0]
        g = (gv.reshape(-1) * (vals.reshape(-1) > 0)).to(W_enc.dtype)
        g_x = g_W = g_b = None
        use_csr = ctx.backend == "torch" and W_enc.dtype in (torch.float32, torch.float64) and idx.numel() > 0
        if use_csr:
            # S = the selected entries as a CSR [N, d_sae] matrix (rows sorted, as built by the encoders)
            S = torch.sparse_csr_tensor(offsets, idx, g, (N, d_sae), check_invariants=False)
            if ctx.needs_input_grad[0]:
                g_x = torch.addmm(x.new_empty(0, dtype=W_enc.dtype).resize_(N, d_in), S, W_enc.t(), beta=0).to(x.dtype)
            if ctx.needs_input_grad[1]:
                # ∂W_enc = xᵀ S, written in W_enc's own layout into a pooled buffer
                g_W = grad_buffer(W_enc, W_enc.dtype, True)
                torch.addmm(g_W, x.t().to(W_enc.dtype), S, beta=0, out=g_W)
        else:
            row = prim.row_ids_from_offsets(offsets, idx.numel())
            if ctx.needs_input_grad[0]:
                g_x = prim.decode_csr(idx, g, offsets, W_enc.t().contiguous()).to(x.dtype)
            if ctx.needs_input_grad[1]:
                gWt = torch.empty(d_sae, d_in, dtype=W_enc.dtype, device=W_enc.device)
                prim.grad_weight_dense(idx, g, row, x.to(W_enc.dtype).contiguous(), gWt)
                g_W = gWt.t()
        if ctx.needs_input_grad[2]:
            g_b = torch.zeros(d_sae, dtype=torch.float32, device=g.device).index_add_(0, idx, g.float())
            g_b = g_b.to(ctx.b_dtype)
        return g_x, g_W, g_b, None, None, None, None


def _check_encoder(x, W_enc, b_enc):
    check_float("x", x, 2)
    check_float("W_enc", W_enc, 2)
    check_float("b_enc", b_enc, 1)
    d_in, d_sae = W_enc.shape
    if x.shape[1] != d_in:
        raise ValueError(f"x has d_in={x.shape[1]} but W_enc is [{d_in}, {d_sae}] ([d_in, d_sae])")
    if b_enc.shape[0] != d_sae:
        raise ValueError(f"b_enc must have shape [{d_sae}], got {tuple(b_enc.shape)}")
    return d_in, d_sae


def _chunks(N, d_sae, chunk_size):
    cs = chunk_size or max(256, _DEFAULT_CHUNK_ELEMS // max(N, 1))
    if cs <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [(s, min(d_sae, s + cs)) for s in range(0, d_sae, cs)]


def _slab(x, W_enc, b_enc, s, e):
    return torch.addmm(b_enc[s:e].to(x.dtype), x, W_enc[:, s:e].to(x.dtype)).relu_()


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> TopK:
    """Per-row top-``k`` of ``relu(x @ W_enc + b_enc)`` (``x [N, d_in]``, ``W_enc [d_in, d_sae]``).

    ``chunk_size`` columns of ``d_sae`` are materialised at a time (default: ~4M elements per slab).
    ``values`` is differentiable w.r.t. ``x``, ``W_enc``, ``b_enc`` through a sparse backward.
    """
    d_in, d_sae = _check_encoder(x, W_enc, b_enc)
    k = int(k)
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
    backend = resolve_backend(backend, x, W_enc, b_enc)
    N = x.shape[0]
    with torch.no_grad():
        best_v = best_i = None
        for s, e in _chunks(N, d_sae, chunk_size):
            pre = _slab(x, W_enc, b_enc, s, e)
            v, i = torch.topk(pre, min(k, e - s), dim=1)
            i = i + s
            if best_v is not None:
                v, j = torch.topk(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]), dim=1)
                i = torch.gather(torch.cat([best_i, i], 1), 1, j)
            best_v, best_i = v, i
    offsets = torch.arange(0, N * k + 1, k, device=x.device)
    vals = _SelectedPreacts.apply(x, W_enc, b_enc, best_v.reshape(-1), best_i.reshape(-1), offsets, backend)
    return TopK(vals.view(N, k), best_i)


def batch_topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: float,
    *,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> BatchTopK:
    """Keep the ``int(k·N)`` largest post-ReLU activations across the whole batch (SAELens /
    dictionary_learning BatchTopK), returned row-sorted in flat CSR form. Zeros are dropped (they would
    decode to nothing), so ``nnz <= int(k·N)``.
    """
    d_in, d_sae = _check_encoder(x, W_enc, b_enc)
    N = x.shape[0]
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    K = min(int(k * N), N * d_sae)
    backend = resolve_backend(backend, x, W_enc, b_enc)
    with torch.no_grad():
        best_v = best_p = None
        for s, e in _chunks(N, d_sae, chunk_size):
            pre = _slab(x, W_enc, b_enc, s, e)
            v, p = torch.topk(pre.reshape(-1), min(K, pre.numel()))
            cols = e - s
            p = (p // cols) * d_sae + (p % cols) + s  # flat position in [N, d_sae]
            if best_v is not None:
                v, j = torch.topk(torch.cat([best_v, v]), min(K, best_v.numel() + v.numel()))
                p = torch.cat([best_p, p]).index_select(0, j)
            best_v, best_p = v, p
        keep = best_v > 0
        best_v, best_p = best_v[keep], best_p[keep]
        best_p, order = sort1d(best_p)
        best_v = best_v.index_select(0, order)
        rows, idx = best_p // d_sae, best_p % d_sae
        offsets = torch.zeros(N + 1, dtype=torch.long, device=x.device)
        torch.cumsum(torch.bincount(rows, minlength=N), 0, out=offsets[1:])
        min_value = best_v.min().float() if best_v.numel() else torch.zeros((), device=x.device)
    vals = _SelectedPreacts.apply(x, W_enc, b_enc, best_v, idx, offsets, backend)
    return BatchTopK(vals, idx, offsets, min_value)
