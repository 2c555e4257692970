"""One full SAELens training step, ours vs stock ``matryoshka_batchtopk``, like for like, in one process.

A step is ``SAETrainer.step`` — SAELens's own trainer: forward, Matryoshka loss, firing statistics,
backward, grad-norm clip, Adam step, ``zero_grad``, LR scheduler — for

* ``stock``:        SAELens ``matryoshka_batchtopk`` (dense BatchTopK codes, dense decode of every level);
* ``ours-saelens``: ``rad_matryoshka_batchtopk``, ``loss_mode="saelens"`` (the kernels; stock's loss);
* ``ours-dl``:      ``rad_matryoshka_batchtopk``, ``loss_mode="dictionary_learning"`` (the kernels; the
  maira-2-sae loss with unit-norm decoder rows — not stock's loss, so never exactly like for like).

Each variant fixes three settings: the optimizer (the trainer's own single-tensor ``Adam``, or the same
Adam with ``fused=True`` as :func:`sae_rad_ext.training.runner.use_fused_adam` makes it),
``rescale_acts_by_decoder_norm`` (stock's default is on; ``ours-dl`` has no such option) and, for ours,
``reuse_grad_buffers`` (keep the dense ``W_dec`` gradient buffer between steps). ``COLUMNS`` pairs a
stock variant with an ours variant per comparison: the like-for-like pair (same optimizer, same rescale,
no buffer reuse) first, then one extra changed at a time, then each side's defaults.

Variants run in ``GROUPS`` (at most five SAEs with Adam state alive at once, ~1.7 GiB each at the full
shape); inside a group one step of each variant per round, interleaved so machine load hits them alike,
round 0 a warm-up. Every comparison's two variants share a group. Per variant: median, min, max wall time
over the rounds, median user and system CPU time of the process, and the peak growth of resident memory
during a step (Linux ``VmHWM``; the parameters and Adam state are resident before the step).

    python benchmarks/bench_training.py                    # full: d_in 4096, d_sae 16384, N 256 and 1024
    python benchmarks/bench_training.py --quick --out /tmp/results_training.json   # smoke, seconds
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _common import (
    command_line,
    environment,
    finish_environment,
    peak_rss_delta_mib,
    reset_peak_rss,
    summarize,
    timed,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.training.sae_trainer import SAETrainer

from sae_rad_ext import RadMatryoshkaBatchTopKTrainingSAE, RadMatryoshkaBatchTopKTrainingSAEConfig
from sae_rad_ext.training.runner import use_fused_adam

FULL = {"d_in": 4096, "d_sae": 16384, "k": 64, "group_sizes": [1024, 3072, 12288], "n": [256, 1024]}
QUICK = {"d_in": 64, "d_sae": 256, "k": 8, "group_sizes": [32, 64, 160], "n": [32]}


@dataclass(frozen=True)
class Variant:
    """One SAE + trainer setting. ``reuse`` is ``None`` for stock (which has no such option)."""

    impl: str  # "stock" | "ours-saelens" | "ours-dl"
    optimizer: str  # "adam" (the trainer's own) | "fused_adam"
    rescale: bool  # rescale_acts_by_decoder_norm
    reuse: bool | None = None  # reuse_grad_buffers

    @property
    def name(self) -> str:
        parts = [self.impl, self.optimizer, "rescale-on" if self.rescale else "rescale-off"]
        if self.reuse is not None:
            parts.append("reuse-on" if self.reuse else "reuse-off")
        return "/".join(parts)


STOCK_LFL = Variant("stock", "adam", False)
STOCK_DEFAULT = Variant("stock", "adam", True)
STOCK_FUSED = Variant("stock", "fused_adam", False)
OURS_LFL = Variant("ours-saelens", "adam", False, False)
DL_LFL = Variant("ours-dl", "adam", False, False)
GROUPS: dict[str, list[Variant]] = {
    "adam-rescale-off": [
        STOCK_LFL, OURS_LFL, Variant("ours-saelens", "adam", False, True), DL_LFL, Variant("ours-dl", "adam", False, True),
    ],
    "adam-rescale-on": [
        STOCK_DEFAULT, Variant("ours-saelens", "adam", True, False),
        Variant("ours-saelens", "fused_adam", False, True), Variant("ours-dl", "fused_adam", False, True),
    ],
    "fused-rescale-off": [
        STOCK_FUSED, Variant("ours-saelens", "fused_adam", False, False), Variant("ours-dl", "fused_adam", False, False),
    ],
}
ROWS = ["ours-saelens", "ours-dl"]
# (id, title, meaning, stock variant, {row: ours variant}); the like-for-like column comes first.
COLUMNS: list[tuple[str, str, str, Variant, dict[str, Variant]]] = [
    ("like_for_like", "like for like", "both sides: the trainer's single-tensor Adam, rescale off; "
     "ours without grad-buffer reuse", STOCK_LFL, {"ours-saelens": OURS_LFL, "ours-dl": DL_LFL}),
    ("rescale_on", "rescale on (both)", "like for like, but rescale_acts_by_decoder_norm=True on both sides "
     "(stock's default; ours-dl has no such option)", STOCK_DEFAULT,
     {"ours-saelens": Variant("ours-saelens", "adam", True, False)}),
    ("fused_adam", "fused Adam (both)", "like for like, but Adam(fused=True) on both sides", STOCK_FUSED,
     {"ours-saelens": Variant("ours-saelens", "fused_adam", False, False),
      "ours-dl": Variant("ours-dl", "fused_adam", False, False)}),
    ("grad_buffer_reuse", "+ grad-buffer reuse (ours)", "like for like, but ours keeps the dense W_dec "
     "gradient buffer between steps (stock has no such option)", STOCK_LFL,
     {"ours-saelens": Variant("ours-saelens", "adam", False, True), "ours-dl": Variant("ours-dl", "adam", False, True)}),
    ("defaults", "defaults vs defaults", "not like for like: ours as make_runner runs it (fused Adam, "
     "buffer reuse, rescale off) vs stock as SAELens runs it (single-tensor Adam, rescale on)", STOCK_DEFAULT,
     {"ours-saelens": Variant("ours-saelens", "fused_adam", False, True),
      "ours-dl": Variant("ours-dl", "fused_adam", False, True)}),
]


def make_sae(v: Variant, shape: dict) -> torch.nn.Module:
    """The SAE of variant ``v`` at ``shape`` (seeded, so every run starts from the same weights)."""
    torch.manual_seed(0)
    d_in, d_sae, k, sizes = shape["d_in"], shape["d_sae"], shape["k"], shape["group_sizes"]
    if v.impl == "stock":
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MatryoshkaBatchTopKTrainingSAE(
                MatryoshkaBatchTopKTrainingSAEConfig(
                    d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=ends, rescale_acts_by_decoder_norm=v.rescale
                )
            )
    mode = {"ours-dl": "dictionary_learning", "ours-saelens": "saelens"}[v.impl]
    return RadMatryoshkaBatchTopKTrainingSAE(
        RadMatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, group_sizes=sizes, loss_mode=mode,
            rescale_acts_by_decoder_norm=v.rescale, reuse_grad_buffers=bool(v.reuse),
        )
    )


def make_trainer(v: Variant, shape: dict, n: int) -> SAETrainer:
    """SAELens's ``SAETrainer`` around variant ``v``'s SAE: constant LR, no checkpoints, no logging."""
    cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, total_training_samples=10**9,
        device="cpu", autocast=False, lr=1e-4, lr_end=1e-4, lr_scheduler_name="constant", lr_warm_up_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=n,
        dead_feature_window=1000, feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False),
    )
    tr = SAETrainer(cfg=cfg, sae=make_sae(v, shape), data_provider=iter(()))
    if v.optimizer == "fused_adam" and not use_fused_adam(tr):
        raise RuntimeError(f"{v.name}: fused Adam is not available for these parameters on this machine")
    return tr


def optimizer_only(tr: SAETrainer, rounds: int) -> dict:
    """grad-norm clip + Adam step + zero_grad alone (the part every SAE of this shape shares)."""
    wall, user, sys_ = [], [], []
    for _ in range(rounds):
        for p in tr.sae.parameters():
            p.grad = torch.randn_like(p) * 1e-3

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(tr.sae.parameters(), 1.0)
            tr.optimizer.step()
            tr.optimizer.zero_grad()

        w, u, s = timed(step)
        wall.append(w)
        user.append(u)
        sys_.append(s)
    return summarize(wall, user, sys_)


def bench_group(variants: list[Variant], shape: dict, n: int, rounds: int, log) -> tuple[dict, dict]:
    """Interleaved steps of ``variants`` at batch size ``n``; returns (per-variant stats, optimizer floor)."""
    g = torch.Generator().manual_seed(n)
    batches = [torch.randn(n, shape["d_in"], generator=g) for _ in range(2)]
    trainers = {v: make_trainer(v, shape, n) for v in variants}
    wall: dict[Variant, list[float]] = {v: [] for v in variants}
    user: dict[Variant, list[float]] = {v: [] for v in variants}
    sys_: dict[Variant, list[float]] = {v: [] for v in variants}
    peak: dict[Variant, float | None] = {v: None for v in variants}
    for r in range(rounds + 1):  # round 0 = warm-up (allocator, Adam state, b_dec init)
        for v in variants:
            tr = trainers[v]
            base = reset_peak_rss()
            w, u, s = timed(lambda tr=tr, r=r: tr.step(batches[r % 2]))
            grown = peak_rss_delta_mib(base)
            tr.n_training_steps += 1
            if r:
                wall[v].append(w)
                user[v].append(u)
                sys_[v].append(s)
                if grown is not None:
                    peak[v] = max(peak[v] or 0.0, grown)
        log(f"  N={n} round {r}/{rounds} " + "  ".join(f"{v.name} {wall[v][-1]:.3f}s" for v in variants if r))
    out = {
        v.name: {**asdict(v), "unit": "s", **summarize(wall[v], user[v], sys_[v]), "peak_rss_delta_mib": peak[v]}
        for v in variants
    }
    floors = {}
    for opt in ("adam", "fused_adam"):
        owner = next((v for v in variants if v.optimizer == opt and v.impl != "stock"), None)
        if owner is not None:
            floors[opt] = {"unit": "s", **optimizer_only(trainers[owner], rounds)}
    del trainers
    return out, floors


def ratio_table(results: dict) -> list[str]:
    """Printable lines: every column's stock/ours median ratio per N and row."""
    lines = []
    for n, res in results.items():
        med = {k: v["median"] for k, v in res["variants"].items()}
        for _, title, _, stock, ours in COLUMNS:
            cells = [f"{row} {med[stock.name] / med[ours[row].name]:.2f}x" for row in ROWS if row in ours]
            lines.append(f"N={n:>5} {title:28s} " + "   ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=None, help="batch sizes (tokens per step)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds after one warm-up (default 5)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds (smoke test, seconds)")
    ap.add_argument("--out", "--json", dest="out", default=str(Path(__file__).with_name("results_training.json")))
    a = ap.parse_args(argv)
    shape = dict(QUICK if a.quick else FULL)
    ns = a.n or shape.pop("n")
    shape.pop("n", None)
    rounds = a.rounds or (2 if a.quick else 5)
    log = lambda s: print(s, flush=True)  # noqa: E731
    env = environment()
    log(f"shape {shape} N={ns} rounds={rounds}; {env}")
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for n in ns:
        res: dict = {"variants": {}, "optimizer_only": {}}
        for gname, variants in GROUPS.items():
            log(f"group {gname}")
            stats, floors = bench_group(variants, shape, n, rounds, log)
            for s in stats.values():
                s["group"] = gname
            res["variants"].update(stats)
            for opt, f in floors.items():
                res["optimizer_only"].setdefault(opt, f)
        results[str(n)] = res
    finish_environment(env)
    env["wall_s"] = round(time.perf_counter() - t0, 1)
    out = {
        "benchmark": "training_step",
        "command": command_line("bench_training.py", argv),
        "quick": a.quick,
        "environment": env,
        "shape": shape,
        "n": ns,
        "rounds": rounds,
        "tables": [{
            "id": "training_step",
            "title": "One SAETrainer.step (forward, loss, backward, clip, Adam, zero_grad)",
            "rows": ROWS,
            "columns": [
                {"id": cid, "title": title, "meaning": meaning, "like_for_like": cid == "like_for_like",
                 "baseline": stock.name, "ours": {row: v.name for row, v in ours.items()}}
                for cid, title, meaning, stock, ours in COLUMNS
            ],
        }],
        "results": results,
    }
    print("\n".join(ratio_table(results)))
    for n, res in results.items():
        for opt, f in res["optimizer_only"].items():
            log(f"N={n:>5} clip+{opt} alone: median {f['median']:.3f} s")
    Path(a.out).write_text(json.dumps(out, indent=1))
    log(f"wrote {a.out} in {env['wall_s']} s; load {env['load_avg_start']} -> {env['load_avg_end']}")


if __name__ == "__main__":
    main()
