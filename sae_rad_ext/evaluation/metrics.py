"""Vectorised binary-classification metrics over many features at once (columns of a score matrix).

All functions take ``scores [n, d]`` (one column per feature) and ``y [n]`` bool labels and return one
value per column; ties are handled like scikit-learn (average ranks for AUROC; a threshold keeps every
study scoring ≥ it). Tested against ``sklearn.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BinaryMetrics", "auroc", "best_f1_threshold", "binary_metrics"]


def auroc(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[d]`` area under the ROC curve of each column (NaN when ``y`` has one class only)."""
    s = scores.double()
    y = y.bool()
    n_pos, n = int(y.sum()), y.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.full((s.shape[1],), float("nan"), dtype=torch.float64)
    st = s.T.contiguous()  # [d, n]
    srt = st.sort(1).values
    less = torch.searchsorted(srt, st, right=False).double()
    le = torch.searchsorted(srt, st, right=True).double()
    rank = (less + le + 1) / 2  # average 1-based rank
    return (rank[:, y].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def best_f1_threshold(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column the threshold maximising F1 of ``score >= threshold`` and that F1 (``[d]`` each).

    Candidate thresholds are the observed values; ties are cut together. With no positive study the
    F1 is 0 and the threshold ``+inf``."""
    s = scores.double()
    y = y.bool()
    n, d = s.shape
    n_pos = int(y.sum())
    if n == 0 or n_pos == 0:
        return torch.full((d,), float("inf"), dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    vals, idx = s.sort(0, descending=True)
    tp = y[idx].double().cumsum(0)  # [n, d]
    k = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    f1 = 2 * tp / (k + n_pos)
    valid = torch.ones_like(f1, dtype=torch.bool)
    valid[:-1] = vals[:-1] > vals[1:]  # cut only between distinct values
    f1 = torch.where(valid, f1, -1.0)
    best, at = f1.max(0)
    return vals.gather(0, at[None])[0], best.clamp(min=0)


@dataclass
class BinaryMetrics:
    """Per-column metrics of ``score >= threshold`` against labels (tensors ``[d]``)."""

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    balanced_accuracy: torch.Tensor
    """Mean of recall and specificity."""
    auroc: torch.Tensor
    """Threshold-free."""
    n_pos: int
    n_neg: int


def binary_metrics(scores: torch.Tensor, y: torch.Tensor, threshold: torch.Tensor | float) -> BinaryMetrics:
    """Precision, recall, F1, balanced accuracy at ``threshold`` (scalar or ``[d]``) and AUROC."""
    s = scores.double()
    y = y.bool()
    thr = torch.as_tensor(threshold, dtype=torch.float64)
    pred = s >= thr
    yy = y[:, None]
    tp = (pred & yy).sum(0).double()
    fp = (pred & ~yy).sum(0).double()
    fn = (~pred & yy).sum(0).double()
    tn = (~pred & ~yy).sum(0).double()
    prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
    f1 = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    spec = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), 0.0)
    return BinaryMetrics(prec, rec, f1, (rec + spec) / 2, auroc(s, y), int(y.sum()), int((~y).sum()))
