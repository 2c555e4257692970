"""Concept alignment: every feature × concept, per position kind, with honest fit/holdout selection.

For each study-level score kind (:data:`~sae_rad_ext.interpret.scan.KINDS`) and concept:

- on the ``fit`` studies: the F1-maximising threshold of ``score >= t`` and the fit F1 / AUROC;
- on the ``holdout`` studies: precision, recall, F1 at that threshold and AUROC — the reported numbers.

The best feature of a concept is chosen on the fit split (F1, then AUROC) and reported on holdout, so
the selection over thousands of features does not inflate the score. Image kinds also carry the
holdout mean IoU / pointing-game rate of the feature's frontal map with the concept's mask
(:class:`~sae_rad_ext.interpret.scan.MapOverlap`). Uncertain labels (-1) are left out.

``best_feature_per_concept(table)`` is the entry point steering uses: ``{concept: AlignmentRow}``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sae_rad_ext.evaluation.metrics import auroc, best_f1_threshold, binary_metrics
from sae_rad_ext.interpret.scan import KINDS, LEAKS, MapOverlap
from sae_rad_ext.interpret.score_store import ScoreStore
from sae_rad_ext.util.files import atomic_open

__all__ = ["AlignmentRow", "AlignmentTable", "align_concepts", "best_feature_per_concept"]

IMAGE_KINDS = ("image", "image:frontal", "image:frontal:topk")


@dataclass
class AlignmentRow:
    """One (concept, feature, position kind) alignment, measured on the holdout studies."""

    concept: str
    feature: int
    kind: str
    """Study-level score kind (positions pooled), see ``KINDS``."""
    positions: str
    """Readable description of those positions."""
    leaks: str | None
    """Why this kind can align by reading the answer (``None``: it cannot)."""
    f1: float
    precision: float
    recall: float
    auroc: float
    threshold: float
    """Chosen on the fit split (F1-maximising); applied unchanged to holdout."""
    fit_f1: float
    fit_auroc: float
    fit_key: float = 0.0
    """The fit-split ranking key (F1, then AUROC, then fit map IoU for image kinds, then separation)."""
    fit_separation: float = 0.0
    """Fit-split (mean positive − mean negative score) / score std: the tie-breaker when several features
    separate the fit studies perfectly."""
    iou: float | None = None
    """Holdout mean IoU of the frontal map (≥ t·max) with the concept's mask (image kinds, phantoms)."""
    pointing: float | None = None
    """Holdout pointing-game hit rate (argmax patch on the mask)."""
    n_pos: int = 0
    n_neg: int = 0


@dataclass
class AlignmentTable:
    """All computed rows plus the full per-kind matrices' best picks."""

    rows: list[AlignmentRow]
    """Best ``per_concept`` features per (concept, kind) and the best concept per (feature, kind)."""

    def best(self, concept: str, kind: str | None = None, allow_leaks: bool = False) -> AlignmentRow | None:
        """The fit-chosen best feature of ``concept`` (in ``kind``, or over the non-leaking kinds)."""
        cands = [
            r
            for r in self.rows
            if r.concept == concept
            and (kind is None or r.kind == kind)
            and (allow_leaks or kind is not None or r.leaks is None)
        ]
        return max(cands, key=lambda r: r.fit_key, default=None)

    def for_feature(self, feature: int) -> list[AlignmentRow]:
        """Rows of one feature: non-leaking first, then by holdout F1."""
        rows = [r for r in self.rows if r.feature == feature]
        return sorted(rows, key=lambda r: (r.leaks is not None, -r.f1))

    def concept_ranking(self) -> list[AlignmentRow]:
        """Best features per concept: by concept, non-leaking kinds first, then by the fit-split key."""
        return sorted(self.rows, key=lambda r: (r.concept, r.leaks is not None, -r.fit_key))

    def feature_ranking(self) -> list[AlignmentRow]:
        """Best concept per feature: one row per feature (non-leaking kinds preferred), by holdout F1."""
        best: dict[int, AlignmentRow] = {}
        for r in self.rows:
            b = best.get(r.feature)
            if b is None or (r.leaks is None, r.fit_key) > (b.leaks is None, b.fit_key):
                best[r.feature] = r
        return sorted(best.values(), key=lambda r: -r.f1)

    def save(self, folder: str | Path) -> None:
        """``alignment.jsonl`` / ``alignment.csv`` (all rows), ``concepts_ranked.csv`` (best features per
        concept) and ``features_best_concept.csv`` (best concept per feature)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / "alignment.jsonl") as f:  # NaN kept: load() reads it back into floats
            for r in self.rows:
                f.write(json.dumps(asdict(r)) + "\n")
        for name, rows in (
            ("alignment.csv", self.rows),
            ("concepts_ranked.csv", self.concept_ranking()),
            ("features_best_concept.csv", self.feature_ranking()),
        ):
            with atomic_open(folder / name, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(AlignmentRow.__dataclass_fields__))
                w.writeheader()
                for r in rows:
                    w.writerow(asdict(r))

    @classmethod
    def load(cls, folder: str | Path) -> AlignmentTable:
        with open(Path(folder) / "alignment.jsonl") as f:
            return cls([AlignmentRow(**json.loads(line)) for line in f if line.strip()])


def best_feature_per_concept(
    table: AlignmentTable, kind: str | None = None, allow_leaks: bool = False
) -> dict[str, AlignmentRow]:
    """``{concept: row}``: the fit-chosen best feature per concept (non-leaking kinds unless allowed)."""
    concepts = sorted({r.concept for r in table.rows})
    out = {}
    for c in concepts:
        r = table.best(c, kind, allow_leaks)
        if r is not None:
            out[c] = r
    return out


def _f(x: torch.Tensor | float) -> float:
    v = float(x)
    return v if math.isfinite(v) else float("nan")


def align_concepts(
    store: ScoreStore,
    concepts: list[str],
    *,
    kinds: list[str] | None = None,
    overlap: MapOverlap | None = None,
    per_concept: int = 5,
    block: int = 4096,
) -> AlignmentTable:
    """Alignment rows for every kind × concept: the top ``per_concept`` features (by fit F1) per concept
    and the best concept of every feature that fires (by fit F1)."""
    kinds = [k for k in (kinds or store.kinds) if k in store.kinds]
    Y = store.labels(concepts)  # [n, C] (NaN uncertain)
    fit, hold = store.split_mask("fit"), store.split_mask("holdout")
    if int(fit.sum()) == 0 or int(hold.sum()) == 0:
        raise ValueError(
            f"concept alignment needs fit and holdout studies; got {int(fit.sum())} fit, "
            f"{int(hold.sum())} holdout — pass more studies or change holdout_fraction"
        )
    iou = overlap.mean_iou("holdout") if overlap is not None else None
    fit_iou = overlap.mean_iou("fit") if overlap is not None else None
    point = overlap.pointing("holdout") if overlap is not None else None
    ov_idx = (
        {c: i for i, c in enumerate(overlap.concepts) if int(overlap.n[1, i]) > 0}
        if overlap is not None
        else {}
    )
    fit_ov = (
        {c: i for i, c in enumerate(overlap.concepts) if int(overlap.n[0, i]) > 0}
        if overlap is not None
        else {}
    )
    rows: list[AlignmentRow] = []
    C = len(concepts)
    for kind in kinds:
        cand: dict[int, list[tuple[float, int, dict]]] = {c: [] for c in range(C)}
        feat_rows: list[tuple[int, int, dict]] = []
        for a in range(0, store.d_sae, block):
            S = store.block(kind, a, min(a + block, store.d_sae))  # [n, b]
            keys = torch.full((C, S.shape[1]), -math.inf, dtype=torch.float64)
            per_c: dict[int, dict[str, torch.Tensor]] = {}
            for c in range(C):
                y = Y[:, c]
                known = ~torch.isnan(y)
                yf, yh = y[fit & known] > 0.5, y[hold & known] > 0.5
                if min(int(yf.sum()), int((~yf).sum()), int(yh.sum()), int((~yh).sum())) == 0:
                    continue
                Sf, Sh = S[fit & known], S[hold & known]
                thr, f1_fit = best_f1_threshold(Sf, yf)
                au_fit = auroc(Sf, yf)
                m = binary_metrics(Sh, yh, thr)
                sep = (Sf[yf].double().mean(0) - Sf[~yf].double().mean(0)) / Sf.double().std(0).clamp(
                    min=1e-12
                )
                keys[c] = f1_fit + 1e-4 * torch.nan_to_num(au_fit) + 1e-8 * torch.tanh(sep / 10)
                oi = fit_ov.get(concepts[c])
                if kind in IMAGE_KINDS and oi is not None:  # image kinds: a map on the mask breaks ties
                    keys[c] += 1e-6 * fit_iou[oi, a : a + S.shape[1]].double()
                per_c[c] = dict(
                    f1=m.f1,
                    precision=m.precision,
                    recall=m.recall,
                    auroc=m.auroc,
                    threshold=thr,
                    fit_f1=f1_fit,
                    fit_auroc=au_fit,
                    fit_separation=sep,
                    n_pos=m.n_pos,
                    n_neg=m.n_neg,
                )
                for j in keys[c].topk(min(per_concept, S.shape[1])).indices.tolist():
                    cand[c].append(
                        (float(keys[c, j]), a + j, {**_pick(per_c[c], j), "fit_key": float(keys[c, j])})
                    )
            if not per_c:
                continue
            best_c = keys.argmax(0)
            for j in torch.nonzero((S > 0).any(0)).flatten().tolist():
                c = int(best_c[j])
                if c in per_c:
                    feat_rows.append((a + j, c, {**_pick(per_c[c], j), "fit_key": float(keys[c, j])}))
        seen = set()
        for c, lst in cand.items():
            for _, f, st in sorted(lst, key=lambda t: -t[0])[:per_concept]:
                rows.append(_row(concepts[c], f, kind, st, iou, point, ov_idx))
                seen.add((c, f))
        for f, c, st in feat_rows:
            if (c, f) not in seen:
                rows.append(_row(concepts[c], f, kind, st, iou, point, ov_idx))
    return AlignmentTable(rows)


def _pick(d: dict, j: int) -> dict:
    return {k: (v if isinstance(v, int) else _f(v[j])) for k, v in d.items()}


def _row(concept, feature, kind, st, iou, point, ov_idx) -> AlignmentRow:
    r = AlignmentRow(
        concept=concept,
        feature=int(feature),
        kind=kind,
        positions=KINDS.get(kind, kind),
        leaks=LEAKS.get(kind),
        **st,
    )
    if kind in IMAGE_KINDS and iou is not None and concept in ov_idx:
        i = ov_idx[concept]
        r.iou, r.pointing = _f(iou[i, feature]), _f(point[i, feature])
    return r
