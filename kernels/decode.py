"""Sparse decode: ``x̂ = Σ_j values[:, j] · W_dec[indices[:, j]] + b_dec`` without a dense ``[N, d_sae]``.

Forward is a gather-sum (``embedding_bag`` on CPU, a Triton row kernel on CUDA); the hand-written
backward returns grads for ``values`` (a gather-dot), ``W_dec`` (a sorted segment sum over the touched
latents, written into a dense ``[d_sae, d_in]`` gradient whose other rows are zero) and ``b_dec``.
"""

from __future__ import annotations

import torch

from ._checks import check_decoder, check_float, check_index, check_offsets, resolve_backend
from ._dispatch import ops
from ._grad_buffer import grad_buffer


class _SparseDecodeCSR(torch.autograd.Function):
    """CSR sparse decode; rows own ``offsets[r]:offsets[r+1]`` of the flat ``idx``/``val``."""

    @staticmethod
    def forward(ctx, idx, val, offsets, W, b, k, backend, reuse):
        prim = ops(backend)
        out = prim.decode_csr(idx, val, offsets, W)
        if b is not None:
            out.add_(b.to(out.dtype))
        ctx.save_for_backward(idx, val, offsets)
        ctx.W = W
        ctx.k, ctx.backend, ctx.reuse, ctx.has_b = k, backend, reuse, b is not None
        ctx.val_dtype = val.dtype
        ctx.b_dtype = b.dtype if b is not None else None
        return out

    @staticmethod
    def backward(ctx, G):
        idx, val, offsets = ctx.saved_tensors
        W = ctx.W
        prim = ops(ctx.backend)
        G = G.contiguous()
        nnz = idx.numel()
        row = prim.row_ids_from_offsets(offsets, nnz)
        g_val = g_W = g_b = None
        if ctx.needs_input_grad[1]:
            g_val = prim.grad_values(idx, row, offsets, W, G, ctx.k).to(ctx.val_dtype)
        if ctx.needs_input_grad[3]:
            g_W = grad_buffer(W, W.dtype, ctx.reuse)
            prim.grad_weight_dense(idx, val, row, G.to(W.dtype), g_W)
        if ctx.has_b and ctx.needs_input_grad[4]:
            g_b = G.sum(0, dtype=torch.float32).to(ctx.b_dtype)
        return None, g_val, None, g_W, g_b, None, None, None


def _decode_csr(idx, val, offsets, W, b, k, backend, reuse):
    """The autograd function, or (nothing to differentiate: inference, steering, ``no_grad``) the forward
    alone, which skips the autograd node and saving tensors for a backward."""
    if torch.is_grad_enabled() and (
        val.requires_grad or W.requires_grad or (b is not None and b.requires_grad)
    ):
        return _SparseDecodeCSR.apply(idx, val, offsets, W, b, k, backend, reuse)
    out = ops(backend).decode_csr(idx, val, offsets, W)
    return out.add_(b.to(out.dtype)) if b is not None else out


def _prepare(W_dec, b_dec, backend, *tensors):
    backend = resolve_backend(backend, W_dec, *tensors, *([b_dec] if b_dec is not None else []))
    return backend


def sparse_decode(
    indices: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    reuse_grad_buffer: bool = True,
) -> torch.Tensor:
    """Decode top-k codes: ``out[n] = Σ_j values[n, j] · W_dec[indices[n, j]] (+ b_dec)``.

    Args:
        indices: ``[N, k]`` integer latent ids in ``[0, d_sae)``.
        values: ``[N, k]`` floating activations (cast to ``W_dec.dtype`` for the product).
        W_dec: ``[d_sae, d_in]`` decoder.
        b_dec: optional ``[d_in]`` decoder bias.
        backend: ``None`` (CUDA → ``"triton"``, CPU → ``"torch"``), ``"torch"`` or ``"triton"``.
        reuse_grad_buffer: write the dense ``W_dec`` gradient into a pooled buffer when nothing else
            references it any more (saves a fresh ``[d_sae, d_in]`` allocation per step; invisible to
            callers, see :mod:`._grad_buffer`). ``False`` always allocates.

    Returns:
        ``[N, d_in]`` in ``W_dec.dtype``. Differentiable w.r.t. ``values``, ``W_dec``, ``b_dec``.
    """
    d_sae, d_in = check_decoder(W_dec, b_dec)
    check_float("values", values, 2)
    check_index("indices", indices, 2, d_sae)
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must match")
    backend = _prepare(W_dec, b_dec, backend, indices, values)
    N, k = indices.shape
    idx = indices.reshape(-1).to(torch.long).contiguous()
    val = values.reshape(-1).contiguous()
    offsets = torch.arange(0, N * k + 1, max(k, 1), device=idx.device) if k else idx.new_zeros(N + 1)
    return _decode_csr(idx, val, offsets, W_dec.contiguous(), b_dec, k, backend, reuse_grad_buffer)


def sparse_decode_flat(
    indices: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    reuse_grad_buffer: bool = True,
) -> torch.Tensor:
    """Decode rows with different numbers of active latents (batch-top-k, CSR layout).

    Args:
        indices: ``[nnz]`` latent ids; row ``n`` owns ``indices[offsets[n]:offsets[n+1]]``.
        values: ``[nnz]`` activations.
        offsets: ``[N+1]`` non-decreasing, ``offsets[0] == 0``, ``offsets[-1] == nnz``.
        W_dec, b_dec, backend, reuse_grad_buffer: as in :func:`sparse_decode`.

    Returns:
        ``[N, d_in]``; an empty row decodes to ``b_dec`` (or 0).
    """
    d_sae, d_in = check_decoder(W_dec, b_dec)
    check_float("values", values, 1)
    check_index("indices", indices, 1, d_sae)
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must match")
    check_offsets(offsets, indices.numel())
    backend = _prepare(W_dec, b_dec, backend, indices, values, offsets)
    return _decode_csr(
        indices.to(torch.long).contiguous(),
        values.contiguous(),
        offsets.to(torch.long).contiguous(),
        W_dec.contiguous(),
        b_dec,
        None,
        backend,
        reuse_grad_buffer,
    )
