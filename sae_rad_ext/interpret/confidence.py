"""RecSAE-style confidence: can a feature's concept dictionary predict where it fires on held-out studies?

For one feature: the *concept dictionary* is the set of binary study attributes (finding labels, views;
:meth:`StudyInfo.attributes`) that hold for at least ``min_rate`` of its top fit-split studies and for
``min_lift`` more of them than of the fit studies overall. On the holdout split, its ``n`` top-activating
studies (positives) and up to ``n`` studies where it never fires (negatives) are predicted active when
they have every attribute of the dictionary. recall = share of positives predicted active, specificity =
share of negatives predicted inactive, confidence = accuracy over both; "interpretable" at ≥ 0.8
(RecSAE's convention). An empty dictionary predicts nothing active.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from sae_rad_ext.interpret.score_store import StudyInfo

__all__ = ["Confidence", "concept_dictionary", "feature_confidence"]


@dataclass
class Confidence:
    """RecSAE confidence of one feature on the holdout split."""

    feature: int
    dictionary: list[str] = field(default_factory=list)
    """Attributes the prediction requires (``finding:pleural_effusion``, ``view:lateral`` …)."""
    recall: float = float("nan")
    specificity: float = float("nan")
    """NaN when the feature fires on every holdout study (no negatives)."""
    confidence: float = float("nan")
    """Accuracy over positives and negatives."""
    interpretable: bool = False
    """``confidence >= 0.8``."""
    n_pos: int = 0
    n_neg: int = 0


def concept_dictionary(
    top: list[StudyInfo], background: list[StudyInfo], min_rate: float = 0.6, min_lift: float = 0.2
) -> list[str]:
    """Attributes enriched among ``top`` relative to ``background`` (see module docstring)."""
    if not top:
        return []
    ct = Counter(k for s in top for k, v in s.attributes().items() if v)
    cb = Counter(k for s in background for k, v in s.attributes().items() if v)
    nb = max(len(background), 1)
    return sorted(
        k for k, n in ct.items() if n / len(top) >= min_rate and n / len(top) - cb[k] / nb >= min_lift
    )


def feature_confidence(
    feature: int,
    fit_scores: torch.Tensor,
    fit_studies: list[StudyInfo],
    hold_scores: torch.Tensor,
    hold_studies: list[StudyInfo],
    *,
    n: int = 20,
    threshold: float = 0.8,
    seed: int = 0,
) -> Confidence:
    """Confidence of one feature from its study-level scores on the fit (``[n_fit]``) and holdout splits."""

    def top_of(scores: torch.Tensor, studies: list[StudyInfo]) -> list[StudyInfo]:
        k = min(n, int((scores > 0).sum()))
        return [studies[i] for i in scores.topk(k).indices.tolist()] if k else []

    dic = concept_dictionary(top_of(fit_scores, fit_studies), fit_studies)
    pos = top_of(hold_scores, hold_studies)
    silent = torch.nonzero(hold_scores <= 0).flatten()
    g = torch.Generator().manual_seed(seed + feature)
    neg_idx = silent[torch.randperm(len(silent), generator=g)[:n]].tolist()
    neg = [hold_studies[i] for i in neg_idx]

    def predict(s: StudyInfo) -> bool:
        a = s.attributes()
        return bool(dic) and all(a.get(k, False) for k in dic)

    tp = sum(predict(s) for s in pos)
    tn = sum(not predict(s) for s in neg)
    rec = tp / len(pos) if pos else float("nan")
    spec = tn / len(neg) if neg else float("nan")
    conf = (tp + tn) / (len(pos) + len(neg)) if (pos or neg) else float("nan")
    return Confidence(feature, dic, rec, spec, conf, bool(conf >= threshold), len(pos), len(neg))
