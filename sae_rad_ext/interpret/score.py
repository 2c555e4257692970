"""Scoring explanations: does the explanation tell activating from non-activating held-out studies?

A *judge* maps (explanation, items) to one score per item; a *scorer* builds the items and turns the
scores into precision, recall, F1, balanced accuracy (at the judge's threshold) and AUROC.

- detection: items are held-out studies — the feature's top-activating ones (positives) and ones where
  it never fires (negatives). Judges: :class:`KeywordJudge` (offline: the findings the explanation names
  — read with the project's labeler, so "without cardiomegaly" claims absence — its quoted phrases and
  views, checked against the study's labels / reference report), :class:`EmbeddingJudge` (MiniLM cosine
  between explanation and report, offline), :class:`LLMJudge` (an OpenAI-compatible endpoint answers
  per study).
- fuzzing: items are activating examples with the truly active tokens / patches marked (positives) or
  as many random ones marked (negatives); offline the judge checks the marked text against the
  explanation's findings / phrases and the marked patches' region against the region it names.

Every score comes with a shuffled baseline: the same scorer given another feature's explanation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sae_rad_ext.data.labels import label_report
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.evaluation.metrics import binary_metrics
from sae_rad_ext.interpret.feature_examples import region_words
from sae_rad_ext.interpret.score_store import StudyInfo
from sae_rad_ext.records import FeatureExample

__all__ = [
    "Claims",
    "EmbeddingJudge",
    "KeywordJudge",
    "LLMJudge",
    "detection_score",
    "fuzzing_score",
    "parse_claims",
    "score_metrics",
    "shuffled",
]


@dataclass
class Claims:
    """What an explanation asserts, in checkable form."""

    findings: dict[str, int] = field(default_factory=dict)
    """Finding → 1 (present) / 0 (absent), from the labeler run on the explanation."""
    phrases: list[str] = field(default_factory=list)
    """Quoted phrases (``"pleural effusion"``)."""
    views: list[str] = field(default_factory=list)
    """``lateral`` / ``prior`` / ``AP`` / ``PA`` mentioned."""
    no_finding: bool = False
    region: str | None = None
    """``upper|middle|lower image-left|centre|image-right`` if named."""

    def __len__(self) -> int:
        return len(self.findings) + len(self.phrases) + len(self.views) + int(self.no_finding)


def parse_claims(text: str) -> Claims:
    t = text or ""
    phrases = [p.strip().lower() for p in re.findall(r'"([^"]{2,80})"', t)]
    bare = re.sub(r'"[^"]*"', " ", t)
    bare = re.sub(r"\(\d+/\d+ top studies vs \d+% overall\)", " ", bare)
    lab = label_report(bare)
    findings = {k: (1 if lab.get(k) in (1, -1) else 0) for k in FINDINGS if lab.get(k) is not None}
    views = [
        v
        for v, rx in (
            ("lateral", r"\blateral view\b"),
            ("prior", r"\bprior study\b"),
            ("AP", r"\bAP view\b"),
            ("PA", r"\bPA view\b"),
        )
        if re.search(rx, bare)
    ]
    m = re.search(r"\b(upper|middle|lower) (image-left|centre|image-right)", bare)
    return Claims(
        findings,
        phrases,
        views,
        bool(re.search(r"\bno finding\b|\bnormal stud", bare, re.I)),
        m.group(0) if m else None,
    )


def _norm(s: str) -> str:
    return " " + re.sub(r"[^a-z]+", " ", (s or "").lower()).strip() + " "


class KeywordJudge:
    """Offline detection judge: share of the explanation's claims a study satisfies (0 when it makes none:
    an explanation that names nothing checkable predicts no study)."""

    threshold: float | str = 0.5

    def __call__(self, explanation: str, studies: Sequence[StudyInfo]) -> torch.Tensor:
        c = parse_claims(explanation)
        out = []
        for s in studies:
            if not len(c):
                out.append(0.0)
                continue
            ok = sum((s.labels.get(k) == 1) == bool(v) for k, v in c.findings.items())
            text = _norm(s.findings)
            ok += sum(_norm(p) in text for p in c.phrases)
            ok += sum(v in s.views or v == (s.view_position or "") for v in c.views)
            ok += int(c.no_finding and s.labels.get("no_finding") == 1)
            out.append(ok / len(c))
        return torch.tensor(out, dtype=torch.float64)


@dataclass
class EmbeddingJudge:
    """Cosine similarity of the explanation and each study's report under a sentence embedder
    (``embed(list[str]) -> [n, d]`` normalised; default: the offline MiniLM model). Threshold: median.
    Embeddings are cached per text (the same held-out reports recur across features)."""

    embed: Any = None
    threshold: float | str = "median"
    _cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, explanation: str, studies: Sequence[StudyInfo]) -> torch.Tensor:
        if self.embed is None:
            from sae_rad_ext.interpret.embedding import MiniLM

            self.embed = MiniLM()
        texts = [explanation] + [s.findings or "" for s in studies]
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            for t, v in zip(new, torch.as_tensor(self.embed(new), dtype=torch.float64), strict=True):
                self._cache[t] = v
        e = torch.stack([self._cache[t] for t in texts])
        return e[1:] @ e[0]


@dataclass
class LLMJudge:
    """Asks a chat endpoint which studies fit the explanation (a JSON list of 0/1)."""

    client: Any
    threshold: float | str = 0.5

    def __call__(self, explanation: str, studies: Sequence[StudyInfo]) -> torch.Tensor:
        lines = [
            f"A feature of a radiology model is explained as: {explanation!r}.",
            "For each study below answer 1 if the feature is likely active on it, else 0. "
            f"Reply with only a JSON list of {len(studies)} integers.",
        ]
        for i, s in enumerate(studies, 1):
            labels = ", ".join(k.replace("_", " ") for k, v in s.labels.items() if v == 1) or "none"
            lines.append(f"{i}. views: {', '.join(s.views)}; labels: {labels}; report: {s.findings[:300]}")
        text = self.client.chat([{"role": "user", "content": "\n".join(lines)}])
        m = re.search(r"\[[\s\S]*?\]", text)
        try:
            vals = [float(x) for x in json.loads(m.group(0))] if m else []
        except (ValueError, TypeError):
            vals = []
        if len(vals) != len(studies):
            from sae_rad_ext.interpret.llm_client import LLMError

            raise LLMError(
                f"LLM judge answered {text[:200]!r}; expected a JSON list of {len(studies)} 0/1 values"
            )
        return torch.tensor(vals, dtype=torch.float64)


def score_metrics(scores: torch.Tensor, y: torch.Tensor, threshold: float | str = 0.5) -> dict[str, float]:
    """precision / recall / f1 / balanced_accuracy / auroc of item scores vs labels (plus n), by
    :func:`sae_rad_ext.evaluation.metrics.binary_metrics`: an item is positive when ``score >= threshold``;
    ``threshold`` is a number or ``"median"`` (the lower median of ``scores``)."""
    s = scores.double()[:, None]
    thr = float(s.median()) if threshold == "median" else float(threshold)
    m = binary_metrics(s, y.bool(), thr)
    return {
        "precision": float(m.precision[0]),
        "recall": float(m.recall[0]),
        "f1": float(m.f1[0]),
        "balanced_accuracy": float(m.balanced_accuracy[0]),
        "auroc": float(m.auroc[0]),
        "n": int(y.numel()),
    }


def detection_score(
    explanation: str, positives: Sequence[StudyInfo], negatives: Sequence[StudyInfo], judge: Any = None
) -> dict[str, float]:
    """Metrics of the judge telling ``positives`` (feature active) from ``negatives`` (silent)."""
    judge = judge or KeywordJudge()
    items = list(positives) + list(negatives)
    if not positives or not negatives:
        return {"n": len(items)}
    y = torch.tensor([1] * len(positives) + [0] * len(negatives), dtype=torch.bool)
    return score_metrics(judge(explanation, items), y, getattr(judge, "threshold", 0.5))


def _fuzz_item(c: Claims, ex: FeatureExample, marked: list[int]) -> float:
    """How well the marked positions of one example fit the explanation's claims (0..1): marked text
    against its findings / phrases, marked image patches against the region it names."""
    hits, total = 0.0, 0
    words = [ex.tokens[i] for i in marked if not _is_patch(ex.tokens[i])]
    if words and (c.findings or c.phrases):
        total += 1
        text = "".join(words)
        lab = label_report(text)
        ws = set(_norm(text).split())
        hits += float(
            any(lab.get(k) is not None for k in c.findings)
            or any(set(_norm(p).split()) & ws - {"no"} for p in c.phrases)
        )
    patches = [ex.tokens[i] for i in marked if _is_patch(ex.tokens[i])]
    if patches and c.region and ex.patch_map is not None:
        total += 1
        g = np.zeros_like(np.asarray(ex.patch_map, dtype=np.float32))
        for p in patches:
            m = re.match(r"<\w+ r(\d+) c(\d+)>", p)
            if m:
                g[int(m.group(1)), int(m.group(2))] = 1.0
        hits += float(region_words(g).startswith(c.region))
    return hits / total if total else 0.0


def _is_patch(tok: str) -> bool:
    return tok.startswith("<") and tok.endswith(">") and " r" in tok


def fuzzing_score(
    explanation: str, examples: Sequence[FeatureExample], *, frac: float = 0.3, seed: int = 0
) -> dict[str, float]:
    """Correctly marked (≥ ``frac`` × max) vs randomly marked versions of each example, judged offline."""
    c = parse_claims(explanation)
    rng = np.random.default_rng(seed)
    scores, y = [], []
    for ex in examples:
        top = max(ex.values, default=0.0)
        if top <= 0 or len(ex.values) < 2:
            continue
        true = [i for i, v in enumerate(ex.values) if v >= frac * top]
        rand = sorted(rng.choice(len(ex.values), size=min(len(true), len(ex.values)), replace=False).tolist())
        scores += [_fuzz_item(c, ex, true), _fuzz_item(c, ex, rand)]
        y += [1, 0]
    if not y:
        return {"n": 0}
    return score_metrics(torch.tensor(scores), torch.tensor(y, dtype=torch.bool))


def shuffled(explanations: dict[int, str], seed: int = 0) -> dict[int, str]:
    """Each feature gets another feature's explanation (a derangement; '' with a single feature)."""
    keys = sorted(explanations)
    if len(keys) < 2:
        return {k: "" for k in keys}
    rng = np.random.default_rng(seed)
    shift = int(rng.integers(1, len(keys)))
    perm = rng.permutation(len(keys))
    return {keys[perm[i]]: explanations[keys[perm[(i + shift) % len(keys)]]] for i in range(len(keys))}
