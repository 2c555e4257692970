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

from ._checks import check_float, resolve_backend, single_threaded, sort1d
from ._dispatch import ops
from ._grad_buffer import grad_buffer

_DEFAULT_CHUNK_ELEMS = 1 << 24  # N·chunk elements per slab (64 MiB fp32; one slab up to N·d_sae = 16M)
_SAMPLE = 1 << 16  # elements sampled to pick a candidate threshold in _flat_topk


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
    """Identity on already-selected activations with a sparse backward to ``x``, ``W_enc``, ``b_enc``
    and (optionally) a bias ``pre_bias`` subtracted from ``x`` before encoding (``xc = x − pre_bias``)."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, vals, idx, offsets, backend, pre_bias, xc):
        ctx.save_for_backward(xc, W_enc, vals, idx, offsets)
        ctx.backend = backend
        ctx.b_dtype = b_enc.dtype
        ctx.x_dtype = x.dtype
        ctx.pb_dtype = pre_bias.dtype if pre_bias is not None else None
        return vals.clone()

    @staticmethod
    def backward(ctx, gv):
        xc, W_enc, vals, idx, offsets = ctx.saved_tensors
        prim = ops(ctx.backend)
        d_in, d_sae = W_enc.shape
        N = xc.shape[0]
        g = (gv.reshape(-1) * (vals.reshape(-1) > 0)).to(W_enc.dtype)
        need_x, need_W, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_pb = ctx.pb_dtype is not None and ctx.needs_input_grad[7]
        g_x = g_W = g_b = g_pb = None
        acc = torch.float64 if W_enc.dtype == torch.float64 else torch.float32
        colsum = None  # ∂b_enc = Σ_n S[n, :]; also gives ∂pre_bias = −W_enc @ colsum without forming ∂x
        if need_b or (need_pb and not need_x):
            colsum = torch.zeros(d_sae, dtype=acc, device=g.device).index_add_(0, idx, g.to(acc))
        use_csr = ctx.backend == "torch" and W_enc.dtype in (torch.float32, torch.float64) and idx.numel() > 0
        if use_csr:
            if need_x:  # S = the selected entries as a CSR [N, d_sae] matrix (rows sorted by the encoders)
                S = torch.sparse_csr_tensor(offsets, idx, g, (N, d_sae), check_invariants=False)
                g_x = torch.addmm(xc.new_empty(0, dtype=W_enc.dtype).resize_(N, d_in), S, W_enc.t(), beta=0)
            if need_W:
                # ∂W_enc = xcᵀ S, written in W_enc's own layout into a pooled buffer. S is handed over in
                # CSC layout (entries sorted by latent, single-threaded): given CSR, torch converts it
                # itself with a multi-threaded sort that costs more than the product on busy cores.
                with single_threaded(idx):
                    idx_sorted, perm = torch.sort(idx)
                    ccol = torch.zeros(d_sae + 1, dtype=torch.long, device=idx.device)
                    torch.cumsum(torch.bincount(idx_sorted, minlength=d_sae), 0, out=ccol[1:])
                    rows = prim.row_ids_from_offsets(offsets, idx.numel()).index_select(0, perm)
                    g_s = g.index_select(0, perm)
                S_csc = torch.sparse_csc_tensor(ccol, rows, g_s, (N, d_sae), check_invariants=False)
                g_W = grad_buffer(W_enc, W_enc.dtype, True)
                torch.addmm(g_W, xc.t().to(W_enc.dtype), S_csc, beta=0, out=g_W)
        else:
            row = prim.row_ids_from_offsets(offsets, idx.numel())
            if need_x:
                g_x = prim.decode_csr(idx, g, offsets, W_enc.t().contiguous())
            if need_W:
                gWt = torch.empty(d_sae, d_in, dtype=W_enc.dtype, device=W_enc.device)
                prim.grad_weight_dense(idx, g, row, xc.to(W_enc.dtype).contiguous(), gWt)
                g_W = gWt.t()
        if need_pb:
            if g_x is not None:
                g_pb = -g_x.sum(0, dtype=acc)
            else:
                g_pb = -(W_enc.to(acc) @ colsum)
            g_pb = g_pb.to(ctx.pb_dtype)
        if g_x is not None:
            g_x = g_x.to(ctx.x_dtype)
        if need_b:
            g_b = colsum.to(ctx.b_dtype)
        return g_x, g_W, g_b, None, None, None, None, g_pb, None


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


def _center(x: torch.Tensor, pre_bias: torch.Tensor | None, d_in: int) -> torch.Tensor:
    """``x − pre_bias`` (no graph: the encoders' backward gives ``pre_bias`` its gradient)."""
    if pre_bias is None:
        return x.detach()
    check_float("pre_bias", pre_bias, 1)
    if pre_bias.shape[0] != d_in:
        raise ValueError(f"pre_bias must have shape [{d_in}] (d_in), got {tuple(pre_bias.shape)}")
    with torch.no_grad():
        return x - pre_bias.to(x.dtype)


def _chunks(N, d_sae, chunk_size):
    cs = chunk_size or max(256, _DEFAULT_CHUNK_ELEMS // max(N, 1))
    if cs <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [(s, min(d_sae, s + cs)) for s in range(0, d_sae, cs)]


def _flat_topk(flat: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(flat, K)`` (values, positions) — exact — via a candidate pass when ``K ≪ numel``.

    A strided sample of ``flat`` gives a threshold ``q`` a little below the sample's ``K/numel``
    quantile; if at least ``K`` entries are ``≥ q`` the top-``K`` of those candidates is the top-``K`` of
    ``flat`` (any entry above the K-th largest is a candidate). Otherwise (or if ``q ≤ 0``, i.e. most of
    the kept values would be ReLU zeros) it falls back to a full ``torch.topk``. One compare + a small
    top-k instead of a top-k over ``numel`` elements.
    """
    n = flat.numel()
    if n >= 1 << 20 and 16 * K <= n:
        step = n // _SAMPLE
        samp = flat[::step]
        m = min(samp.numel(), int(samp.numel() * K / n * 1.25) + 64)
        q = torch.topk(samp, m, sorted=False).values.min()
        if q > 0:
            cand = torch.nonzero(flat >= q).squeeze(1)
            if cand.numel() >= K:
                v, j = torch.topk(flat.index_select(0, cand), K)
                return v, cand.index_select(0, j)
    return torch.topk(flat, K)


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
    pre_bias: torch.Tensor | None = None,
) -> TopK:
    """Per-row top-``k`` of ``relu(x @ W_enc + b_enc)`` (``x [N, d_in]``, ``W_enc [d_in, d_sae]``).

    ``chunk_size`` columns of ``d_sae`` are materialised at a time (default: ~4M elements per slab).
    ``values`` is differentiable w.r.t. ``x``, ``W_enc``, ``b_enc`` (and ``pre_bias``) through a sparse
    backward. ``pre_bias`` (``[d_in]``, e.g. an SAE's ``b_dec``): encode ``x − pre_bias`` instead of ``x``;
    when ``x`` needs no gradient, ``∂pre_bias = −W_enc · Σ_n ∂pre[n]`` is one matrix-vector product
    instead of a ``[N, d_in]`` gradient for ``x`` reduced afterwards.
    """
    d_in, d_sae = _check_encoder(x, W_enc, b_enc)
    k = int(k)
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
    backend = resolve_backend(backend, x, W_enc, b_enc, *([pre_bias] if pre_bias is not None else []))
    N = x.shape[0]
    xc = _center(x, pre_bias, d_in)
    with torch.no_grad():
        best_v = best_i = None
        for s, e in _chunks(N, d_sae, chunk_size):
            pre = _slab(xc, W_enc, b_enc, s, e)
            v, i = torch.topk(pre, min(k, e - s), dim=1)
            i = i + s
            if best_v is not None:
                v, j = torch.topk(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]), dim=1)
                i = torch.gather(torch.cat([best_i, i], 1), 1, j)
            best_v, best_i = v, i
    offsets = torch.arange(0, N * k + 1, k, device=x.device)
    vals = _SelectedPreacts.apply(
        x, W_enc, b_enc, best_v.reshape(-1), best_i.reshape(-1), offsets, backend, pre_bias, xc
    )
    return TopK(vals.view(N, k), best_i)


def batch_topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: float,
    *,
    chunk_size: int | None = None,
    backend: str | None = None,
    pre_bias: torch.Tensor | None = None,
) -> BatchTopK:
    """Keep the ``int(k·N)`` largest post-ReLU activations across the whole batch (SAELens /
    dictionary_learning BatchTopK), returned row-sorted in flat CSR form. Zeros are dropped (they would
    decode to nothing), so ``nnz <= int(k·N)``. ``pre_bias``: as in :func:`topk_encode`.
    """
    d_in, d_sae = _check_encoder(x, W_enc, b_enc)
    N = x.shape[0]
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    K = min(int(k * N), N * d_sae)
    backend = resolve_backend(backend, x, W_enc, b_enc, *([pre_bias] if pre_bias is not None else []))
    xc = _center(x, pre_bias, d_in)
    with torch.no_grad():
        best_v = best_p = None
        for s, e in _chunks(N, d_sae, chunk_size):
            pre = _slab(xc, W_enc, b_enc, s, e)
            v, p = _flat_topk(pre.reshape(-1), min(K, pre.numel()))
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
    vals = _SelectedPreacts.apply(x, W_enc, b_enc, best_v, idx, offsets, backend, pre_bias, xc)
    return BatchTopK(vals, idx, offsets, min_value)
