"""Sparse-kernel benchmarks, side by side in ONE process on the same inputs.

    python benchmarks/bench_kernels.py                 # d_in=4096, d_sae=16384, k=64, N=256 and 1024
    python benchmarks/bench_kernels.py --quick --out /tmp/results_kernels.json   # tiny shapes (smoke test)

Compared, per N (fp32, CPU unless ``--device cuda``):

* decode forward: dense ``feature_acts @ W_dec`` (acts ``[N, d_sae]``); SAELens ``TopKTrainingSAE.decode``
  on dense acts and, with ``use_sparse_activations=True``, on COO acts (``torch.sparse.mm``: SAELens's own
  sparse path, which only its TopK architecture honours); ``F.embedding_bag`` (mode="sum",
  per_sample_weights) as the bandwidth reference; ours ``sparse_decode``;
* decode forward+backward (grads for W_dec, b_dec and the activations/values), the same, with ours both
  with and without ``reuse_grad_buffer`` (keeping the dense ``W_dec`` gradient buffer between calls);
* Matryoshka all-levels decode: SAELens ``matryoshka_batchtopk``'s ``_iterable_decode`` over every level
  (dense acts; with COO acts it is attempted and its error recorded: BatchTopK/Matryoshka produce dense
  codes and slicing a COO tensor is not supported) vs ours ``matryoshka_decode``; and the summed
  per-level loss forward+backward, SAELens's formula vs ours ``matryoshka_losses``.

SAELens SAEs run with ``rescale_acts_by_decoder_norm=False`` (ours has no rescale here either). Per
variant: median, min, max over ``--repeats`` calls (``--slow-repeats`` for the dense baselines) after a
warm-up, median user/system CPU time, and the peak resident memory above the pre-call level (Linux
``VmHWM``) in one extra call. ``TABLES`` pairs each of ours with each baseline, like for like first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    command_line,
    environment,
    finish_environment,
    peak_rss_delta_mib,
    reset_peak_rss,
    summarize,
    timed,
)

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_rad_ext.kernels import matryoshka_decode, matryoshka_losses, sparse_decode  # noqa: E402


def bench(fn, repeats: int, sync) -> dict:
    """Warm-up call, then ``repeats`` timed calls; summary in milliseconds (see ``summarize``)."""
    fn()
    sync()
    wall, user, sys_ = [], [], []
    for _ in range(repeats):
        w, u, s = timed(fn, sync)
        wall.append(w)
        user.append(u)
        sys_.append(s)
    return summarize(wall, user, sys_, scale=1e3)


def peak_mb(fn) -> float | None:
    """Peak extra resident memory (MiB) while running ``fn`` once (Linux; ``None`` elsewhere)."""
    base = reset_peak_rss()
    fn()
    return peak_rss_delta_mib(base)


def make_saelens(d_in, d_sae, k, sparse, widths=None, device="cpu"):
    if widths is None:
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        cfg = TopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, use_sparse_activations=sparse, rescale_acts_by_decoder_norm=False,
            device=device,
        )
        return TopKTrainingSAE(cfg)
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=list(widths), rescale_acts_by_decoder_norm=False,
        device=device,
    )
    return MatryoshkaBatchTopKTrainingSAE(cfg)


def run(N, d_in, d_sae, k, widths, repeats, slow_repeats, device, log):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(N)
    W = (torch.randn(d_sae, d_in, generator=gen) / d_in**0.5).to(device)
    b = torch.zeros(d_in, device=device)
    x = torch.randn(N, d_in, generator=gen).to(device)
    # distinct latents per row (like top-k), random positive values
    idx = torch.rand(N, d_sae, generator=gen).topk(k, dim=1).indices.to(device)
    val = (torch.rand(N, k, generator=gen) + 0.1).to(device)
    acts = torch.zeros(N, d_sae, device=device).scatter_(1, idx, val)
    acts_coo = acts.to_sparse()
    G = torch.randn(N, d_in, generator=gen).to(device)
    flat, vflat = idx.reshape(-1), val.reshape(-1)
    offsets = torch.arange(0, N * k + 1, k, device=device)

    sae_dense = make_saelens(d_in, d_sae, k, False, device=device)
    sae_sparse = make_saelens(d_in, d_sae, k, True, device=device)
    with torch.no_grad():
        for s in (sae_dense, sae_sparse):
            s.W_dec.copy_(W)
            s.b_dec.copy_(b)
    Wp = W.clone().requires_grad_(True)
    bp = b.clone().requires_grad_(True)

    res: dict[str, dict] = {}  # "section/variant" -> timing summary

    def record(section, name, fn, reps):
        key = f"{section}/{name}"
        try:
            stats = bench(fn, reps, sync)
            stats["peak_rss_delta_mib"] = peak_mb(fn) if device == "cpu" else None
            res[key] = {"section": section, "unit": "ms", **stats}
            log(f"  N={N} {key:60s} {stats['median']:10.2f} ms (min {stats['min']:.2f}, max {stats['max']:.2f})"
                f"   peak {stats['peak_rss_delta_mib']} MiB")
        except Exception as e:  # a baseline that does not support this path
            res[key] = {"section": section, "unit": "ms", "median": None, "error": f"{type(e).__name__}: {e}"[:200]}
            log(f"  N={N} {key:60s}   n/a ({type(e).__name__}: {str(e)[:80]})")

    # ---------------- decode forward
    with torch.no_grad():
        record("decode_fwd", "dense acts@W_dec", lambda: acts @ W + b, slow_repeats)
        record("decode_fwd", "saelens decode (dense acts)", lambda: sae_dense.decode(acts), slow_repeats)
        record("decode_fwd", "saelens decode (sparse acts)", lambda: sae_sparse.decode(acts_coo), repeats)
        record("decode_fwd", "embedding_bag", lambda: F.embedding_bag(
            flat, W, offsets, mode="sum", per_sample_weights=vflat, include_last_offset=True) + b, repeats)
        record("decode_fwd", "ours sparse_decode", lambda: sparse_decode(idx, val, W, b), repeats)

    # ---------------- decode forward + backward
    def fb_dense():
        a = acts.clone().requires_grad_(True)
        ((a @ Wp + bp) * G).sum().backward()
        Wp.grad = bp.grad = None

    def fb_saelens(sae, a_in):
        def f():
            a = a_in.clone().requires_grad_(True) if not a_in.is_sparse else a_in.detach().clone().requires_grad_(True)
            (sae.decode(a) * G).sum().backward()
            sae.W_dec.grad = sae.b_dec.grad = None
        return f

    def fb_eb():
        v = vflat.clone().requires_grad_(True)
        out = F.embedding_bag(flat, Wp, offsets, mode="sum", per_sample_weights=v, include_last_offset=True) + bp
        (out * G).sum().backward()
        Wp.grad = bp.grad = None

    def fb_ours(reuse):
        def f():
            v = val.clone().requires_grad_(True)
            (sparse_decode(idx, v, Wp, bp, reuse_grad_buffer=reuse) * G).sum().backward()
            Wp.grad = bp.grad = None
        return f

    record("decode_fwd_bwd", "dense acts@W_dec", fb_dense, slow_repeats)
    record("decode_fwd_bwd", "saelens decode (dense acts)", fb_saelens(sae_dense, acts), slow_repeats)
    record("decode_fwd_bwd", "saelens decode (sparse acts)", fb_saelens(sae_sparse, acts_coo), repeats)
    record("decode_fwd_bwd", "embedding_bag autograd", fb_eb, repeats)
    record("decode_fwd_bwd", "ours sparse_decode", fb_ours(True), repeats)
    record("decode_fwd_bwd", "ours sparse_decode no buffer reuse", fb_ours(False), repeats)

    # ---------------- Matryoshka all levels
    mat = make_saelens(d_in, d_sae, k, False, widths=widths, device=device)
    with torch.no_grad():
        mat.W_dec.copy_(W)
        mat.b_dec.copy_(b)

    def saelens_levels(a):
        return [out for _, out in mat._iterable_decode(a, include_outer_loss=True)]

    with torch.no_grad():
        record("matryoshka_all_levels", "saelens _iterable_decode (dense)", lambda: saelens_levels(acts), slow_repeats)
        record("matryoshka_all_levels", "saelens _iterable_decode (sparse)", lambda: saelens_levels(acts_coo), repeats)
        record("matryoshka_all_levels", "ours matryoshka_decode", lambda: matryoshka_decode(idx, val, W, widths, b), repeats)

    def loss_saelens():
        a = acts.clone().requires_grad_(True)
        loss = sum(
            F.mse_loss(out, x, reduction="none").sum(dim=-1).mean()
            for _, out in _iter_with(mat, a)
        )
        loss.backward()
        mat.W_dec.grad = mat.b_dec.grad = None

    def loss_ours(reuse):
        def f():
            v = val.clone().requires_grad_(True)
            matryoshka_losses(x, idx, v, Wp, widths, bp, reuse_grad_buffer=reuse).sum().backward()
            Wp.grad = bp.grad = None
        return f

    record("matryoshka_loss_fwd_bwd", "saelens levels (dense)", loss_saelens, slow_repeats)
    record("matryoshka_loss_fwd_bwd", "ours matryoshka_losses", loss_ours(True), repeats)
    record("matryoshka_loss_fwd_bwd", "ours matryoshka_losses no buffer reuse", loss_ours(False), repeats)
    return res


def _iter_with(mat, a):
    return mat._iterable_decode(a, include_outer_loss=True)


# Each table: one row per op of ours; each column a baseline (and which of our variants it is set
# against). The like-for-like column compares on equal terms: SAELens's best working path on the same
# codes, ours without gradient-buffer reuse.
_SP = ("SAELens's own sparse path: TopK SAE with use_sparse_activations=True (COO acts, torch.sparse.mm), "
       "timed from ready COO acts as ours is from ready indices and values")
TABLES = [
    {"id": "decode_fwd", "title": "Decode, forward only", "rows": ["ours sparse_decode"], "columns": [
        {"id": "like_for_like", "title": "like for like: SAELens sparse decode", "meaning": _SP,
         "baseline": "decode_fwd/saelens decode (sparse acts)", "ours": {"ours sparse_decode": "decode_fwd/ours sparse_decode"}},
        {"id": "saelens_dense", "title": "SAELens dense decode", "meaning": "SAELens decode on dense [N, d_sae] "
         "acts: what BatchTopK and Matryoshka BatchTopK do (their activation ignores use_sparse_activations)",
         "baseline": "decode_fwd/saelens decode (dense acts)", "ours": {"ours sparse_decode": "decode_fwd/ours sparse_decode"}},
        {"id": "dense_matmul", "title": "dense acts @ W_dec", "meaning": "plain torch dense matmul",
         "baseline": "decode_fwd/dense acts@W_dec", "ours": {"ours sparse_decode": "decode_fwd/ours sparse_decode"}},
        {"id": "embedding_bag", "title": "embedding_bag (reference)", "meaning": "F.embedding_bag(mode='sum', "
         "per_sample_weights): torch's gather-and-sum, the bandwidth reference",
         "baseline": "decode_fwd/embedding_bag", "ours": {"ours sparse_decode": "decode_fwd/ours sparse_decode"}},
    ]},
    {"id": "decode_fwd_bwd", "title": "Decode, forward + backward", "rows": ["ours sparse_decode"], "columns": [
        {"id": "like_for_like", "title": "like for like: SAELens sparse decode", "meaning": _SP + "; ours "
         "without grad-buffer reuse (a fresh W_dec gradient each call, as autograd gives SAELens)",
         "baseline": "decode_fwd_bwd/saelens decode (sparse acts)",
         "ours": {"ours sparse_decode": "decode_fwd_bwd/ours sparse_decode no buffer reuse"}},
        {"id": "grad_buffer_reuse", "title": "+ grad-buffer reuse (ours)", "meaning": "as like for like, but ours "
         "keeps the dense W_dec gradient buffer between calls and re-zeroes only the touched rows",
         "baseline": "decode_fwd_bwd/saelens decode (sparse acts)",
         "ours": {"ours sparse_decode": "decode_fwd_bwd/ours sparse_decode"}},
        {"id": "saelens_dense", "title": "SAELens dense decode", "meaning": "SAELens decode on dense acts "
         "(BatchTopK / Matryoshka's path); ours without buffer reuse",
         "baseline": "decode_fwd_bwd/saelens decode (dense acts)",
         "ours": {"ours sparse_decode": "decode_fwd_bwd/ours sparse_decode no buffer reuse"}},
        {"id": "embedding_bag", "title": "embedding_bag autograd (reference)", "meaning": "F.embedding_bag with "
         "autograd; ours without buffer reuse", "baseline": "decode_fwd_bwd/embedding_bag autograd",
         "ours": {"ours sparse_decode": "decode_fwd_bwd/ours sparse_decode no buffer reuse"}},
    ]},
    {"id": "matryoshka_all_levels", "title": "Matryoshka decode of every level, forward only",
     "rows": ["ours matryoshka_decode"], "columns": [
        {"id": "like_for_like", "title": "like for like: SAELens _iterable_decode (dense)", "meaning": "SAELens "
         "matryoshka_batchtopk's only working path: its BatchTopK codes are dense",
         "baseline": "matryoshka_all_levels/saelens _iterable_decode (dense)",
         "ours": {"ours matryoshka_decode": "matryoshka_all_levels/ours matryoshka_decode"}},
        {"id": "saelens_sparse", "title": "SAELens _iterable_decode (COO acts)", "meaning": "the same with COO "
         "acts; slicing a COO tensor per level fails in torch, so there is no sparse Matryoshka path",
         "baseline": "matryoshka_all_levels/saelens _iterable_decode (sparse)",
         "ours": {"ours matryoshka_decode": "matryoshka_all_levels/ours matryoshka_decode"}},
    ]},
    {"id": "matryoshka_loss_fwd_bwd", "title": "Matryoshka summed level losses, forward + backward",
     "rows": ["ours matryoshka_losses"], "columns": [
        {"id": "like_for_like", "title": "like for like: SAELens levels (dense)", "meaning": "SAELens's "
         "per-level MSE over _iterable_decode (dense codes); ours without grad-buffer reuse",
         "baseline": "matryoshka_loss_fwd_bwd/saelens levels (dense)",
         "ours": {"ours matryoshka_losses": "matryoshka_loss_fwd_bwd/ours matryoshka_losses no buffer reuse"}},
        {"id": "grad_buffer_reuse", "title": "+ grad-buffer reuse (ours)", "meaning": "as like for like, but "
         "ours keeps the dense W_dec gradient buffer between calls",
         "baseline": "matryoshka_loss_fwd_bwd/saelens levels (dense)",
         "ours": {"ours matryoshka_losses": "matryoshka_loss_fwd_bwd/ours matryoshka_losses"}},
    ]},
]
for _t in TABLES:
    for _c in _t["columns"]:
        _c["like_for_like"] = _c["id"] == "like_for_like"


def ratio_lines(results: dict) -> list[str]:
    """Printable lines: baseline median / ours median per N, table, column."""
    lines = []
    for n, res in results.items():
        med = {k: v.get("median") for k, v in res["variants"].items()}
        for t in TABLES:
            for c in t["columns"]:
                for row, ours in c["ours"].items():
                    a, b = med.get(ours), med.get(c["baseline"])
                    r = f"{b / a:.2f}x" if a and b else "n/a"
                    lines.append(f"N={n:>5} {t['id']:24s} {row} vs {c['title']:45s} {r}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--d-in", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--widths", type=int, nargs="+", default=None,
                   help="Matryoshka cumulative widths (default: d_sae/16, /8, /4, /2, 1)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--slow-repeats", type=int, default=5, help="repeats for the dense baselines")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats (smoke test)")
    p.add_argument("--out", default=str(Path(__file__).with_name("results_kernels.json")))
    a = p.parse_args(argv)
    if a.quick:
        a.N, a.d_in, a.d_sae, a.k, a.repeats, a.slow_repeats = [8], 32, 128, 4, 2, 2
    widths = a.widths or [a.d_sae // 16, a.d_sae // 8, a.d_sae // 4, a.d_sae // 2, a.d_sae]
    log = lambda s: print(s, flush=True)  # noqa: E731
    env = environment(a.device)
    shapes = {"d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "widths": widths}
    log(f"shapes {shapes} N={a.N}; {env}")
    t0 = time.perf_counter()
    results = {}
    for N in a.N:
        results[str(N)] = {"variants": run(N, a.d_in, a.d_sae, a.k, widths, a.repeats, a.slow_repeats, a.device, log)}
    finish_environment(env)
    env["wall_s"] = round(time.perf_counter() - t0, 1)
    out = {
        "benchmark": "kernels",
        "command": command_line("bench_kernels.py", argv),
        "quick": a.quick,
        "environment": env,
        "shape": shapes,
        "n": a.N,
        "repeats": a.repeats,
        "slow_repeats": a.slow_repeats,
        "tables": TABLES,
        "results": results,
    }
    print("\n".join(ratio_lines(results)))
    Path(a.out).write_text(json.dumps(out, indent=1))
    log(f"wrote {a.out} in {env['wall_s']} s; load {env['load_avg_start']} -> {env['load_avg_end']}")


if __name__ == "__main__":
    main()
