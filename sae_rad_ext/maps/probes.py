"""Layer-wise linear probes: at which layer, and at which positions, does the model know a finding?

    pooled = pooled_activations(model, processor, studies, layers=range(-1, model.cfg.n_layers))
    curves = probe_curves(pooled, study_targets(studies), holdout_mask(studies, 0.3))  # evaluation.splits
    curves.auroc["report"]["pleural_effusion"]      # [n_layers] held-out AUROC per layer

Per study and layer the residual stream is pooled four ways: the mean over the image tokens of each view
(``image:frontal`` / ``image:lateral`` / ``image:prior``), the mean over the teacher-forced reference
report's tokens (``report``), and the last prompt token (``last_prompt``: the position that predicts the
first report token, before any report text is seen). A logistic-regression probe per (pool, layer,
finding) is fitted on the training studies and scored on held-out studies (accuracy and AUROC).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.maps.common import check_layers, resid_hook
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["POOLS", "PooledActivations", "ProbeCurves", "fit_probe", "pooled_activations", "probe_curves"]

POOLS = ("image:frontal", "image:lateral", "image:prior", "report", "last_prompt")
"""Pooling of the residual stream per study (image pools: mean over that view's image tokens)."""


@dataclass
class PooledActivations:
    """Per-study pooled residual activations at several layers."""

    layers: list[int]
    """Layers (−1 = input of block 0, else ``blocks.L.hook_resid_post``)."""
    acts: dict[str, np.ndarray]
    """pool → ``float32 [n_layers, n_studies, d_model]`` (zeros where the pool is absent)."""
    present: dict[str, np.ndarray]
    """pool → ``bool [n_studies]``: the study has that pool (a lateral image, a report, …)."""
    study_ids: list[str]
    """Study ids, in row order."""
    info: list[dict[str, Any]] = field(default_factory=list)
    """Per study: ``view`` (e.g. "PA+LAT"), ``change`` (longitudinal summary), ``patient_id``."""

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not collected; collected layers: {self.layers}")
        return self.layers.index(layer)


def _study_info(s: Study) -> dict[str, Any]:
    md = s.metadata or {}
    view = str(md.get("view_position") or "frontal")
    if s.lateral is not None:
        view += "+LAT"
    change = "no prior"
    if s.prior_frontal is not None or md.get("prior_date"):
        ch = set((md.get("change") or {}).values())
        change = next((c for c in ("new", "resolved", "increased", "decreased") if c in ch), "unchanged")
    return {"view": view, "change": change, "patient_id": md.get("patient_id") or s.study_id}


@torch.no_grad()
def pooled_activations(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Iterable[Study],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    pools: Sequence[str] = POOLS,
    progress: ProgressCallback | None = None,
) -> PooledActivations:
    """Run each study (prompt + teacher-forced reference report) once and pool the residual stream.
    ``progress``: stage ``"activations"`` counts studies (total known when ``studies`` has a length)."""
    layers = check_layers(layers, model.cfg.n_layers)
    tick = Ticker(progress, "activations", len(studies) if isinstance(studies, Sized) else None)
    bad = sorted(set(pools) - set(POOLS))
    if bad:
        raise ValueError(f"unknown pool(s) {bad}; expected some of {list(POOLS)}")
    names = [resid_hook(L) for L in layers]
    stop = max(layers) + 1 if max(layers) >= 0 else 1
    dev = model.cfg.device
    chunks: dict[str, list[np.ndarray]] = {p: [] for p in pools}
    present: dict[str, list[np.ndarray]] = {p: [] for p in pools}
    ids: list[str] = []
    info: list[dict[str, Any]] = []
    for chunk in batched(studies, batch_size):
        with_report = all(s.report for s in chunk)
        b = processor.build(chunk, with_report=with_report)
        input_ids, kw = b.to(dev).model_args()
        _, cache = model.run_with_cache(input_ids, names_filter=names, stop_at_layer=stop, **kw)
        h = torch.stack([cache[n].float() for n in names])  # [n_layers, B, T, d]
        roles = b.roles.to(h.device)
        for p in pools:
            if p == "last_prompt":
                idx = (b.prompt_lengths.to(h.device) - 1).clamp(min=0)
                pooled = h[:, torch.arange(len(chunk), device=h.device), idx]  # [n_layers, B, d]
                has = torch.ones(len(chunk), dtype=torch.bool)
            else:
                m = roles.mask(p).to(h.dtype)  # [B, T]
                n = m.sum(1)
                pooled = torch.einsum("lbtd,bt->lbd", h, m) / n.clamp(min=1)[None, :, None]
                has = (n > 0).cpu()
            chunks[p].append(pooled.cpu().numpy().astype(np.float32))
            present[p].append(has.numpy())
        ids += list(b.study_ids)
        info += [_study_info(s) for s in chunk]
        tick(len(chunk))
    if not ids:
        raise ValueError("pooled_activations got no studies; pass at least a few dozen for probes")
    return PooledActivations(
        layers,
        {p: np.concatenate(v, axis=1) for p, v in chunks.items()},
        {p: np.concatenate(v) for p, v in present.items()},
        ids,
        info,
    )


@dataclass
class ProbeCurves:
    """Held-out probe scores per pool, finding and layer (NaN where a probe could not be fitted)."""

    layers: list[int]
    auroc: dict[str, dict[str, list[float]]]
    """pool → finding → AUROC per layer on the held-out studies."""
    accuracy: dict[str, dict[str, list[float]]]
    """pool → finding → accuracy per layer on the held-out studies."""
    majority_accuracy: dict[str, dict[str, float]]
    """pool → finding → accuracy of always predicting the training majority class (the floor)."""
    n_train: dict[str, int]
    """pool → training studies that have the pool."""
    n_test: dict[str, int]
    """pool → held-out studies that have the pool."""
    skipped: dict[str, str]
    """``"pool/finding"`` → why no probe was fitted (e.g. one class only)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "auroc": self.auroc,
            "accuracy": self.accuracy,
            "majority_accuracy": self.majority_accuracy,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "skipped": self.skipped,
        }


def fit_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, c: float = 0.1
) -> tuple[float, float]:
    """``(accuracy, auroc)`` on the test rows of an L2 logistic-regression probe on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=c, max_iter=1000).fit(sc.transform(x_train), y_train)
    xt = sc.transform(x_test)
    acc = float((clf.predict(xt) == y_test).mean())
    auc = (
        float(roc_auc_score(y_test, clf.decision_function(xt)))
        if 0 < y_test.sum() < len(y_test)
        else float("nan")
    )
    return acc, auc


def probe_curves(
    pooled: PooledActivations,
    targets: np.ndarray,
    holdout: np.ndarray,
    *,
    c: float = 0.1,
    min_per_class: int = 3,
    progress: ProgressCallback | None = None,
) -> ProbeCurves:
    """Fit one probe per (pool, layer, finding) on non-held-out studies, score it on held-out ones.
    ``progress``: stage ``"probes"`` counts (pool, finding) pairs."""
    n = len(pooled.study_ids)
    if targets.shape != (n, len(FINDINGS)) or holdout.shape != (n,):
        raise ValueError(
            f"targets must be [{n}, {len(FINDINGS)}] and holdout [{n}]; got {targets.shape} and "
            f"{holdout.shape}"
        )
    auroc: dict[str, dict[str, list[float]]] = {}
    acc: dict[str, dict[str, list[float]]] = {}
    major: dict[str, dict[str, float]] = {}
    n_train, n_test, skipped = {}, {}, {}
    tick = Ticker(progress, "probes", len(pooled.acts) * len(FINDINGS))
    for p, a in pooled.acts.items():
        tr, te = pooled.present[p] & ~holdout, pooled.present[p] & holdout
        n_train[p], n_test[p] = int(tr.sum()), int(te.sum())
        auroc[p], acc[p], major[p] = {}, {}, {}
        for j, k in enumerate(FINDINGS):
            y_tr, y_te = targets[tr, j], targets[te, j]
            nan = [float("nan")] * len(pooled.layers)
            counts = (
                int(y_tr.sum()),
                int(len(y_tr) - y_tr.sum()),
                int(y_te.sum()),
                int(len(y_te) - y_te.sum()),
            )
            if min(counts[:2]) < min_per_class or min(counts[2:]) < 1:
                skipped[f"{p}/{k}"] = (
                    f"too few studies per class (train +{counts[0]}/-{counts[1]}, held-out "
                    f"+{counts[2]}/-{counts[3]}; need ≥{min_per_class} per class in train, 1 in test)"
                )
                auroc[p][k], acc[p][k], major[p][k] = nan, list(nan), float("nan")
            else:
                maj = int(y_tr.mean() >= 0.5)
                major[p][k] = float((y_te == maj).mean())
                scores = [
                    fit_probe(a[li][tr], y_tr, a[li][te], y_te, c=c) for li in range(len(pooled.layers))
                ]
                acc[p][k] = [s[0] for s in scores]
                auroc[p][k] = [s[1] for s in scores]
            tick(1)
    return ProbeCurves(list(pooled.layers), auroc, acc, major, n_train, n_test, skipped)
