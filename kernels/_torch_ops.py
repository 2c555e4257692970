"""CPU/torch primitives behind every kernel: CSR ("bag") decode and its two backward pieces.

All three primitives work on a flat CSR layout: entry ``e`` has latent ``idx[e]``, value ``val[e]``
and belongs to output row ``row[e]``; row ``r`` owns entries ``offsets[r]:offsets[r+1]``.

* :func:`decode_csr` — ``out[r] = Σ_e val[e] · W[idx[e]]`` (``F.embedding_bag``, multi-threaded).
* :func:`grad_values` — ``g_val[e] = <G[row[e]], W[idx[e]]>`` (gather-dot in cache-sized chunks).
* :func:`grad_weight_dense` — ``g_W[f] = Σ_{e: idx[e]=f} val[e] · G[row[e]]``: a *sorted segment sum*
  (entries sorted by latent into a CSR ``Sᵀ``; ``Sᵀ @ G``) written over every row of a dense (reused)
  buffer; rows of untouched latents are zero.  No float atomics, no dense
  ``[N, d_sae]`` tensor, O(nnz · d_in) work instead of the dense O(N · d_sae · d_in).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ._checks import single_threaded

# the CSR matrices here are internal temporaries; silence torch's one-time "beta" notice for them
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse CSC tensor support is in beta")

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
    with single_threaded(offsets):
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
    with single_threaded(idx):
        idx_sorted, perm = torch.sort(idx, stable=True)
        uniq, counts = torch.unique_consecutive(idx_sorted, return_counts=True)
        seg = torch.zeros(uniq.numel() + 1, dtype=torch.long, device=idx.device)
        torch.cumsum(counts, 0, out=seg[1:])
    return perm, uniq, seg


_GW_CHUNK_BYTES = 4 << 20


def grad_weight_dense(idx, val, row, G, out: torch.Tensor, base: int = 0) -> None:
    """Overwrite every row of ``out [R, d]``: ``out[r] = Σ_{e: idx[e] = base + r} val[e] · G[row[e]]``
    (zero rows for latents with no entry). All ``idx`` must lie in ``[base, base + R)``.

    fp32/fp64: a sorted segment sum expressed as ``Sᵀ @ G`` with ``Sᵀ`` the latent-major CSR matrix of
    the entries (sorting by latent = building the CSR), run by ``torch.addmm(..., beta=0, out=out)`` —
    a parallel sparse × dense product that writes straight into the (reused) gradient buffer.
    Other dtypes: zero the buffer, then one ``embedding_bag`` over ``G`` per chunk of touched latents.
    """
    R = out.shape[0]
    if idx.numel() == 0 or R == 0:
        out.zero_()
        return
    rel = idx - base if base else idx
    if out.dtype in (torch.float32, torch.float64) and G.device.type == "cpu":
        with single_threaded(rel):
            rel_sorted, perm = torch.sort(rel)
            crow = torch.zeros(R + 1, dtype=torch.long, device=idx.device)
            torch.cumsum(torch.bincount(rel_sorted, minlength=R), 0, out=crow[1:])
            cols, vals = row.index_select(0, perm), val.index_select(0, perm).to(out.dtype)
        St = torch.sparse_csr_tensor(crow, cols, vals, (R, G.shape[0]), check_invariants=False)
        torch.addmm(out, St, G.to(out.dtype), beta=0, alpha=1, out=out)
        return
    out.zero_()
    _grad_weight_chunks(rel, val, row, G, out)


def _grad_weight_chunks(idx, val, row, G, out) -> torch.Tensor:
    perm, uniq, seg = sort_by_latent(idx)
    rows_s = row.index_select(0, perm)
    vals_s = val.index_select(0, perm).to(G.dtype)
    U, d = uniq.numel(), G.shape[1]
    per = max(1, _GW_CHUNK_BYTES // max(1, d * G.element_size()))
    seg_list = seg.tolist() if U > per else None
    for a in range(0, U, per):
        b = min(U, a + per)
        if seg_list is None:
            e0, e1, off = 0, rows_s.numel(), seg
        else:
            e0, e1 = seg_list[a], seg_list[b]
            off = seg[a:b + 1] - e0
        part = F.embedding_bag(
            rows_s[e0:e1], G, off, mode="sum", per_sample_weights=vals_s[e0:e1], include_last_offset=True
        )
        out.index_copy_(0, uniq[a:b], part.to(out.dtype))
    return uniq
