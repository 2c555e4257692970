"""One full SAELens training step, ours vs stock ``matryoshka_batchtopk``, side by side in one process.

A step is ``SAETrainer.step`` — SAELens's own trainer: forward, Matryoshka loss, firing statistics,
backward, grad-norm clip, Adam step, ``zero_grad``, LR scheduler — for

* ``ours-dl``:      ``rad_matryoshka_batchtopk``, loss_mode="dictionary_learning" (kernels, unit-norm decoder)
* ``ours-saelens``: ``rad_matryoshka_batchtopk``, loss_mode="saelens" (kernels; same loss as stock)
* ``stock``:        SAELens ``matryoshka_batchtopk`` (dense decode of every level)

at d_in=4096, d_sae=16384, k=64, three groups (1024, 3072, 12288), N tokens per step. Variants are
interleaved (one step of each per round) so machine load hits them alike; the median over rounds is
reported, plus the peak growth of resident memory during a variant's step (sampled every 2 ms;
the parameters and Adam state, alike for all variants, are resident before the step).

Each SAE runs with the trainer's own ``Adam`` (SAELens's default, the single-tensor loop) and, as ``<variant>+fused``,
with the same Adam at ``fused=True`` (:func:`sae_rad_ext.training.runner.use_fused_adam`, what
``make_runner`` uses by default). Speed-ups are printed against ``stock`` (what a stock SAELens run
does) and, for ``+fused`` variants, against ``stock+fused`` (same optimizer on both sides).

    python benchmarks/bench_training.py                 # N = 256 and 1024, 5 rounds
    python benchmarks/bench_training.py --n 256 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import warnings

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.training.sae_trainer import SAETrainer

from sae_rad_ext import RadMatryoshkaBatchTopKTrainingSAE, RadMatryoshkaBatchTopKTrainingSAEConfig
from sae_rad_ext.training.runner import use_fused_adam

D_IN, D_SAE, K = 4096, 16384, 64
SIZES = [1024, 3072, 12288]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident set size (MiB) while the block runs."""

    def __enter__(self):
        self.start = self.peak = _rss_mib()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss_mib())


def make_sae(variant: str):
    torch.manual_seed(0)
    base = variant.removesuffix("+fused")
    if base == "stock":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ends = [sum(SIZES[: i + 1]) for i in range(len(SIZES))]
            return MatryoshkaBatchTopKTrainingSAE(
                MatryoshkaBatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=ends)
            )
    mode = {"ours-dl": "dictionary_learning", "ours-saelens": "saelens"}[base]
    return RadMatryoshkaBatchTopKTrainingSAE(
        RadMatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=SIZES, loss_mode=mode
        )
    )


def make_trainer(sae, n: int, fused: bool = False) -> SAETrainer:
    cfg = SAETrainerConfig(
        n_checkpoints=0,
        checkpoint_path=None,
        save_final_checkpoint=False,
        total_training_samples=10**9,
        device="cpu",
        autocast=False,
        lr=1e-4,
        lr_end=1e-4,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_decay_steps=0,
        n_restart_cycles=1,
        train_batch_size_samples=n,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False),
    )
    tr = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    if fused and not use_fused_adam(tr):  # what make_runner does by default (optimizer="fused_adam")
        raise RuntimeError("fused Adam is not available here")
    return tr


def _optimizer_floor(tr: SAETrainer, rounds: int) -> list[float]:
    """grad-norm clip + Adam step + zero_grad over 2·d_in·d_sae parameters (shared by every SAE)."""
    floor = []
    for _ in range(rounds):
        for p in tr.sae.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(tr.sae.parameters(), 1.0)
        tr.optimizer.step()
        tr.optimizer.zero_grad()
        floor.append(time.perf_counter() - t0)
    return floor


def bench(n: int, rounds: int, variants: list[str]) -> dict:
    g = torch.Generator().manual_seed(n)
    batches = [torch.randn(n, D_IN, generator=g) for _ in range(2)]
    trainers = {v: make_trainer(make_sae(v), n, fused=v.endswith("+fused")) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    peak: dict[str, float] = {v: 0.0 for v in variants}
    for r in range(rounds + 1):  # round 0 = warm-up (allocator, Adam state, b_dec init)
        for v in variants:
            tr = trainers[v]
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                tr.step(batches[r % 2])
                dt = time.perf_counter() - t0
            tr.n_training_steps += 1
            if r:
                times[v].append(dt)
                peak[v] = max(peak[v], mem.peak - mem.start)
    res: dict[str, dict] = {
        v: {"median_s": statistics.median(t), "runs_s": t, "step_peak_rss_delta_mib": peak[v]}
        for v, t in times.items()
    }
    for v in variants:
        if "stock" in res and not v.startswith("stock"):
            res[v]["speedup_vs_stock"] = res["stock"]["median_s"] / res[v]["median_s"]
        if v.endswith("+fused") and "stock+fused" in res and v != "stock+fused":
            res[v]["speedup_vs_stock_fused"] = res["stock+fused"]["median_s"] / res[v]["median_s"]
    for fused in (False, True):
        name = "optimizer_only_fused" if fused else "optimizer_only"
        owner = next((v for v in variants if v.endswith("+fused") == fused), None)
        if owner is not None:
            floor = _optimizer_floor(trainers[owner], rounds)
            res[name] = {"median_s": statistics.median(floor), "runs_s": floor}
    return res


def _git_state() -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "kernels", "sae_rad_ext"], capture_output=True, text=True
        ).stdout.strip()
        return head + (" (kernels/sae_rad_ext modified)" if dirty else "")
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["ours-dl", "ours-saelens", "stock", "ours-dl+fused", "ours-saelens+fused", "stock+fused"],
    )
    ap.add_argument("--json", default="benchmarks/results_training.json")
    args = ap.parse_args()
    out = {
        "shape": {"d_in": D_IN, "d_sae": D_SAE, "k": K, "group_sizes": SIZES},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_start": os.getloadavg(),
        },
        "git": _git_state(),
        "results": {},
    }
    for n in args.n:
        res = bench(n, args.rounds, args.variants)
        out["results"][str(n)] = res
        for v, r in res.items():
            if v.startswith("optimizer_only"):
                label = "clip+Adam only" + (" (fused)" if v.endswith("fused") else "")
                print(f"N={n:5d} {label:20s} median {r['median_s']:7.3f} s  (shared by every SAE)")
                continue
            sp = f"  {r['speedup_vs_stock']:.2f}x vs stock" if "speedup_vs_stock" in r else ""
            if "speedup_vs_stock_fused" in r:
                sp += f"  {r['speedup_vs_stock_fused']:.2f}x vs stock+fused"
            print(
                f"N={n:5d} {v:20s} median {r['median_s']:7.3f} s  step peak RSS +{r['step_peak_rss_delta_mib']:6.0f} MiB{sp}",
                flush=True,
            )
    out["machine"]["loadavg_end"] = os.getloadavg()
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
