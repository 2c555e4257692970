"""CPU/torch primitives behind every kernel: CSR ("bag") decode and its two backward pieces.

All three primitives work on a flat CSR layout: entry ``e`` has latent ``idx[e]``, value ``val[e]``
and belongs to output row ``row[e]``; row ``r`` owns entries ``offsets[r]:offsets[r+1]``.

* :func:`decode_csr` — ``out[r] = Σ_e val[e] · W[idx[e]]`` (``F.embedding_bag``, multi-threaded).
* :func:`grad_values` — ``g_val[e] = <G[row[e]], W[idx[e]]>`` (gather-dot in cache-sized chunks).
* :func:`grad_weight` — ``g_W[f] = Σ_{e: idx[e]=f} val[e] · G[row[e]]``: a *sorted segment sum*
  (entries sorted by latent, one ``embedding_bag`` over ``G`` with one bag per touched latent) written
  into the touched rows of a dense buffer; untouched rows are zero.  No float atomics, no dense
  ``[N, d_sae]`` tensor, O(nnz · d_in) work instead of the dense O(N · d_sae · d_in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# entries per chunk in grad_values: chunk·d_in·4 bytes stays around a few MiB (L2/L3 friendly)
_GV_CHUNK_BYTES = 4 << 20


def decode_csr(idx: torch.Tensor, val: torch.Tensor, offsets: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``[B, d]`` with ``out[r] = Σ_{e in row r} val[e] · W[idx[e]]`` (rows with no entry are 0)."""
    if idx.numel() == 0:
        return W.new_zeros(offsets.numel() - 1, W.shape[1])
    return F.embedding_bag(
        idx, W, offsets, mode="sum", per_sample_weights=val.to(W.dtype), include_last_offset=True
    )


def row_ids_from_offsets(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    counts = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts, output_size=nnz)


def grad_values(idx, row, offsets, W, G, k=None) -> torch.Tensor:
    """``g[e] = <G[row[e]], W[idx[e]]>``, returned in ``W.dtype`` (aten's embedding_bag
    per-sample-weight backward: a parallel gather-dot without materialising ``W[idx]``)."""
    if idx.numel() == 0:
        return W.new_zeros(0)
    try:
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            G.to(W.dtype), W, idx, offsets[:-1], row, 0, -1
        )
    except (RuntimeError, AttributeError):  # pragma: no cover - aten signature drift
        return _grad_values_chunked(idx, row, W, G)


def _grad_values_chunked(idx, row, W, G) -> torch.Tensor:
    nnz, d = idx.numel(), W.shape[1]
    out = torch.empty(nnz, dtype=W.dtype, device=W.device)
    per = max(1, _GV_CHUNK_BYTES // max(1, d * max(W.element_size(), 4)))
    for s in range(0, nnz, per):
        e = min(nnz, s + per)
        Wg = W.index_select(0, idx[s:e]).float()
        Gg = G.index_select(0, row[s:e]).float()
        out[s:e] = (Wg * Gg).sum(1).to(W.dtype)
    return out


def sort_by_latent(idx: torch.Tensor):
    """Permutation sorting entries by latent, the touched latents and their segment offsets."""
    idx_sorted, perm = torch.sort(idx, stable=True)
    uniq, counts = torch.unique_consecutive(idx_sorted, return_counts=True)
    seg = torch.zeros(uniq.numel() + 1, dtype=torch.long, device=idx.device)
    torch.cumsum(counts, 0, out=seg[1:])
    return perm, uniq, seg


def grad_weight_rows(idx: torch.Tensor, val: torch.Tensor, row: torch.Tensor, G: torch.Tensor):
    """Touched latents ``uniq [U]`` and their gradient rows ``[U, d]`` (sorted segment sum)."""
    perm, uniq, seg = sort_by_latent(idx)
    rows = F.embedding_bag(
        row.index_select(0, perm), G, seg, mode="sum",
        per_sample_weights=val.index_select(0, perm).to(G.dtype), include_last_offset=True,
    )
    return uniq, rows


def grad_weight_into(idx, val, row, G, out: torch.Tensor) -> torch.Tensor:
    """Write the touched rows of the ``W`` gradient into ``out`` (whose other rows must be zero);
    return the touched latent ids."""
    if idx.numel() == 0:
        return idx.new_zeros(0)
    uniq, rows = grad_weight_rows(idx, val, row, G)
    out.index_copy_(0, uniq, rows.to(out.dtype))
    return uniq
