"""Triton primitives (CUDA tensors, or any tensor under ``TRITON_INTERPRET=1``).

Same names and contracts as :mod:`._torch_ops`. One kernel does all the gather-sum work:

``_bag_sum_kernel``: ``out[out_row[r], d] = Σ_{e in offsets[r]:offsets[r+1]} val[e] · T[idx[e], d]``

* decode: ``T = W_dec``, rows = output rows, ``out_row`` = identity;
* W_dec gradient: a sorted segment sum — entries sorted by latent, ``T = grad_out``, ``idx`` = the
  entries' output rows, one bag per latent (empty bags write zeros). Each gradient row is written by
  exactly one program: no float atomics.

``_gather_dot_kernel``: ``g[e] = <G[row[e]], T[idx[e]]>`` (values gradient).

Everything is loaded as fp32 and accumulated in fp32 (bf16/fp16 inputs are upcast in registers); results
are stored in the output's dtype. Block sizes are powers of two ≥ 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _torch_ops
from ._checks import sort1d

BLOCK_E = 16
BLOCK_D_MAX = 128


@triton.jit
def _bag_sum_kernel(
    idx_ptr, val_ptr, off_ptr, out_row_ptr, T_ptr, out_ptr, D,
    stride_t, stride_o,
    HAS_OUT_ROW: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    start = tl.load(off_ptr + r)
    end = tl.load(off_ptr + r + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)
        emask = e < end
        ids = tl.load(idx_ptr + e, mask=emask, other=0).to(tl.int64)
        v = tl.load(val_ptr + e, mask=emask, other=0.0).to(tl.float32)
        t = tl.load(
            T_ptr + ids[:, None] * stride_t + d[None, :], mask=emask[:, None] & dmask[None, :], other=0.0
        ).to(tl.float32)
        acc += tl.sum(t * v[:, None], axis=0)
    if HAS_OUT_ROW:
        orow = tl.load(out_row_ptr + r).to(tl.int64)
    else:
        orow = r.to(tl.int64)
    tl.store(out_ptr + orow * stride_o + d, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _gather_dot_kernel(
    idx_ptr, row_ptr, T_ptr, G_ptr, out_ptr, NNZ, D, stride_t, stride_g,
    BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    e = pid * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = e < NNZ
    ids = tl.load(idx_ptr + e, mask=emask, other=0).to(tl.int64)
    rows = tl.load(row_ptr + e, mask=emask, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = emask[:, None] & (d < D)[None, :]
        t = tl.load(T_ptr + ids[:, None] * stride_t + d[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(G_ptr + rows[:, None] * stride_g + d[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(t * g, axis=1)
    tl.store(out_ptr + e, acc.to(out_ptr.dtype.element_ty), mask=emask)


def _block_d(D: int) -> int:
    return max(16, min(BLOCK_D_MAX, triton.next_power_of_2(max(D, 1))))


def _bag_sum(idx, val, offsets, T, out, out_row=None):
    B = offsets.numel() - 1
    D = T.shape[1]
    if B == 0 or D == 0:
        return out
    T = T.contiguous()
    bd = _block_d(D)
    grid = (B, triton.cdiv(D, bd))
    _bag_sum_kernel[grid](
        idx, val, offsets, out_row if out_row is not None else offsets, T, out, D,
        T.stride(0), out.stride(0),
        HAS_OUT_ROW=out_row is not None, BLOCK_E=BLOCK_E, BLOCK_D=bd,
    )
    return out


def decode_csr(idx, val, offsets, W):
    B = offsets.numel() - 1
    out = torch.zeros(B, W.shape[1], dtype=W.dtype, device=W.device)
    if idx.numel() == 0:
        return out
    return _bag_sum(idx.contiguous(), val.contiguous(), offsets.contiguous(), W, out)


row_ids_from_offsets = _torch_ops.row_ids_from_offsets
sort_by_latent = _torch_ops.sort_by_latent


def grad_values(idx, row, offsets, W, G, k=None):
    nnz = idx.numel()
    out = torch.empty(nnz, dtype=W.dtype, device=W.device)
    if nnz == 0:
        return out
    W = W.contiguous()
    G = G.contiguous()
    D = W.shape[1]
    _gather_dot_kernel[(triton.cdiv(nnz, BLOCK_E),)](
        idx.contiguous(), row.contiguous(), W, G, out, nnz, D, W.stride(0), G.stride(0),
        BLOCK_E=BLOCK_E, BLOCK_D=_block_d(D),
    )
    return out


def grad_weight_dense(idx, val, row, G, out, base: int = 0):
    """Overwrite every row of ``out [R, d]`` with the sorted segment sum of ``val[e] · G[row[e]]`` over
    the entries of latent ``base + r`` (zeros for untouched latents). One program per (row, d-block):
    each gradient row is written exactly once, no atomics."""
    R = out.shape[0]
    if R == 0:
        return
    if idx.numel() == 0:
        out.zero_()
        return
    rel = idx - base if base else idx
    rel_sorted, perm = sort1d(rel)
    seg = torch.zeros(R + 1, dtype=torch.long, device=idx.device)
    torch.cumsum(torch.bincount(rel_sorted, minlength=R), 0, out=seg[1:])
    _bag_sum(row.index_select(0, perm).contiguous(), val.index_select(0, perm).contiguous(), seg, G.contiguous(), out)
