"""Layer lesioning: remove one layer (or a window of layers) and measure what the reports lose.

    means = layer_means(model, processor, reference_studies)
    res = lesion_maps(model, processor, eval_studies, targets, modes=("skip", "mean"), windows=(2,), means=means)
    res.f1_drop["skip 3"]["pleural_effusion"]     # report F1 lost when block 3 is skipped

Two lesions of block ``L`` (both exact at every position, in the prompt pass and every decoding step):

- ``skip``: the block becomes the identity — ``resid_post = resid_pre`` (its attention and MLP outputs
  are dropped);
- ``mean``: the block's contribution ``resid_post − resid_pre`` is replaced by its mean over reference
  studies, one mean per role group (image / prompt text / report / other), so the block still writes
  its average output but nothing study-specific.

A window lesions consecutive blocks. Effects: per-finding F1 of greedy reports (the project's labeler vs
the targets) and the mean per-token log-likelihood of the reference report (teacher forcing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sae_rad_ext.adapters.generation import generate_reports
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.evaluation.metrics import f1
from sae_rad_ext.maps.common import (
    GROUP_NAMES,
    GROUP_REPORT,
    generated_labels,
    report_loglik,
    role_groups,
)
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["LayerMeans", "LesionResult", "lesion_configs", "lesion_hooks", "lesion_maps", "layer_means"]

Hook = tuple[str, Callable[..., torch.Tensor]]


@dataclass
class LayerMeans:
    """Mean contribution of every block per role group (for mean ablation)."""

    delta: torch.Tensor
    """``float32 [n_layers, n_groups, d_model]``: mean of ``resid_post − resid_pre`` per group."""
    counts: torch.Tensor
    """``long [n_groups]``: positions averaged per group."""


@torch.no_grad()
def layer_means(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> LayerMeans:
    """Mean block contribution per role group over ``studies`` (prompt + teacher-forced report).
    ``progress``: stage ``"layer means"`` counts studies."""
    tick = Ticker(progress, "layer means", len(studies))
    n, d = model.cfg.n_layers, model.cfg.d_model
    total = torch.zeros(n, len(GROUP_NAMES), d, dtype=torch.float64)
    counts = torch.zeros(len(GROUP_NAMES), dtype=torch.long)
    names = [f"blocks.{L}.hook_resid_{w}" for L in range(n) for w in ("pre", "post")]
    for chunk in batched(studies, batch_size):
        b = processor.build(chunk, with_report=all(s.report for s in chunk))
        ids, kw = b.to(model.cfg.device).model_args()
        _, cache = model.run_with_cache(ids, names_filter=names, **kw)
        g = role_groups(b.roles.role).to(model.cfg.device)
        g = torch.where(b.attention_mask.to(g.device).bool(), g, torch.full_like(g, -1))  # padding: nowhere
        onehot = torch.nn.functional.one_hot(g.clamp(min=0), len(GROUP_NAMES)).double() * (g >= 0)[..., None]
        for L in range(n):
            delta = (cache[f"blocks.{L}.hook_resid_post"] - cache[f"blocks.{L}.hook_resid_pre"]).double()
            total[L] += torch.einsum("btg,btd->gd", onehot, delta).cpu()
        counts += onehot.sum((0, 1)).long().cpu()
        tick(len(chunk))
    if int(counts.sum()) == 0:
        raise ValueError("layer_means got no studies; pass reference studies for mean ablation")
    return LayerMeans((total / counts.clamp(min=1)[None, :, None]).float(), counts)


def lesion_hooks(
    model: HookedMaira2,
    layers: Sequence[int],
    mode: str = "skip",
    means: LayerMeans | None = None,
    groups: torch.Tensor | None = None,
) -> list[Hook]:
    """Forward hooks that lesion ``layers`` (``mode`` ``"skip"`` or ``"mean"``).

    ``groups`` (``long [batch, prompt_len]``, from :func:`role_groups`) gives the role group of each prompt
    position for ``"mean"``; positions past it (generated tokens) count as report. Without ``groups``
    every position counts as report.
    """
    if mode not in ("skip", "mean"):
        raise ValueError(f"lesion mode must be 'skip' or 'mean'; got {mode!r}")
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs LayerMeans: means=layer_means(model, processor, studies)")
    n = model.cfg.n_layers
    for L in layers:
        if not 0 <= int(L) < n:
            raise ValueError(f"cannot lesion layer {L}: blocks are 0..{n - 1}")
    saved: dict[int, torch.Tensor] = {}

    def chunk_groups(x: torch.Tensor) -> torch.Tensor:
        B, t = x.shape[:2]
        g = torch.full((B, t), GROUP_REPORT, dtype=torch.long, device=x.device)
        if groups is not None:
            off = model.position_offset
            k = max(0, min(t, groups.shape[1] - off))
            g[:, :k] = groups[:, off : off + k].to(x.device)
        return g

    def pre(L: int) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            saved[L] = x
            return x

        return fn

    def post(L: int) -> Callable[..., torch.Tensor]:
        def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
            base = saved.pop(L)
            if mode == "skip":
                return base
            delta = means.delta[L].to(x.device, x.dtype)  # [n_groups, d]
            return base + delta[chunk_groups(x)]

        return fn

    hooks: list[Hook] = []
    for L in sorted({int(x) for x in layers}):
        hooks += [(f"blocks.{L}.hook_resid_pre", pre(L)), (f"blocks.{L}.hook_resid_post", post(L))]
    return hooks


def lesion_configs(
    n_layers: int, modes: Sequence[str] = ("skip", "mean"), windows: Sequence[int] = (2,)
) -> dict[str, tuple[str, list[int]]]:
    """``{"skip 3": ("skip", [3]), "mean 2-3": ("mean", [2, 3]), …}``: single blocks, then sliding windows."""
    out: dict[str, tuple[str, list[int]]] = {}
    for mode in modes:
        for w in [1, *[int(x) for x in windows if int(x) > 1]]:
            for a in range(0, n_layers - w + 1):
                name = f"{mode} {a}" if w == 1 else f"{mode} {a}-{a + w - 1}"
                out[name] = (mode, list(range(a, a + w)))
    return out


@dataclass
class LesionResult:
    """Report quality with each lesion, against the unlesioned model (``"none"``)."""

    configs: dict[str, dict[str, Any]]
    """name → ``{"mode", "layers"}`` (``"none"`` is the intact model)."""
    f1: dict[str, dict[str, float]]
    """name → finding → F1 of the generated reports (labeler vs targets)."""
    f1_drop: dict[str, dict[str, float]]
    """name → finding → intact F1 minus lesioned F1 (positive = the lesion hurts)."""
    loglik: dict[str, float]
    """name → mean per-token log-likelihood of the reference reports."""
    loglik_drop: dict[str, float]
    """name → intact minus lesioned mean per-token log-likelihood (nats/token)."""
    n_studies: int
    """Studies evaluated."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """name → the first generated reports (for reading)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "configs": self.configs,
            "f1": self.f1,
            "f1_drop": self.f1_drop,
            "loglik": self.loglik,
            "loglik_drop": self.loglik_drop,
            "n_studies": self.n_studies,
            "examples": self.examples,
        }


def _max_new_tokens(processor: Maira2Processor, studies: Sequence[Study]) -> int:
    tok = processor.tokenizer
    n = max((len(tok(s.report, add_special_tokens=False).input_ids) for s in studies if s.report), default=64)
    return int(min(256, n + 8))


@torch.no_grad()
def lesion_maps(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    targets: np.ndarray,
    *,
    modes: Sequence[str] = ("skip", "mean"),
    windows: Sequence[int] = (2,),
    means: LayerMeans | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    n_examples: int = 2,
    progress: ProgressCallback | None = None,
) -> LesionResult:
    """Generate reports and score reference reports with each lesion of :func:`lesion_configs`.
    ``progress``: stage ``"lesioning"`` counts studies over every lesion (the unlesioned run included),
    after ``"layer means"`` when the mean ablation's means are computed here."""
    studies = list(studies)
    if targets.shape != (len(studies), len(FINDINGS)):
        raise ValueError(f"targets must be [{len(studies)}, {len(FINDINGS)}]; got {targets.shape}")
    if "mean" in modes and means is None:
        means = layer_means(model, processor, studies, batch_size=batch_size, progress=progress)
    mnt = max_new_tokens or _max_new_tokens(processor, studies)
    configs = {"none": ("none", [])} | lesion_configs(model.cfg.n_layers, modes, windows)
    dev = model.cfg.device
    gen_batches = [processor.build(c, with_report=False) for c in batched(studies, batch_size)]
    tf_batches = [processor.build(c, with_report=True) for c in batched(studies, batch_size)]
    res = LesionResult({}, {}, {}, {}, {}, len(studies))
    tick = Ticker(progress, "lesioning", len(configs) * len(studies))
    for name, (mode, layers) in configs.items():
        texts: list[str] = []
        ll, nt = 0.0, 0
        for gb, tb in zip(gen_batches, tf_batches, strict=True):
            hooks = (
                [] if mode == "none" else lesion_hooks(model, layers, mode, means, role_groups(gb.roles.role))
            )
            texts += generate_reports(model, processor, gb, max_new_tokens=mnt, fwd_hooks=hooks).texts
            hooks = (
                [] if mode == "none" else lesion_hooks(model, layers, mode, means, role_groups(tb.roles.role))
            )
            ids, kw = tb.to(dev).model_args()
            logits = model.run_with_hooks(ids, fwd_hooks=hooks, **kw)
            s, n = report_loglik(logits, tb)
            ll, nt = ll + float(s.sum()), nt + int(n.sum())
            tick(len(gb))
        pred = generated_labels(texts)
        res.configs[name] = {"mode": mode, "layers": layers}
        res.f1[name] = {k: f1(pred[:, j], targets[:, j]) for j, k in enumerate(FINDINGS)}
        res.loglik[name] = ll / max(1, nt)
        res.examples[name] = texts[:n_examples]
    for name in configs:
        res.f1_drop[name] = {k: res.f1["none"][k] - res.f1[name][k] for k in FINDINGS}
        res.loglik_drop[name] = res.loglik["none"] - res.loglik[name]
    return res
