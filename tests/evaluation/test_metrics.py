"""The one home of F1 / AUROC / best-F1 threshold against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from sae_rad_ext.evaluation.metrics import (
    auroc,
    best_f1_threshold,
    binary_metrics,
    f1,
    f1_by_key,
    precision_recall_f1,
)


# ---- hard predictions ----------------------------------------------------------------------------
def test_f1_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(30) < 0.3
        pred = rng.random(30) < 0.4
        p, r, f = precision_recall_f1(pred, y)
        assert f == pytest.approx(f1_score(y, pred, zero_division=1.0))
        assert p == pytest.approx(precision_score(y, pred, zero_division=0))
        assert r == pytest.approx(recall_score(y, pred, zero_division=0))
        assert f1(torch.as_tensor(pred), y.astype(int)) == f  # torch / int inputs alike


def test_f1_degenerate_cases():
    none, some = np.zeros(4, bool), np.array([1, 0, 1, 0], bool)
    assert f1(none, none) == 1.0  # nothing to find, nothing predicted
    assert f1(some, none) == 0.0  # only false positives
    assert f1(none, some) == 0.0  # all-zero predictions miss every positive
    assert precision_recall_f1(none, some) == (0.0, 0.0, 0.0)
    assert precision_recall_f1(none, none) == (0.0, 0.0, 1.0)
    assert f1([1, 1, 0], [1, 0, 0]) == pytest.approx(2 / 3)  # tp 1, fp 1, fn 0
    with pytest.raises(ValueError, match="same length"):
        f1([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="1-D"):
        f1(np.zeros((2, 2)), np.zeros((2, 2)))


def test_f1_by_key_counts_only_ones_as_positive():
    pred = [{"a": 1, "b": 0}, {"a": 1, "b": -1}, {"a": 0}]
    truth = [{"a": 1, "b": 1}, {"a": None, "b": -1}, {"a": 1, "b": 0}]
    out = f1_by_key(pred, truth, ["a", "b", "c"])
    assert out["a"] == pytest.approx(0.5)  # tp 1 (study 0), fp 1 (None truth), fn 1 (study 2)
    assert out["b"] == 0.0  # -1 is not positive: one fn, nothing predicted
    assert out["c"] == 1.0  # missing everywhere: nothing to find, nothing predicted
    with pytest.raises(ValueError, match="one per study"):
        f1_by_key(pred[:2], truth, ["a"])


# ---- AUROC ----------------------------------------------------------------------------------------
def test_auroc_matches_sklearn_with_ties_and_one_column():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(60, generator=g) < 0.35
    scores = torch.rand(60, 4, generator=g)
    scores[:, 1] = (scores[:, 1] * 4).floor()  # heavy ties
    scores[:, 2] = 0.0  # constant
    scores[:, 3] = torch.where(y, 1.0, 0.0)  # perfect
    au = auroc(scores, y)
    for j in range(4):
        assert au[j].item() == pytest.approx(roc_auc_score(y.numpy(), scores[:, j].numpy()), abs=1e-12)
    one = auroc(scores[:, 1], y)
    assert one.dim() == 0 and one.item() == pytest.approx(au[1].item())
    assert math.isnan(auroc(scores, torch.ones(60, dtype=torch.bool))[0].item())  # one class only


def test_scores_with_nan_are_rejected():
    s = torch.tensor([0.1, float("nan"), 0.3])
    y = torch.tensor([True, False, True])
    for fn in (auroc, best_f1_threshold):
        with pytest.raises(ValueError, match="NaN"):
            fn(s, y)
    with pytest.raises(ValueError, match="one label per row"):
        auroc(torch.zeros(3), torch.zeros(2, dtype=torch.bool))


# ---- best-F1 threshold ---------------------------------------------------------------------------
def test_best_threshold_reaches_the_sklearn_best_f1_on_every_column():
    g = torch.Generator().manual_seed(2)
    y = torch.rand(80, generator=g) < 0.3
    scores = torch.rand(80, 6, generator=g)
    scores[:, 1] = (scores[:, 1] * 3).floor()  # ties
    scores[:, 2] = torch.where(y, 2.0, 1.0)  # perfect
    scores[:, 3] = 0.0  # constant
    scores[:, 4] = torch.where(torch.rand(80, generator=g) < 0.7, 0.0, scores[:, 4])  # mostly zero
    scores[:, 5] = -scores[:, 5]  # negative scores
    thr, best = best_f1_threshold(scores, y)
    for j in range(6):
        prec, rec, _ = precision_recall_curve(y.numpy(), scores[:, j].numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.nanmax(np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0))
        assert best[j].item() == pytest.approx(ref, abs=1e-12)
        achieved = f1_score(y.numpy(), (scores[:, j] >= thr[j]).numpy())
        assert achieved == pytest.approx(ref, abs=1e-12)
    assert best[2].item() == 1.0 and thr[2].item() == 1.5  # midpoint between the two groups


def test_best_threshold_tie_rule_and_midpoint_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    y = torch.tensor([True, False, False, True])
    # cuts keep 1, 2, 3, 4 studies: F1 2/3, 1/2, 2/5, 2/3 → the tie goes to the highest threshold
    thr, best = best_f1_threshold(s, y)
    assert thr.dim() == 0 and best.item() == pytest.approx(2 / 3) and thr.item() == 2.5
    # tied scores are cut together: [2, 2] can only be taken as a pair
    s2 = torch.tensor([3.0, 2.0, 2.0, 1.0])
    y2 = torch.tensor([True, True, False, False])
    thr2, best2 = best_f1_threshold(s2, y2)
    assert best2.item() == pytest.approx(0.8) and thr2.item() == 1.5  # keep {3, 2, 2}: tp 2, fp 1
    # the cut keeping every study has the lowest score itself as threshold
    thr3, best3 = best_f1_threshold(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([True, True, False]))
    assert thr3.item() == 1.0 and best3.item() == pytest.approx(0.8)


def test_best_threshold_floor_and_degenerate_cases():
    acts = torch.tensor([0.0, 0.0, 0.4, 0.8, 0.0])
    y = torch.tensor([True, False, True, True, True])
    thr, best = best_f1_threshold(acts, y, floor=0.0)
    # only firing studies can be predicted: keep {0.8, 0.4} (F1 2·2/(2+4) = 2/3), threshold (0.4 + 0)/2
    assert best.item() == pytest.approx(2 / 3) and thr.item() == pytest.approx(0.2)
    free_thr, free_best = best_f1_threshold(acts, y)  # without a floor predicting everyone is better
    assert free_best.item() == pytest.approx(2 * 4 / (5 + 4)) and free_thr.item() == 0.0
    silent = best_f1_threshold(torch.zeros(5), y, floor=0.0)  # a latent that never fires
    assert silent[0].item() == math.inf and silent[1].item() == 0.0
    no_pos = best_f1_threshold(torch.rand(5, 3), torch.zeros(5, dtype=torch.bool))
    assert torch.isinf(no_pos[0]).all() and (no_pos[1] == 0).all()
    empty = best_f1_threshold(torch.zeros(0, 2), torch.zeros(0, dtype=torch.bool))
    assert torch.isinf(empty[0]).all() and (empty[1] == 0).all()
    inf_thr, inf_best = best_f1_threshold(torch.tensor([math.inf, -math.inf]), torch.tensor([True, False]))
    assert inf_best.item() == 1.0 and inf_thr.item() == math.inf  # no finite midpoint: the score itself


def test_binary_metrics_match_sklearn_and_zero_division():
    g = torch.Generator().manual_seed(3)
    y = torch.rand(50, generator=g) < 0.4
    scores = torch.rand(50, 5, generator=g)
    scores[:, 4] = 0.0  # predicts nothing at 0.5
    m = binary_metrics(scores, y, 0.5)
    for j in range(5):
        p = (scores[:, j] >= 0.5).numpy()
        assert m.precision[j].item() == pytest.approx(precision_score(y.numpy(), p, zero_division=0))
        assert m.recall[j].item() == pytest.approx(recall_score(y.numpy(), p, zero_division=0))
        assert m.f1[j].item() == pytest.approx(f1_score(y.numpy(), p, zero_division=1.0))
        assert m.f1[j].item() == pytest.approx(f1(p, y))  # the same rule as the scalar F1
        assert m.balanced_accuracy[j].item() == pytest.approx(balanced_accuracy_score(y.numpy(), p))
    nothing = binary_metrics(torch.zeros(4, 1), torch.zeros(4, dtype=torch.bool), 0.5)
    assert nothing.f1.item() == 1.0 and nothing.precision.item() == 0.0 and nothing.n_neg == 4
