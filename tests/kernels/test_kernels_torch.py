"""Torch (CPU) path of sae_rad_ext.kernels vs dense torch references."""

import pytest
import torch
from kernel_cases import (
    check_batch_topk,
    check_matryoshka,
    check_sparse_decode,
    check_sparse_decode_flat,
    check_steer_clamp,
    check_topk,
)
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

DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(7, 3, 19, 13), (1, 1, 5, 3), (4, 11, 11, 6), (9, 5, 33, 17), (3, 64, 300, 129)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sparse_decode(shape, dtype):
    check_sparse_decode(*shape, dtype, "torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_decode_without_grad_skips_autograd(dtype):
    """Inference / steering path (nothing requires grad, or no_grad): same numbers, no autograd node."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(23, 17, generator=g).to(dtype)
    b = torch.randn(17, generator=g).to(dtype)
    idx = torch.randint(0, 23, (6, 4), generator=g)
    val = torch.rand(6, 4, generator=g).to(dtype)
    ref = (
        torch.zeros(6, 23, dtype=torch.float64).scatter_add_(1, idx, val.double()) @ W.double()
    ) + b.double()
    plain = sparse_decode(idx, val, W, b)
    Wg = W.clone().requires_grad_()
    with torch.no_grad():
        nograd = sparse_decode(idx, val, Wg, b)
    graph = sparse_decode(idx, val, Wg, b)
    assert plain.grad_fn is None and nograd.grad_fn is None and graph.grad_fn is not None
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}
    torch.testing.assert_close(plain.double(), ref, **tol)
    assert torch.equal(plain, nograd) and torch.equal(plain, graph.detach())
    offs = torch.tensor([0, 3, 3, 7, 24])  # flat form, an empty row decodes to b
    flat = sparse_decode_flat(idx.reshape(-1), val.reshape(-1), offs, W, b)
    assert flat.grad_fn is None and torch.equal(flat[1], b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_decode_flat(dtype):
    check_sparse_decode_flat(13, 9, dtype, "torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize(
    "shape,ends",
    [
        ((7, 3, 19, 13), [2, 7, 19]),
        ((4, 11, 11, 6), [11]),
        ((5, 1, 8, 5), [1, 2, 4, 8]),
        ((6, 8, 40, 33), [16, 40]),
    ],
)
def test_matryoshka(shape, ends, flat, dtype):
    check_matryoshka(*shape, ends, dtype, "torch", flat=flat)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "N,d_in,d_sae,k,chunk", [(5, 7, 19, 3, None), (4, 6, 13, 1, 4), (3, 5, 9, 9, 2), (6, 9, 31, 4, 7)]
)
def test_topk_encode(N, d_in, d_sae, k, chunk, dtype):
    check_topk(N, d_in, d_sae, k, dtype, "torch", chunk_size=chunk)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "N,d_in,d_sae,k,chunk", [(5, 7, 19, 3, None), (4, 6, 13, 1, 4), (3, 5, 9, 2.5, 2), (6, 9, 31, 4, 7)]
)
def test_batch_topk_encode(N, d_in, d_sae, k, chunk, dtype):
    check_batch_topk(N, d_in, d_sae, k, dtype, "torch", chunk_size=chunk)


@pytest.mark.parametrize("dtype", DTYPES)
def test_steer_and_clamp(dtype):
    check_steer_clamp(dtype)


def test_steer_clamp_grads():
    torch.manual_seed(0)
    h = torch.randn(4, 6, requires_grad=True)
    W_dec = torch.randn(10, 6, requires_grad=True)
    W_enc = torch.randn(6, 10, requires_grad=True)
    b_enc = torch.randn(10, requires_grad=True)
    F = torch.tensor([1, 9])
    out = steer(h, W_dec, F, torch.tensor([2.0, -1.0])) + clamp(h, W_enc, b_enc, W_dec, F, 0.0)
    out.sum().backward()
    assert h.grad is not None and W_dec.grad is not None and W_enc.grad is not None
    assert W_dec.grad[[0, 2, 3]].abs().sum() == 0 and W_dec.grad[[1, 9]].abs().sum() > 0


def test_grad_buffer_reuse_is_correct_across_steps_and_accumulation():
    torch.manual_seed(0)
    W = torch.randn(50, 8, requires_grad=True)
    ref_W = W.detach().clone().requires_grad_(True)
    for step in range(4):
        idx = torch.randint(0, 50, (6, 4))
        v = torch.rand(6, 4)
        G = torch.randn(6, 8)
        sparse_decode(idx, v, W, reuse_grad_buffer=True).backward(G)
        (torch.zeros(6, 50).scatter_add(1, idx, v) @ ref_W).backward(G)
        torch.testing.assert_close(W.grad, ref_W.grad)
        if step % 2 == 1:  # zero_grad every other step: the others accumulate into W.grad
            W.grad = None
            ref_W.grad = None
    # losses path too
    W.grad = None
    x = torch.randn(6, 8)
    for _ in range(3):
        idx = torch.stack([torch.randperm(50)[:4] for _ in range(6)])
        v = torch.rand(6, 4)
        matryoshka_losses(x, idx, v, W, [10, 50], reuse_grad_buffer=True).sum().backward()
        dense = torch.zeros(6, 50).scatter(1, idx, v)
        ref_W.grad = None
        sum(((x - dense[:, :e] @ ref_W[:e]) ** 2).sum(-1).mean() for e in (10, 50)).backward()
        torch.testing.assert_close(W.grad, ref_W.grad)
        W.grad = None


def test_grad_buffer_never_overwrites_memory_someone_holds():
    torch.manual_seed(0)
    W = torch.randn(40, 8, requires_grad=True)
    ref_W = W.detach().clone().requires_grad_(True)
    x = torch.randn(5, 8)
    kept = []
    for _ in range(3):
        idx = torch.stack([torch.randperm(40)[:3] for _ in range(5)])
        v = torch.rand(5, 3)
        # the same weight used by three ops in one graph
        loss = (sparse_decode(idx, v, W) ** 2).sum() + (sparse_decode(idx[:, :1], v[:, :1], W) ** 2).sum()
        loss = loss + matryoshka_losses(x, idx, v, W, [7, 40]).sum()
        loss.backward()
        dense = torch.zeros(5, 40).scatter(1, idx, v)
        d1 = torch.zeros(5, 40).scatter(1, idx[:, :1], v[:, :1])
        ref = ((dense @ ref_W) ** 2).sum() + ((d1 @ ref_W) ** 2).sum()
        ref = ref + sum(((x - dense[:, :e] @ ref_W[:e]) ** 2).sum(-1).mean() for e in (7, 40))
        ref.backward()
        torch.testing.assert_close(W.grad, ref_W.grad)
        kept.append((W.grad, ref_W.grad.clone()))  # a caller keeping old gradients
        W.grad = None
        ref_W.grad = None
    for g, r in kept:
        torch.testing.assert_close(g, r)


def test_saelens_matryoshka_loss_convention():
    """matryoshka_losses(...).sum() == SAELens matryoshka_batchtopk's summed per-level MSE."""
    from sae_lens.saes.sae import mse_loss

    torch.manual_seed(1)
    N, d_in, d_sae, k = 8, 6, 20, 3
    widths = [5, 12, 20]
    W = torch.randn(d_sae, d_in)
    b = torch.randn(d_in)
    x = torch.randn(N, d_in)
    idx = torch.stack([torch.randperm(d_sae)[:k] for _ in range(N)])
    v = torch.rand(N, k)
    acts = torch.zeros(N, d_sae).scatter(1, idx, v)
    stock = sum(mse_loss(acts[:, :w] @ W[:w] + b, x).sum(dim=-1).mean() for w in widths)
    ours = matryoshka_losses(x, idx, v, W, widths, b).sum()
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=0)


def test_clear_errors(monkeypatch):
    W = torch.randn(10, 4)
    idx = torch.tensor([[0, 10]])
    v = torch.rand(1, 2)
    with pytest.raises(IndexError, match=r"outside \[0, 10\)"):
        sparse_decode(idx, v, W)
    with pytest.raises(IndexError):
        sparse_decode(torch.tensor([[-1, 2]]), v, W)
    with pytest.raises(ValueError, match="must match"):
        sparse_decode(torch.tensor([[0, 1, 2]]), v, W)
    with pytest.raises(TypeError, match="integer"):
        sparse_decode(v, v, W)
    with pytest.raises(TypeError, match="floating"):
        sparse_decode(torch.tensor([[0, 1]]), torch.tensor([[1, 2]]), W)
    with pytest.raises(ValueError, match="b_dec"):
        sparse_decode(torch.tensor([[0, 1]]), v, W, torch.zeros(5))
    with pytest.raises(ValueError, match="offsets"):
        sparse_decode_flat(torch.tensor([0, 1]), torch.rand(2), torch.tensor([0, 3]), W)
    with pytest.raises(ValueError, match="group_ends"):
        matryoshka_decode(torch.tensor([[0, 1]]), v, W, [4, 8])
    with pytest.raises(ValueError, match="group_ends"):
        matryoshka_decode(torch.tensor([[0, 1]]), v, W, [6, 4, 10])
    with pytest.raises(ValueError, match="backend"):
        sparse_decode(torch.tensor([[0, 1]]), v, W, backend="cuda")
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(torch.randn(2, 4), torch.randn(4, 10), torch.randn(10), 11)
    with pytest.raises(ValueError, match="d_in"):
        batch_topk_encode(torch.randn(2, 5), torch.randn(4, 10), torch.randn(10), 2)
    with pytest.raises(IndexError):
        steer(torch.randn(3, 4), W, torch.tensor([10]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="last dimension"):
        steer(torch.randn(3, 4), W, torch.tensor([1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="shapes disagree"):
        clamp(
            torch.randn(3, 4), torch.randn(4, 10), torch.randn(10), torch.randn(9, 4), torch.tensor([1]), 0.0
        )
    with pytest.raises(ValueError, match="x must have shape"):
        matryoshka_losses(torch.randn(2, 4), torch.tensor([[0, 1]]), v, W, [10])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        sparse_decode(torch.tensor([[0, 1]]), v, W, backend="triton")


def test_cpu_tensors_default_to_torch_backend():
    from sae_rad_ext.kernels._checks import resolve_backend

    assert resolve_backend(None, torch.zeros(1)) == "torch"
    with pytest.raises(ValueError, match="one device"):
        resolve_backend(None, torch.zeros(1), torch.zeros(1, device="meta"))


def test_cpu_ops_never_touch_triton(monkeypatch):
    """With backend=None CPU tensors go to the torch primitives; the Triton module is never used."""
    import sae_rad_ext.kernels._dispatch as dispatch

    seen = []
    real = dispatch.ops
    monkeypatch.setattr(dispatch, "ops", lambda b: seen.append(b) or real(b))
    import sae_rad_ext.kernels.decode as dec
    import sae_rad_ext.kernels.encode as enc
    import sae_rad_ext.kernels.matryoshka as mat

    for m in (dec, enc, mat):
        monkeypatch.setattr(m, "ops", dispatch.ops)
    W = torch.randn(10, 4, requires_grad=True)
    x = torch.randn(3, 4)
    r = topk_encode(x, W.t().detach().requires_grad_(), torch.zeros(10), 2)
    out = sparse_decode(r.indices, r.values, W) + matryoshka_decode(r.indices, r.values, W, [5, 10]).sum(0)
    (out.sum() + matryoshka_losses(x, r.indices, r.values, W, [5, 10]).sum()).backward()
    assert seen and set(seen) == {"torch"}


@pytest.mark.slow
def test_bench_kernels_quick_runs(tmp_path):
    """The benchmark script runs end to end (tiny shapes) and records every comparison."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_kernels.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    variants = res["results"]["8"]["variants"]
    assert variants["decode_fwd/ours sparse_decode"]["median"] > 0
    assert variants["decode_fwd/saelens decode (sparse acts)"]["median"] > 0  # SAELens's sparse path, like for like
    assert {v["section"] for v in variants.values()} >= {"decode_fwd", "decode_fwd_bwd", "matryoshka_all_levels"}
    assert res["environment"]["torch"] and res["quick"] is True
