"""Sparse-kernel benchmarks, side by side in ONE process on the same inputs.

    python benchmarks/bench_kernels.py                 # d_in=4096, d_sae=16384, k=64, N=256 and 1024
    python benchmarks/bench_kernels.py --quick         # tiny shapes (smoke test)

Compared, per N (fp32, CPU unless CUDA is available and --device cuda):
* decode forward: dense ``feature_acts @ W_dec`` (acts ``[N, d_sae]``), SAELens ``TopKTrainingSAE.decode``
  (dense acts, and ``use_sparse_activations=True``: COO acts → ``torch.sparse.mm``), ``F.embedding_bag``
  (mode="sum", per_sample_weights) as the bandwidth reference, ours ``sparse_decode``;
* decode forward+backward (grads for W_dec, b_dec and the activations/values), same four + ours with
  ``reuse_grad_buffer=False`` (a fresh gradient allocation every step);
* Matryoshka all-levels decode: SAELens ``matryoshka_batchtopk``'s ``_iterable_decode`` over every level
  (dense and sparse acts) vs ours ``matryoshka_decode``; and the summed per-level loss forward+backward,
  SAELens's formula vs ours ``matryoshka_losses``.

Median of ``--repeats`` runs (fewer for the slow dense baselines). Peak memory = peak resident set size
above the pre-call level (``/proc/self/clear_refs`` + ``VmHWM``, Linux), measured in a separate call.
Results go to ``benchmarks/results_kernels.json`` and a table with ratios is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_rad_ext.kernels import matryoshka_decode, matryoshka_losses, sparse_decode  # noqa: E402


def _rss_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_mb(fn) -> float | None:
    """Peak extra resident memory (MiB) while running ``fn`` once."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _rss_kb("VmRSS:")
    fn()
    hwm = _rss_kb("VmHWM:")
    if base is None or hwm is None:
        return None
    return round((hwm - base) / 1024, 1)


def bench(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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

    res: dict[str, dict] = {}

    def record(section, name, fn, reps):
        try:
            t = bench(fn, reps, sync)
            m = peak_mb(fn) if device == "cpu" else None
            res.setdefault(section, {})[name] = {"ms": round(t, 3), "peak_mb": m}
            log(f"  N={N} {section:22s} {name:34s} {t:10.2f} ms   peak {m} MiB")
        except Exception as e:  # a baseline that does not support this path
            res.setdefault(section, {})[name] = {"ms": None, "error": f"{type(e).__name__}: {e}"[:200]}
            log(f"  N={N} {section:22s} {name:34s}   n/a ({type(e).__name__}: {str(e)[:80]})")

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


RATIOS = [
    ("decode_fwd", "ours sparse_decode", "dense acts@W_dec", 25.0),
    ("decode_fwd", "ours sparse_decode", "saelens decode (dense acts)", None),
    ("decode_fwd", "ours sparse_decode", "saelens decode (sparse acts)", None),
    ("decode_fwd", "ours sparse_decode", "embedding_bag", 0.9),
    ("decode_fwd_bwd", "ours sparse_decode", "dense acts@W_dec", 8.0),
    ("decode_fwd_bwd", "ours sparse_decode", "saelens decode (sparse acts)", None),
    ("decode_fwd_bwd", "ours sparse_decode", "embedding_bag autograd", 1.5),
    ("decode_fwd_bwd", "ours sparse_decode no buffer reuse", "dense acts@W_dec", 8.0),
    ("decode_fwd_bwd", "ours sparse_decode no buffer reuse", "embedding_bag autograd", 1.5),
    ("matryoshka_all_levels", "ours matryoshka_decode", "saelens _iterable_decode (dense)", 10.0),
    ("matryoshka_all_levels", "ours matryoshka_decode", "saelens _iterable_decode (sparse)", None),
    ("matryoshka_loss_fwd_bwd", "ours matryoshka_losses", "saelens levels (dense)", None),
    ("matryoshka_loss_fwd_bwd", "ours matryoshka_losses no buffer reuse", "saelens levels (dense)", None),
]


def ratios(res):
    out = []
    for sec, ours, base, target in RATIOS:
        a = res.get(sec, {}).get(ours, {}).get("ms")
        b = res.get(sec, {}).get(base, {}).get("ms")
        r = round(b / a, 2) if a and b else None
        out.append({"section": sec, "ours": ours, "baseline": base, "speedup": r, "target": target,
                    "met": (r >= target) if (r is not None and target is not None) else None})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--d-in", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--widths", type=int, nargs="+", default=None,
                   help="Matryoshka cumulative widths (default: d_sae/16, /8, /4, /2, 1)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--slow-repeats", type=int, default=3, help="repeats for the dense baselines")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repeats (smoke test)")
    p.add_argument("--out", default=str(Path(__file__).with_name("results_kernels.json")))
    a = p.parse_args(argv)
    if a.quick:
        a.N, a.d_in, a.d_sae, a.k, a.repeats, a.slow_repeats = [8], 32, 128, 4, 2, 1
    widths = a.widths or [a.d_sae // 16, a.d_sae // 8, a.d_sae // 4, a.d_sae // 2, a.d_sae]
    log = lambda s: print(s, flush=True)  # noqa: E731
    conditions = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "processor": platform.processor() or None, "python": platform.python_version(),
        "device": a.device, "loadavg_start": loadavg(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    log(f"shapes d_in={a.d_in} d_sae={a.d_sae} k={a.k} N={a.N} widths={widths}; {conditions}")
    results = {"shapes": {"d_in": a.d_in, "d_sae": a.d_sae, "k": a.k, "N": a.N, "widths": widths},
               "repeats": a.repeats, "slow_repeats": a.slow_repeats, "conditions": conditions, "runs": {}}
    for N in a.N:
        res = run(N, a.d_in, a.d_sae, a.k, widths, a.repeats, a.slow_repeats, a.device, log)
        results["runs"][str(N)] = {"timings": res, "ratios": ratios(res)}
    conditions["loadavg_end"] = loadavg()
    print()
    print(table(results))
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {a.out}")


def table(results) -> str:
    lines = ["| N | comparison | baseline ms | ours ms | speedup | target |", "|---|---|---|---|---|---|"]
    for N, run_ in results["runs"].items():
        t = run_["timings"]
        for r in run_["ratios"]:
            a = t.get(r["section"], {}).get(r["ours"], {}).get("ms")
            b = t.get(r["section"], {}).get(r["baseline"], {}).get("ms")
            tgt = "" if r["target"] is None else (f"≥{r['target']}× " + ("✓" if r["met"] else "✗"))
            sp = "n/a" if r["speedup"] is None else f"{r['speedup']}×"
            lines.append(f"| {N} | {r['section']}: {r['ours']} vs {r['baseline']} | {b} | {a} | {sp} | {tgt} |")
    lines.append("")
    lines.append("| N | section | variant | ms | peak MiB |")
    lines.append("|---|---|---|---|---|")
    for N, run_ in results["runs"].items():
        for sec, d in run_["timings"].items():
            for name, v in d.items():
                lines.append(f"| {N} | {sec} | {name} | {v.get('ms')} | {v.get('peak_mb')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
