"""Binary-classification metrics: the one home of F1, AUROC and the best-F1 threshold.

Conventions used everywhere in the project (tested against ``sklearn.metrics``):

- A prediction is positive when ``score >= threshold``.
- F1 is ``2·tp / (2·tp + fp + fn)``. When ``tp + fp + fn = 0`` (nothing to find and nothing predicted)
  it is ``1.0`` — scikit-learn's ``f1_score(..., zero_division=1.0)``. Precision is 0 when nothing is
  predicted, recall 0 when there is nothing to find (``zero_division=0``).
- Label dicts (:func:`f1_by_key`): the value ``1`` is positive, anything else (0, ``-1`` uncertain,
  ``None``) negative; map uncertain labels first (``data.labels.binarize``) to count them as positive.
- AUROC gives tied scores their average rank (as scikit-learn) and is NaN when ``y`` has one class.
- :func:`best_f1_threshold` — the one best-threshold rule: cuts only between distinct observed scores
  (tied studies are predicted together); among cuts of equal F1 the highest threshold (fewest predicted
  positives) wins; the returned threshold is the midpoint between the lowest score the cut keeps and
  the next lower observed score (so it also places unseen scores between the two groups). ``floor``
  restricts cuts to scores above it (pass 0 for SAE activations: a latent predicts by firing).
- Scores must not contain NaN (``ValueError``, as scikit-learn); ``±inf`` is allowed.

Score functions take ``scores [n]`` (one column; 0-d results) or ``[n, d]`` (one column per feature;
``[d]`` results) and ``y [n]`` bool labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "BinaryMetrics",
    "auroc",
    "best_f1_threshold",
    "binary_metrics",
    "f1",
    "f1_by_key",
    "precision_recall_f1",
]


# ---- hard predictions ----------------------------------------------------------------------------
def _bool_1d(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per study); got shape {a.shape}")
    return a.astype(bool)


def _counts(pred: Any, y: Any) -> tuple[int, int, int]:
    p, t = _bool_1d(pred, "pred"), _bool_1d(y, "y")
    if p.shape != t.shape:
        raise ValueError(f"pred and y must have the same length; got {p.shape[0]} and {t.shape[0]}")
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def precision_recall_f1(pred: Any, y: Any) -> tuple[float, float, float]:
    """``(precision, recall, F1)`` of boolean predictions ``pred [n]`` against labels ``y [n]`` (numpy,
    torch or lists; non-zero is positive). Zero divisions as in the module docstring."""
    tp, fp, fn = _counts(pred, y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)


def f1(pred: Any, y: Any) -> float:
    """F1 of boolean predictions ``pred [n]`` against labels ``y [n]``; 1.0 when there is nothing to
    find and nothing is predicted."""
    return precision_recall_f1(pred, y)[2]


def f1_by_key(
    pred: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]], keys: Iterable[str]
) -> dict[str, float]:
    """Per key the F1 of ``pred`` label dicts against ``truth`` label dicts (one dict per study, same
    order). A value of 1 is positive; anything else — 0, ``-1``, ``None`` or a missing key — negative."""
    if len(pred) != len(truth):
        raise ValueError(
            f"{len(pred)} predicted label dicts for {len(truth)} truth dicts; pass one per study"
        )
    return {k: f1([p.get(k) == 1 for p in pred], [t.get(k) == 1 for t in truth]) for k in keys}


# ---- scores --------------------------------------------------------------------------------------
def _scores_2d(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    s = torch.as_tensor(scores).double()
    one = s.dim() == 1
    if one:
        s = s[:, None]
    if s.dim() != 2:
        raise ValueError(f"scores must be [n] or [n, d]; got shape {tuple(s.shape)}")
    y = torch.as_tensor(y).bool().reshape(-1).to(s.device)
    if y.numel() != s.shape[0]:
        raise ValueError(
            f"scores have {s.shape[0]} rows but y has {y.numel()} labels; pass one label per row"
        )
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN; drop those studies or replace NaN before scoring")
    return s, y, one


def auroc(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve of each column (``[d]``, or 0-d for ``scores [n]``); NaN when ``y`` has
    one class only."""
    s, y, one = _scores_2d(scores, y)
    n_pos, n = int(y.sum()), y.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        out = torch.full((s.shape[1],), float("nan"), dtype=torch.float64, device=s.device)
    else:
        st = s.T.contiguous()  # [d, n]
        srt = st.sort(1).values
        less = torch.searchsorted(srt, st, right=False).double()
        le = torch.searchsorted(srt, st, right=True).double()
        rank = (less + le + 1) / 2  # average 1-based rank
        out = (rank[:, y].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out[0] if one else out


def best_f1_threshold(
    scores: torch.Tensor, y: torch.Tensor, *, floor: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column the threshold maximising F1 of ``score >= threshold`` and that F1 (``[d]`` each, or
    0-d for ``scores [n]``), by the rule in the module docstring.

    The threshold is the midpoint between the lowest score the best cut keeps and the next lower
    observed score; when the cut keeps every study it is that lowest score itself (with ``floor``: the
    midpoint to ``max(next score, floor)``). ``floor``: only cuts keeping scores ``> floor`` are
    candidates. With no positive label, or no candidate cut, the F1 is 0 and the threshold ``+inf``."""
    s, y, one = _scores_2d(scores, y)
    n, d = s.shape
    n_pos = int(y.sum())
    thr = torch.full((d,), float("inf"), dtype=torch.float64, device=s.device)
    best = torch.zeros(d, dtype=torch.float64, device=s.device)
    if n > 0 and n_pos > 0:
        vals, idx = s.sort(0, descending=True)
        tp = y[idx].double().cumsum(0)  # [n, d]: true positives among the k highest
        k = torch.arange(1, n + 1, dtype=torch.float64, device=s.device)[:, None]
        f1s = 2 * tp / (k + n_pos)
        valid = torch.ones_like(f1s, dtype=torch.bool)
        valid[:-1] = vals[:-1] > vals[1:]  # cut only after the last study of a tie group
        if floor is not None:
            valid &= vals > floor
        f1s = torch.where(valid, f1s, -1.0)
        top, at = f1s.max(0)  # torch returns the first maximum: the highest threshold wins ties
        lowest = vals.gather(0, at[None])[0]
        if floor is None:
            nxt = torch.cat([vals[1:], vals[-1:]]).gather(0, at[None])[0]  # the lowest keeps itself
        else:
            nxt = (
                torch.cat([vals[1:], torch.full_like(vals[:1], floor)])
                .gather(0, at[None])[0]
                .clamp(min=floor)
            )
        mid = nxt + (lowest - nxt) / 2
        mid = torch.where(torch.isfinite(mid) & (mid > nxt), mid, lowest)
        ok = top >= 0
        thr, best = torch.where(ok, mid, thr), torch.where(ok, top, best)
    return (thr[0], best[0]) if one else (thr, best)


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
    """Precision, recall, F1 and balanced accuracy of ``score >= threshold`` (scalar or ``[d]``) per
    column of ``scores [n, d]``, and AUROC; zero divisions as in the module docstring."""
    s, y, _ = _scores_2d(scores, y)
    thr = torch.as_tensor(threshold, dtype=torch.float64, device=s.device)
    pred = s >= thr
    yy = y[:, None]
    tp = (pred & yy).sum(0).double()
    fp = (pred & ~yy).sum(0).double()
    fn = (~pred & yy).sum(0).double()
    tn = (~pred & ~yy).sum(0).double()
    prec = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0)
    rec = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0)
    f1s = torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 1.0)
    spec = torch.where(tn + fp > 0, tn / (tn + fp).clamp(min=1), 0.0)
    return BinaryMetrics(prec, rec, f1s, (rec + spec) / 2, auroc(s, y), int(y.sum()), int((~y).sum()))
