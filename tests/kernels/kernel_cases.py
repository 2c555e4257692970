"""Shared kernel checks against dense torch references; run for each backend by test_kernels_*.py."""

from __future__ import annotations

import torch
from sae_rad_ext.kernels import (
    batch_topk_encode,
    clamp,
    matryoshka_decode,
    matryoshka_losses,
    sparse_decode,
    sparse_decode_flat,
    steer,
    topk_encode,
)

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def close(a, b, dtype, what=""):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = (a - b).norm() / (b.norm() + 1e-6)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]}"


def codes(N, k, d_sae, dtype, gen):
    """Unique latents per row; row 0 starts with latent 0, the last row ends with latent d_sae-1."""
    rows = []
    for n in range(N):
        perm = torch.randperm(d_sae, generator=gen)
        if n == 0:
            perm = torch.cat([torch.tensor([0]), perm[perm != 0]])
        if n == N - 1 and (n > 0 or k > 1 or d_sae == 1):
            row = perm[:k]
            if (row == d_sae - 1).sum() == 0:
                row = torch.cat([row[: k - 1], torch.tensor([d_sae - 1])])
            rows.append(row)
            continue
        rows.append(perm[:k])
    idx = torch.stack(rows)
    vals = (torch.rand(N, k, generator=gen) + 0.1).to(dtype)
    return idx, vals


def dense_acts(idx, vals, d_sae):
    N = idx.shape[0]
    return torch.zeros(N, d_sae, dtype=torch.float64).scatter_add(1, idx, vals.double())


def leaf(t):
    return t.detach().clone().requires_grad_(True)


def check_sparse_decode(N, k, d_sae, d_in, dtype, backend, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx, vals = codes(N, k, d_sae, dtype, gen)
    W = torch.randn(d_sae, d_in, generator=gen).to(dtype)
    b = torch.randn(d_in, generator=gen).to(dtype)
    v, Wl, bl = leaf(vals), leaf(W), leaf(b)
    out = sparse_decode(idx, v, Wl, bl, backend=backend)
    assert out.dtype == dtype and out.shape == (N, d_in)
    G = torch.randn(N, d_in, generator=gen).to(dtype)
    gv, gW, gb = torch.autograd.grad(out, [v, Wl, bl], G)
    v2, W2, b2 = leaf(vals.double()), leaf(W.double()), leaf(b.double())
    ref = torch.zeros(N, d_sae, dtype=torch.float64).scatter(1, idx, v2) @ W2 + b2
    rv, rW, rb = torch.autograd.grad(ref, [v2, W2, b2], G.double())
    close(out, ref, dtype, "decode")
    close(gv, rv, dtype, "grad values")
    close(gW, rW, dtype, "grad W_dec")
    close(gb, rb, dtype, "grad b_dec")
    # untouched rows of the W_dec gradient are exactly zero
    untouched = torch.ones(d_sae, dtype=torch.bool)
    untouched[idx.reshape(-1)] = False
    assert gW[untouched].abs().sum() == 0


def check_sparse_decode_flat(d_sae, d_in, dtype, backend, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = [3, 0, 1, d_sae, 2]
    idx = torch.cat([torch.randperm(d_sae, generator=gen)[:c] for c in counts])
    vals = (torch.rand(idx.numel(), generator=gen) + 0.1).to(dtype)
    offsets = torch.tensor([0] + counts).cumsum(0)
    W = torch.randn(d_sae, d_in, generator=gen).to(dtype)
    v, Wl = leaf(vals), leaf(W)
    out = sparse_decode_flat(idx, v, offsets, Wl, backend=backend)
    G = torch.randn_like(out)
    gv, gW = torch.autograd.grad(out, [v, Wl], G)
    v2, W2 = leaf(vals.double()), leaf(W.double())
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    dense = torch.zeros(len(counts), d_sae, dtype=torch.float64).index_put((rows, idx), v2, accumulate=True)
    ref = dense @ W2
    rv, rW = torch.autograd.grad(ref, [v2, W2], G.double())
    close(out, ref, dtype, "flat decode")
    assert out[1].abs().sum() == 0  # empty row
    close(gv, rv, dtype, "flat grad values")
    close(gW, rW, dtype, "flat grad W")


def check_matryoshka(N, k, d_sae, d_in, ends, dtype, backend, flat=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    idx, vals = codes(N, k, d_sae, dtype, gen)
    W = torch.randn(d_sae, d_in, generator=gen).to(dtype)
    b = torch.randn(d_in, generator=gen).to(dtype)
    x = torch.randn(N, d_in, generator=gen).to(dtype)
    weights = torch.rand(len(ends), generator=gen) + 0.5
    kw = {}
    fi, fv = idx, vals
    if flat:
        fi, fv = idx.reshape(-1), vals.reshape(-1)
        kw["offsets"] = torch.arange(0, N * k + 1, k)
    v, Wl, bl, xl = leaf(fv), leaf(W), leaf(b), leaf(x)
    out = matryoshka_decode(fi, v, Wl, ends, bl, backend=backend, **kw)
    assert out.shape == (len(ends), N, d_in)
    Gd = torch.randn(out.shape, generator=gen).to(dtype)
    g_dec = torch.autograd.grad(out, [v, Wl, bl], Gd)
    losses = matryoshka_losses(xl, fi, v, Wl, ends, bl, weights=weights, backend=backend, **kw)
    assert losses.shape == (len(ends),) and losses.dtype == torch.float32
    GL = torch.rand(len(ends), generator=gen)
    g_loss = torch.autograd.grad(losses, [xl, v, Wl, bl], GL)

    v2, W2, b2, x2 = leaf(fv.double()), leaf(W.double()), leaf(b.double()), leaf(x.double())
    dense = torch.zeros(N, d_sae, dtype=torch.float64).scatter(1, idx, v2.reshape(N, k))
    ref = torch.stack([dense[:, :e] @ W2[:e] + b2 for e in ends])
    r_dec = torch.autograd.grad(ref, [v2, W2, b2], Gd.double(), retain_graph=True)
    ref_l = (x2 - ref).pow(2).sum(-1).mean(-1) * weights.double()
    r_loss = torch.autograd.grad(ref_l, [x2, v2, W2, b2], GL.double())
    close(out, ref, dtype, "matryoshka decode")
    close(out[-1], sparse_decode(idx, vals, W, b, backend=backend), dtype, "last level == sparse_decode")
    for a, r, n in zip(g_dec, r_dec, ["values", "W_dec", "b_dec"], strict=True):
        close(a.reshape(r.shape), r, dtype, f"matryoshka decode grad {n}")
    close(losses, ref_l, dtype, "matryoshka losses")
    for a, r, n in zip(g_loss, r_loss, ["x", "values", "W_dec", "b_dec"], strict=True):
        close(a.reshape(r.shape), r, dtype, f"matryoshka loss grad {n}")


def check_topk(N, d_in, d_sae, k, dtype, backend, chunk_size=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=gen).to(dtype)
    W = torch.randn(d_in, d_sae, generator=gen).to(dtype)
    b = (torch.randn(d_sae, generator=gen) * 0.1).to(dtype)
    xl, Wl, bl = leaf(x), leaf(W), leaf(b)
    res = topk_encode(xl, Wl, bl, k, chunk_size=chunk_size, backend=backend)
    assert res.values.shape == (N, k) and res.indices.shape == (N, k) and res.indices.dtype == torch.long
    x2, W2, b2 = leaf(x.double()), leaf(W.double()), leaf(b.double())
    pre = (x2 @ W2 + b2).relu()
    # the selection must be a valid top-k of the (fp32-computed) pre-activation
    kth = pre.topk(k, dim=1).values[:, -1:]
    picked = pre.gather(1, res.indices)
    tol = 1e-4 if dtype == torch.float32 else 5e-2 * pre.abs().max().item()
    assert (picked >= kth - tol).all()
    close(res.values, picked, dtype, "topk values")
    G = torch.randn(N, k, generator=gen).to(dtype)
    g = torch.autograd.grad(res.values, [xl, Wl, bl], G)
    r = torch.autograd.grad(picked, [x2, W2, b2], G.double())
    for a, rr, n in zip(g, r, ["x", "W_enc", "b_enc"], strict=True):
        close(a, rr, dtype, f"topk grad {n}")


def check_batch_topk(N, d_in, d_sae, k, dtype, backend, chunk_size=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=gen).to(dtype)
    W = torch.randn(d_in, d_sae, generator=gen).to(dtype)
    b = (torch.randn(d_sae, generator=gen) * 0.1).to(dtype)
    xl, Wl, bl = leaf(x), leaf(W), leaf(b)
    res = batch_topk_encode(xl, Wl, bl, k, chunk_size=chunk_size, backend=backend)
    x2, W2, b2 = leaf(x.double()), leaf(W.double()), leaf(b.double())
    pre = (x2 @ W2 + b2).relu()
    K = int(k * N)
    flat_ref = pre.reshape(-1).topk(K).values
    n_pos = int((flat_ref > 0).sum())
    assert res.values.numel() == n_pos and res.offsets.shape == (N + 1,)
    assert int(res.offsets[-1]) == n_pos and (res.values > 0).all()
    rows = torch.repeat_interleave(torch.arange(N), res.offsets.diff())
    picked = pre[rows, res.indices]
    close(res.values, picked, dtype, "batch topk values")
    close(res.values.sort().values, flat_ref[:n_pos].sort().values, dtype, "batch topk set")
    assert float(res.min_value) == float(res.values.detach().min())
    # row-sorted, latents ascending within a row
    key = rows * d_sae + res.indices
    assert (key.diff() > 0).all()
    G = torch.randn(res.values.shape, generator=gen).to(dtype)
    g = torch.autograd.grad(res.values, [xl, Wl, bl], G)
    r = torch.autograd.grad(picked, [x2, W2, b2], G.double())
    for a, rr, n in zip(g, r, ["x", "W_enc", "b_enc"], strict=True):
        close(a, rr, dtype, f"batch topk grad {n}")


def check_steer_clamp(dtype, backend_unused=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d_in, d_sae = 7, 23
    h = torch.randn(2, 3, d_in, generator=gen).to(dtype)
    W_enc = torch.randn(d_in, d_sae, generator=gen).to(dtype)
    b_enc = torch.randn(d_sae, generator=gen).to(dtype)
    W_dec = torch.randn(d_sae, d_in, generator=gen).to(dtype)
    b_dec = torch.randn(d_in, generator=gen).to(dtype)
    F = torch.tensor([0, d_sae - 1, 5])
    c = torch.tensor([1.5, -2.0, 0.25]).to(dtype)
    ref = h.double() + 1.5 * W_dec[0].double() - 2.0 * W_dec[-1].double() + 0.25 * W_dec[5].double()
    close(steer(h, W_dec, F, c), ref, dtype, "steer [F]")
    cpos = torch.randn(2, 3, 3, generator=gen).to(dtype)
    close(steer(h, W_dec, F, cpos), h.double() + cpos.double() @ W_dec[F].double(), dtype, "steer [...,F]")
    t = torch.tensor([3.0, 0.0, 1.0]).to(dtype)
    for thr in (None, torch.rand(d_sae, generator=gen).to(dtype)):
        out = clamp(h, W_enc, b_enc, W_dec, F, t, b_dec=b_dec, threshold=thr)
        pre = (h.double() - b_dec.double()) @ W_enc.double() + b_enc.double()
        acts = pre.relu() if thr is None else pre.relu() * (pre > thr.double())
        edited = acts.clone()
        edited[..., F] = t.double()
        close(out, h.double() + (edited - acts) @ W_dec.double(), dtype, f"clamp thr={thr is not None}")
        # exactness: full JumpReLU SAE reconstruction of the edited hidden changes only features F
        if thr is not None:
            sae_out = acts @ W_dec.double() + b_dec.double()
            sae_out_edit = edited @ W_dec.double() + b_dec.double()
            close(out.double() - h.double(), sae_out_edit - sae_out, dtype, "clamp exact")
