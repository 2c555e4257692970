"""Encoder fast paths: ``pre_bias`` gradients and the exact candidate-pass top-k."""

import pytest
import torch
from sae_rad_ext.kernels import batch_topk_encode, topk_encode
from sae_rad_ext.kernels.encode import _flat_topk


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_pre_bias_grads_match_dense(dtype, x_grad, batch):
    gen = torch.Generator().manual_seed(3)
    N, d_in, d_sae, k = 6, 9, 31, 4
    x = torch.randn(N, d_in, generator=gen).to(dtype).requires_grad_(x_grad)
    W = torch.randn(d_in, d_sae, generator=gen).to(dtype).requires_grad_()
    b = (torch.randn(d_sae, generator=gen) * 0.1).to(dtype).requires_grad_()
    pb = torch.randn(d_in, generator=gen).to(dtype).requires_grad_()
    if batch:
        res = batch_topk_encode(x, W, b, k, pre_bias=pb)
        rows = torch.repeat_interleave(torch.arange(N), res.offsets.diff())
        idx, vals = res.indices, res.values
    else:
        res = topk_encode(x, W, b, k, pre_bias=pb)
        rows = torch.arange(N).repeat_interleave(k)
        idx, vals = res.indices.reshape(-1), res.values.reshape(-1)
    leaves = [t for t in (x, W, b, pb) if t.requires_grad]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    dense = dict(zip([id(t) for t in leaves], ref_leaves, strict=True))
    x2 = dense.get(id(x), x.detach().double())
    W2, b2, pb2 = dense[id(W)], dense[id(b)], dense[id(pb)]
    pre = ((x2 - pb2) @ W2 + b2).relu()
    picked = pre[rows, idx]
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(vals.double(), picked.detach(), rtol=tol, atol=tol)
    G = torch.randn(vals.shape, generator=gen)
    got = torch.autograd.grad(vals, leaves, G.to(dtype))
    want = torch.autograd.grad(picked, ref_leaves, G.double())
    for a, r in zip(got, want, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), r, rtol=tol, atol=tol * max(1.0, float(r.abs().max())))


def test_pre_bias_shape_error():
    x, W, b = torch.randn(3, 4), torch.randn(4, 8), torch.zeros(8)
    with pytest.raises(ValueError, match="pre_bias"):
        batch_topk_encode(x, W, b, 2, pre_bias=torch.zeros(5))


@pytest.mark.parametrize("relu", [False, True])
def test_flat_topk_candidate_pass_is_exact(relu):
    gen = torch.Generator().manual_seed(1)
    flat = torch.randn(1 << 21, generator=gen)
    if relu:
        flat = flat.relu()
    for K in (1, 1000, 1 << 16, 1 << 20):  # the last one falls back to a full top-k
        v, p = _flat_topk(flat, K)
        rv = torch.topk(flat, K).values
        torch.testing.assert_close(v.sort().values, rv.sort().values, rtol=0, atol=0)
        torch.testing.assert_close(flat[p], v, rtol=0, atol=0)
        assert p.unique().numel() == K


@pytest.mark.parametrize("with_bias", [False, True])
def test_matryoshka_losses_return_reconstruction(with_bias):
    from sae_rad_ext.kernels import matryoshka_losses, sparse_decode

    gen = torch.Generator().manual_seed(5)
    N, d_in, d_sae, k = 5, 7, 19, 4
    idx = torch.stack([torch.randperm(d_sae, generator=gen)[:k] for _ in range(N)])
    vals = torch.rand(N, k, generator=gen).requires_grad_()
    W = torch.randn(d_sae, d_in, generator=gen).requires_grad_()
    b = torch.randn(d_in, generator=gen) if with_bias else None
    x = torch.randn(N, d_in, generator=gen)
    plain = matryoshka_losses(x, idx, vals, W, [3, 8, 19], b)
    losses, recon = matryoshka_losses(x, idx, vals, W, [3, 8, 19], b, return_reconstruction=True)
    torch.testing.assert_close(losses, plain)
    assert not recon.requires_grad and recon.shape == (N, d_in)
    torch.testing.assert_close(recon, sparse_decode(idx, vals, W, b).detach(), rtol=1e-6, atol=1e-6)
    g1 = torch.autograd.grad(losses.sum(), [vals, W])
    g2 = torch.autograd.grad(plain.sum(), [vals, W])
    for a, r in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, r)
