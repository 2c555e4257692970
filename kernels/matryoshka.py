"""All Matryoshka prefix reconstructions (and their losses) from one sparse pass.

Groups are given by cumulative ends: group ``g`` owns latents ``[group_ends[g-1], group_ends[g])``
(``group_ends[-1] == d_sae``). Level ``g`` reconstructs with groups ``0..g`` only:
``x̂_{≤g} = b_dec + Σ_{latents < group_ends[g]} a · W_dec``.

Cost: one gather-sum over the ``N·k`` active latents into ``G·N`` per-(row, group) partial sums
(O(N·k·d_in)), then a cumulative sum over groups (O(G·N·d_in)) — not ``G`` dense decodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import (
    check_decoder,
    check_float,
    check_index,
    check_offsets,
    group_ends_list,
    resolve_backend,
    single_threaded,
)
from ._dispatch import ops
from ._grad_buffer import grad_buffer
from .decode import _SparseDecodeCSR


def _flatten(indices, values, offsets, d_sae):
    """Validate either ``[N, k]`` codes or flat CSR codes; return flat idx, val, row offsets, N."""
    if offsets is None:
        check_float("values", values, 2)
        check_index("indices", indices, 2, d_sae)
        if indices.shape != values.shape:
            raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must match")
        N, k = indices.shape
        offsets = (
            torch.arange(0, N * k + 1, max(k, 1), device=indices.device) if k else indices.new_zeros(N + 1)
        )
        return indices.reshape(-1).to(torch.long), values.reshape(-1), offsets, N
    check_float("values", values, 1)
    check_index("indices", indices, 1, d_sae)
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must match")
    N = check_offsets(offsets, indices.numel())
    return indices.to(torch.long), values, offsets.to(torch.long), N


def _regroup(idx, offsets, N, ends, group_major: bool):
    """Sort entries into bags (row, group) — or (group, row) if ``group_major`` — and return
    ``(perm, bag_offsets [G·N+1])``."""
    G = len(ends)
    nnz = idx.numel()
    with single_threaded(idx):
        ends_t = torch.tensor(ends, device=idx.device, dtype=torch.long)
        grp = torch.bucketize(idx, ends_t, right=True)  # latent f is in group g iff ends[g-1] <= f < ends[g]
        counts = offsets[1:] - offsets[:-1]
        row = torch.repeat_interleave(torch.arange(N, device=idx.device), counts, output_size=nnz)
        key = grp * N + row if group_major else row * G + grp
        key_sorted, perm = torch.sort(key, stable=True)
        bag_counts = torch.bincount(key_sorted, minlength=G * N)
        bag_off = torch.zeros(G * N + 1, dtype=torch.long, device=idx.device)
        torch.cumsum(bag_counts, 0, out=bag_off[1:])
    return perm, bag_off


def matryoshka_decode(
    indices: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,
    group_ends: Sequence[int] | torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    offsets: torch.Tensor | None = None,
    backend: str | None = None,
    reuse_grad_buffer: bool = True,
) -> torch.Tensor:
    """Every prefix reconstruction ``[G, N, d_in]`` in one pass: ``out[g] = x̂_{≤g}`` (incl. ``b_dec``).

    Args:
        indices, values: ``[N, k]`` top-k codes, or flat ``[nnz]`` codes with ``offsets`` ``[N+1]``.
        W_dec: ``[d_sae, d_in]``; b_dec: optional ``[d_in]``.
        group_ends: cumulative group ends, strictly increasing, last ``== d_sae``.
        backend, reuse_grad_buffer: as in :func:`sparse_decode`.

    ``out[-1]`` equals :func:`sparse_decode`. Differentiable w.r.t. ``values``, ``W_dec``, ``b_dec``.
    """
    d_sae, d_in = check_decoder(W_dec, b_dec)
    ends = group_ends_list(group_ends, d_sae)
    idx, val, off, N = _flatten(indices, values, offsets, d_sae)
    backend = resolve_backend(backend, W_dec, idx, val, *([b_dec] if b_dec is not None else []))
    G = len(ends)
    perm, bag_off = _regroup(idx, off, N, ends, group_major=True)
    partial = _SparseDecodeCSR.apply(
        idx.index_select(0, perm).contiguous(),
        val.index_select(0, perm).contiguous(),
        bag_off,
        W_dec.contiguous(),
        None,
        None,
        backend,
        reuse_grad_buffer,
    )  # [G*N, d]: bag g*N + n = row n's latents in group g
    out = partial.view(G, N, d_in)
    if G > 1:
        out = out.cumsum_(0)  # in place: one [G, N, d_in] buffer in total
    if b_dec is not None:
        out = out.add_(b_dec.to(out.dtype))
    return out


class _MatryoshkaLosses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, idx_s, val_s, bag_off, W, b, coef, N, G, backend, reuse, ends, want_recon):
        prim = ops(backend)
        r = x.float() - (b.float() if b is not None else 0.0)
        losses = torch.empty(G, dtype=torch.float32, device=x.device)
        starts = bag_off[torch.arange(G, device=x.device) * N].tolist() + [idx_s.numel()]
        recon = None
        if want_recon:  # x̂ = b_dec + Σ_g partial_g, accumulated in W's dtype like sparse_decode
            recon = W.new_zeros(N, W.shape[1]) if b is None else b.to(W.dtype).expand(N, -1).clone()
        for g in range(G):
            s0, s1 = starts[g], starts[g + 1]
            p = prim.decode_csr(idx_s[s0:s1], val_s[s0:s1], bag_off[g * N : (g + 1) * N + 1] - s0, W)
            r.sub_(p.float())
            if recon is not None:
                recon.add_(p)
            rv = r.view(-1)
            losses[g] = torch.dot(rv, rv) / max(N, 1)
        ctx.save_for_backward(idx_s, val_s, bag_off, r, coef)
        ctx.W = W
        ctx.meta = (
            N,
            G,
            backend,
            reuse,
            starts,
            x.dtype,
            val_s.dtype,
            b.dtype if b is not None else None,
            ends,
        )
        if recon is None:
            return losses * coef
        ctx.mark_non_differentiable(recon)
        return losses * coef, recon

    @staticmethod
    def backward(ctx, gL, *_unused_recon_grad):
        idx_s, val_s, bag_off, r, coef = ctx.saved_tensors
        W = ctx.W
        N, G, backend, reuse, starts, x_dtype, v_dtype, b_dtype, ends = ctx.meta
        prim = ops(backend)
        c = (gL.float() * coef * (2.0 / max(N, 1))).tolist()
        r = r.clone()
        na = torch.zeros_like(r)  # −∂loss/∂x̂ accumulated over levels ≥ g (= the grad of each partial decode)
        g_val = (
            torch.zeros(idx_s.numel(), dtype=W.dtype, device=W.device) if ctx.needs_input_grad[2] else None
        )
        g_W = grad_buffer(W, W.dtype, reuse) if ctx.needs_input_grad[4] else None
        for g in range(G - 1, -1, -1):
            s0, s1 = starts[g], starts[g + 1]
            na.add_(r, alpha=-c[g])
            off_g = bag_off[g * N : (g + 1) * N + 1] - s0
            idx_g, val_g = idx_s[s0:s1], val_s[s0:s1]
            lo, hi = (ends[g - 1] if g else 0), ends[g]
            row_g = prim.row_ids_from_offsets(off_g, s1 - s0)
            Gr = na if na.dtype == W.dtype else na.to(W.dtype)
            if g_val is not None and s1 > s0:
                g_val[s0:s1] = prim.grad_values(idx_g, row_g, off_g, W, Gr)
            if g_W is not None:  # groups own disjoint latent ranges: every row written once
                prim.grad_weight_dense(idx_g, val_g, row_g, Gr, g_W[lo:hi], base=lo)
            if g > 0 and s1 > s0:
                r.add_(prim.decode_csr(idx_g, val_g, off_g, W).float())
        g_x = (-na).to(x_dtype) if ctx.needs_input_grad[0] else None
        g_b = na.sum(0).to(b_dtype) if (b_dtype is not None and ctx.needs_input_grad[5]) else None
        g_v = g_val.to(v_dtype) if g_val is not None else None
        return g_x, None, g_v, None, g_W, g_b, None, None, None, None, None, None, None


def matryoshka_losses(
    x: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,
    group_ends: Sequence[int] | torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    weights: Sequence[float] | torch.Tensor | None = None,
    offsets: torch.Tensor | None = None,
    backend: str | None = None,
    reuse_grad_buffer: bool = True,
    return_reconstruction: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-level reconstruction losses ``[G]`` (fp32), without materialising ``[G, N, d_in]``.

    ``loss[g] = weights[g] · (1/N) · Σ_n Σ_d (x[n, d] − x̂_{≤g}[n, d])²`` — the squared error is
    **summed over ``d_in``** and **averaged over the ``N`` rows** (``weights`` default 1). This is
    exactly SAELens's ``(mse_loss(x̂, x, reduction="none").sum(dim=-1).mean())`` used for every level
    of ``matryoshka_batchtopk`` (its total = ``losses.sum()`` with unit weights, the outer level being
    its ``mse_loss``), and dictionary_learning's ``(x − x̂).pow(2).sum(-1).mean()`` per level (its
    Matryoshka total = ``Σ_g w_g · loss_g``).

    Args:
        x: ``[N, d_in]`` targets. indices/values/offsets: codes as in :func:`matryoshka_decode`.
        weights: optional ``[G]`` per-level weights folded into the returned losses.
        return_reconstruction: also return the full reconstruction ``x̂ = b_dec + Σ a·W_dec``
            (``[N, d_in]``, ``W_dec.dtype``, no gradient — as ``sparse_decode(...).detach()``), summed from
            the per-group partial decodes the loss computes anyway instead of a second decode.
            Returns ``(losses, reconstruction)`` then.

    Memory: O(N·d_in) (a running residual); the backward recomputes each group's partial decode
    once instead of storing ``[G, N, d_in]``. Differentiable w.r.t. ``x``, ``values``, ``W_dec``, ``b_dec``.
    """
    d_sae, d_in = check_decoder(W_dec, b_dec)
    check_float("x", x, 2)
    ends = group_ends_list(group_ends, d_sae)
    idx, val, off, N = _flatten(indices, values, offsets, d_sae)
    if x.shape != (N, d_in):
        raise ValueError(f"x must have shape [{N}, {d_in}], got {tuple(x.shape)}")
    backend = resolve_backend(backend, W_dec, x, idx, val, *([b_dec] if b_dec is not None else []))
    G = len(ends)
    if weights is None:
        coef = torch.ones(G, dtype=torch.float32, device=x.device)
    else:
        coef = torch.as_tensor(weights, dtype=torch.float32, device=x.device).reshape(-1)
        if coef.numel() != G:
            raise ValueError(f"weights must have {G} entries (one per group), got {coef.numel()}")
    perm, bag_off = _regroup(idx, off, N, ends, group_major=True)
    return _MatryoshkaLosses.apply(
        x,
        idx.index_select(0, perm).contiguous(),
        val.index_select(0, perm).contiguous(),
        bag_off,
        W_dec.contiguous(),
        b_dec,
        coef,
        N,
        G,
        backend,
        reuse_grad_buffer,
        ends,
        bool(return_reconstruction),
    )
