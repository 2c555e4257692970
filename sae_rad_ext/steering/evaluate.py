"""Directional-control evaluation of a strength sweep with the finding labeler.

For a target finding and every coefficient, beside an equal-norm random direction:

- **on rate**: of the studies whose *unsteered* report does not state the finding, the share whose
  steered report does (``off rate``: the reverse, for ablations / negative steering);
- **off-target rate**: the share of (study, other finding) pairs whose label changed from the unsteered
  report (``off_target_any``: the share of studies where any other finding changed);
- **fluency**: the unsteered model's mean per-token loss on the steered report (teacher forcing after
  the same prompt), and the share of reports that still **parse** (:func:`report_parses`).

Labels come from :func:`sae_rad_ext.data.labels.label_report` (or any ``text -> {finding: 1/0/-1/None}``
callable), binarised with uncertain = positive.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.labels import binarize, label_report, split_sentences
from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.steering.steer import SweepResult
from sae_rad_ext.util.files import atomic_write_bytes, atomic_write_text, write_json

__all__ = ["ControlEval", "ControlRow", "evaluate_control", "report_parses", "report_token_loss"]

Labeler = Callable[[str], dict[str, int | None]]


def report_parses(text: str, labeler: Labeler = label_report) -> bool:
    """A generated report "parses" when it is non-empty, ends with a full stop (not cut off), every
    sentence starts with a capital letter and has ≥ 2 words, no sentence repeats (degenerate loops),
    and the labeler reads at least one finding (positive, negative or uncertain) from it."""
    text = (text or "").strip()
    if not text or not text.endswith("."):
        return False
    sents = split_sentences(text)
    if not sents or len(set(sents)) != len(sents):
        return False
    if any(len(s.split()) < 2 or not s[:1].isupper() for s in sents):
        return False
    return any(v is not None for k, v in labeler(text).items() if k != "no_finding")


@torch.no_grad()
def report_token_loss(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Any],
    reports: Sequence[str],
    *,
    batch_size: int = 16,
) -> list[float]:
    """Mean next-token loss (nats) of ``model`` (run without hooks) on each report after its prompt."""
    if len(reports) != len(studies):
        raise ValueError(f"{len(reports)} reports for {len(studies)} studies")
    out: list[float] = []
    for i in range(0, len(studies), batch_size):
        chunk, reps = list(studies[i : i + batch_size]), list(reports[i : i + batch_size])
        batch = processor.build(chunk, reports=reps).to(model.cfg.device)
        ids, kw = batch.model_args()
        logits = model(ids, **kw)
        labels = batch.labels[:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        keep = labels != -100
        nll = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep
        out += (nll.sum(1) / keep.sum(1).clamp(min=1)).tolist()
    return out


@dataclass
class ControlRow:
    """Directional-control metrics at one coefficient for one condition."""

    condition: str
    """``"feature"`` (``W_dec[f]``) or ``"random"`` (equal-norm random direction)."""
    coefficient: float
    """As given to the sweep (in its ``unit``)."""
    absolute: float
    """Coefficient applied to the direction."""
    on_rate: float
    """Share of studies without the target finding in the unsteered report that have it after steering."""
    n_off_before: int
    off_rate: float
    """Share of studies with the target finding in the unsteered report that lose it."""
    n_on_before: int
    off_target_rate: float
    """Share of (study, other finding) label changes vs the unsteered report."""
    off_target_any: float
    """Share of studies where any other finding's label changed."""
    changed_rate: float
    """Share of reports whose text differs from the unsteered one."""
    parse_rate: float
    """Share of steered reports that :func:`report_parses`."""
    fluency_loss: float | None
    """Mean per-token loss of the unsteered model on the steered reports (None: not computed)."""


@dataclass
class ControlEval:
    """A sweep's directional-control table for one target finding."""

    feature: int
    finding: str
    goal: str
    """``"on"`` (steer the finding in) or ``"off"`` (steer it out)."""
    unit: str
    n_studies: int
    baseline_parse_rate: float
    baseline_fluency_loss: float | None
    rows: list[ControlRow] = field(default_factory=list)

    def rate(self, row: ControlRow) -> float:
        return row.on_rate if self.goal == "on" else row.off_rate

    def best(self) -> dict[str, Any]:
        """The feature's best coefficient (highest target rate; ties → smallest |coef|) with the random
        control at the same coefficient. Chosen on the evaluated studies themselves (optimistic)."""
        feats = [r for r in self.rows if r.condition == "feature" and r.absolute != 0]
        if not feats:
            return {}
        b = max(feats, key=lambda r: (self.rate(r), -abs(r.coefficient)))
        rnd = next((r for r in self.rows if r.condition == "random" and r.coefficient == b.coefficient), None)
        return {
            "coefficient": b.coefficient,
            "absolute": b.absolute,
            "target_rate": self.rate(b),
            "random_target_rate": None if rnd is None else self.rate(rnd),
            "off_target_rate": b.off_target_rate,
            "off_target_any": b.off_target_any,
            "random_off_target_rate": None if rnd is None else rnd.off_target_rate,
            "parse_rate": b.parse_rate,
            "fluency_loss": b.fluency_loss,
            "goal_met": self.rate(b) >= 0.8 and b.off_target_rate <= 0.1,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best"] = self.best()
        return d

    def write(self, out: str | Path, stem: str = "metrics") -> tuple[Path, Path]:
        """``<stem>.json`` (everything) and ``<stem>.csv`` (one row per condition × coefficient)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        js = write_json(out / f"{stem}.json", self.to_dict(), indent=2)
        names = list(asdict(self.rows[0]).keys()) if self.rows else []
        lines: list[str] = []

        class _W:
            def write(self, s: str) -> None:
                lines.append(s)

        w = csv.DictWriter(_W(), fieldnames=["feature", "finding", *names], lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({"feature": self.feature, "finding": self.finding, **asdict(r)})
        return js, atomic_write_text(out / f"{stem}.csv", "".join(lines))

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG of the target rate vs coefficient (feature vs random) with off-target rates dashed."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=120)
        for cond, color in (("feature", "tab:blue"), ("random", "tab:gray")):
            rows = sorted((r for r in self.rows if r.condition == cond), key=lambda r: r.coefficient)
            if not rows:
                continue
            xs = [r.coefficient for r in rows]
            ax.plot(
                xs,
                [self.rate(r) for r in rows],
                "o-",
                color=color,
                label=f"{cond}: {self.finding} {self.goal}",
            )
            ax.plot(
                xs,
                [r.off_target_rate for r in rows],
                "x--",
                color=color,
                alpha=0.7,
                label=f"{cond}: off-target",
            )
        ax.axhline(0.8, color="tab:green", lw=0.8, ls=":")
        ax.axhline(0.1, color="tab:red", lw=0.8, ls=":")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(f"coefficient ({self.unit})")
        ax.set_ylabel("rate")
        ax.set_title(
            title or f"feature {self.feature} → {self.finding} ({self.n_studies} studies)", fontsize=9
        )
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return atomic_write_bytes(Path(path), buf.getvalue())




def _labels(texts: Sequence[str], labeler: Labeler, keys: Sequence[str]) -> list[dict[str, int]]:
    return [{k: binarize(labeler(t)).get(k, 0) for k in keys} for t in texts]


def evaluate_control(
    sweep: SweepResult,
    finding: str,
    *,
    goal: Literal["on", "off"] = "on",
    labeler: Labeler = label_report,
    findings: Sequence[str] = FINDINGS,
    model: HookedMaira2 | None = None,
    processor: Maira2Processor | None = None,
    studies: Sequence[Any] | None = None,
    batch_size: int = 16,
) -> ControlEval:
    """Score a :class:`SweepResult` for ``finding``. Pass ``model``, ``processor`` and ``studies`` (the
    sweep's, same order) to also compute the fluency loss; otherwise it is None."""
    if finding not in findings:
        raise ValueError(f"unknown finding {finding!r}; expected one of {list(findings)}")
    if goal not in ("on", "off"):
        raise ValueError(f"goal must be 'on' or 'off', got {goal!r}")
    with_loss = model is not None and processor is not None and studies is not None
    if with_loss and len(studies) != len(sweep.baseline):
        raise ValueError(f"{len(studies)} studies for a sweep over {len(sweep.baseline)}")
    others = [k for k in findings if k != finding]
    base = _labels(sweep.baseline, labeler, findings)
    n = len(base)

    def loss(texts: Sequence[str]) -> float | None:
        if not with_loss:
            return None
        vals = report_token_loss(model, processor, studies, texts, batch_size=batch_size)
        return float(sum(vals) / max(1, len(vals)))

    ev = ControlEval(
        sweep.feature,
        finding,
        goal,
        sweep.unit,
        n,
        sum(report_parses(t, labeler) for t in sweep.baseline) / max(1, n),
        loss(sweep.baseline),
    )
    cache: dict[tuple[str, ...], float | None] = {tuple(sweep.baseline): ev.baseline_fluency_loss}
    for cond, table in (("feature", sweep.reports), ("random", sweep.random_reports)):
        for c, a in zip(sweep.coefficients, sweep.absolute, strict=True):
            if c not in table:
                continue
            texts = table[c]
            lab = _labels(texts, labeler, findings)
            off_before = [i for i in range(n) if not base[i][finding]]
            on_before = [i for i in range(n) if base[i][finding]]
            changes = [sum(lab[i][k] != base[i][k] for k in others) for i in range(n)]
            key = tuple(texts)
            if key not in cache:
                cache[key] = loss(texts)
            ev.rows.append(
                ControlRow(
                    cond,
                    c,
                    a,
                    on_rate=sum(lab[i][finding] for i in off_before) / max(1, len(off_before)),
                    n_off_before=len(off_before),
                    off_rate=sum(1 - lab[i][finding] for i in on_before) / max(1, len(on_before)),
                    n_on_before=len(on_before),
                    off_target_rate=sum(changes) / max(1, n * len(others)),
                    off_target_any=sum(ch > 0 for ch in changes) / max(1, n),
                    changed_rate=sum(t != b for t, b in zip(texts, sweep.baseline, strict=True)) / max(1, n),
                    parse_rate=sum(report_parses(t, labeler) for t in texts) / max(1, n),
                    fluency_loss=cache[key],
                )
            )
    return ev
