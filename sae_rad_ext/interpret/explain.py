"""Explainers: a feature's top studies → a short natural-language description.

Three interchangeable kinds, each a callable ``explainer(ctx: FeatureContext) -> Explanation``:

- :class:`EnrichmentExplainer` (offline default, SAE-Rad-style distilled description): what distinguishes
  the feature's top fit-split studies from the fit studies overall — enriched finding labels (and ones
  that are absent), enriched report phrases (1–3-word n-grams of the reference FINDINGS), views, where
  the top examples peak (image / report / prompt positions) and, for image features, the region of the
  frontal map.
- :class:`LLMExplainer`: any OpenAI-compatible chat endpoint (:class:`~sae_rad_ext.interpret.llm_client.ChatClient`)
  shown delphi-style examples — tokens above 0.3 × the example's max marked ``<<like this>>``.
- :class:`CallableExplainer`: wraps a user function ``(FeatureContext) -> str``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sae_rad_ext.interpret.feature_examples import region_words
from sae_rad_ext.interpret.score_store import StudyInfo
from sae_rad_ext.records import Explanation, FeatureExample

__all__ = [
    "CallableExplainer",
    "EnrichmentExplainer",
    "FeatureContext",
    "LLMExplainer",
    "highlight",
    "ngrams",
]

STOP = set(
    "a an the of and or is are was were be been with without to in on at for from by as this that there "
    "it its no not seen again also which has have had than then into".split()
)


@dataclass
class FeatureContext:
    """What an explainer may look at for one feature."""

    feature: int
    top: list[StudyInfo]
    """Fit-split studies where the feature is most active, best first."""
    top_values: list[float]
    """Their study-level scores."""
    background: list[StudyInfo]
    """Fit-split studies to compare against (all of them, or a sample)."""
    examples: list[FeatureExample] = field(default_factory=list)
    """Token contexts / patch maps of top examples (may be empty)."""
    role_frequency: dict[str, float] = field(default_factory=dict)
    hook_name: str = ""


def ngrams(text: str, n_max: int = 3) -> set[str]:
    """Lower-cased 1..n_max-word n-grams of a text that are not only stop words."""
    words = re.findall(r"[a-z][a-z\-]+", (text or "").lower())
    out = set()
    for n in range(1, n_max + 1):
        for i in range(len(words) - n + 1):
            g = words[i : i + n]
            if all(w in STOP for w in g) or g[0] in STOP - {"no"} or g[-1] in STOP:
                continue
            out.add(" ".join(g))
    return out


def _rates(items: list[set[str]]) -> Counter:
    c: Counter = Counter()
    for s in items:
        c.update(s)
    return c


def highlight(ex: FeatureExample, frac: float = 0.3) -> str:
    """delphi-style: tokens with value ≥ ``frac`` × the example's max wrapped in ``<<…>>``."""
    top = max(ex.values, default=0.0)
    out = []
    for t, v in zip(ex.tokens, ex.values, strict=True):
        out.append(f"<<{t}>>" if top > 0 and v >= frac * top else t)
    return "".join(x if not x.startswith("<") or x.startswith("<<") else f" {x} " for x in out).strip()


@dataclass
class EnrichmentExplainer:
    """Offline explainer: enriched labels / phrases / views / peak positions of the top studies."""

    min_rate: float = 0.6
    """A label or view must hold for at least this share of the top studies."""
    min_lift: float = 0.2
    """... and for this much more of them than of the background."""
    phrase_rate: float = 0.5
    max_phrases: int = 3
    method: str = "offline-enrichment"

    def __call__(self, ctx: FeatureContext) -> Explanation:
        n_top, n_bg = len(ctx.top), max(len(ctx.background), 1)
        if n_top == 0:
            return Explanation("never fires on the studies seen", method=self.method)
        parts = []
        a_top = _rates([{k for k, v in s.attributes().items() if v} for s in ctx.top])
        a_bg = _rates([{k for k, v in s.attributes().items() if v} for s in ctx.background])
        present, absent = [], []
        for k in sorted(set(a_top) | set(a_bg)):
            rt, rb = a_top[k] / n_top, a_bg[k] / n_bg
            if rt >= self.min_rate and rt - rb >= self.min_lift:
                present.append((rt - rb, k, rt, rb))
            elif k.startswith("finding:") and rt <= 0.1 and rb - rt >= 2 * self.min_lift:
                absent.append((rb - rt, k))
        for _, k, rt, rb in sorted(present, reverse=True)[:3]:
            parts.append(f"{_name(k)} ({round(rt * n_top)}/{n_top} top studies vs {rb:.0%} overall)")
        if absent:
            parts.append("without " + " or ".join(_name(k) for _, k in sorted(absent, reverse=True)[:2]))
        p_top = _rates([ngrams(s.findings) for s in ctx.top])
        p_bg = _rates([ngrams(s.findings) for s in ctx.background])
        cands = sorted(
            (
                (p_top[g] / n_top - p_bg[g] / n_bg, len(g), g)
                for g in p_top
                if p_top[g] / n_top >= self.phrase_rate
            ),
            reverse=True,
        )
        phrases: list[str] = []
        for lift, _, g in cands:
            if lift < 0.25 or len(phrases) >= self.max_phrases:
                break
            if not any(g in p or p in g for p in phrases):
                phrases.append(g)
        if phrases:
            parts.append("report phrases " + ", ".join(f'"{p}"' for p in phrases))
        parts.append(self._where(ctx))
        return Explanation("; ".join(p for p in parts if p), method=self.method)

    @staticmethod
    def _where(ctx: FeatureContext) -> str:
        if not ctx.examples:
            return ""
        roles = Counter(e.role or "?" for e in ctx.examples)
        role, n = roles.most_common(1)[0]
        if role == "image":
            maps = [
                np.asarray(e.patch_map, dtype=np.float32)
                for e in ctx.examples
                if e.patch_map is not None and e.view == "frontal"
            ]
            maps = [m / m.max() for m in maps if m.max() > 0]
            views = Counter(e.view for e in ctx.examples if e.role == "image")
            where = f"peaks on {views.most_common(1)[0][0]} image patches"
            if maps:
                where += f", {region_words(np.mean(maps, 0))} of the frontal view"
            return where
        return f"peaks on {role} tokens"


def _name(attr: str) -> str:
    kind, _, v = attr.partition(":")
    if kind == "finding":
        return "no finding" if v == "no_finding" else v.replace("_", " ")
    return {"lateral": "a lateral view", "prior": "a prior study"}.get(v, f"{v} view")


@dataclass
class CallableExplainer:
    """Wraps ``fn(ctx) -> str`` (or ``-> Explanation``)."""

    fn: Callable[[FeatureContext], str | Explanation]
    method: str = "callable"

    def __call__(self, ctx: FeatureContext) -> Explanation:
        r = self.fn(ctx)
        return r if isinstance(r, Explanation) else Explanation(str(r), method=self.method)


LLM_SYSTEM = (
    "You explain features of a sparse autoencoder trained on the activations of a radiology "
    "report-generation model (chest X-rays + text). Answer with one short phrase."
)


@dataclass
class LLMExplainer:
    """Explains through an OpenAI-compatible chat endpoint (``client.chat(messages) -> str``)."""

    client: object
    max_examples: int = 10
    method: str = "openai-compatible"

    def prompt(self, ctx: FeatureContext) -> str:
        lines = [
            f"Feature {ctx.feature}. Studies where it is most active (tokens where it is active are marked "
            "<<like this>>; image patches are <view rRR cCC> on the patch grid, row 0 = top, column 0 = "
            "image left = patient right):"
        ]
        ex_by = {e.study_id: e for e in ctx.examples}
        for i, s in enumerate(ctx.top[: self.max_examples], 1):
            labels = ", ".join(k.replace("_", " ") for k, v in s.labels.items() if v == 1) or "none"
            line = f"{i}. labels: {labels}; views: {', '.join(s.views)}; report: {s.findings[:400]}"
            e = ex_by.get(s.study_id)
            if e is not None:
                line += f"\n   context: {highlight(e)}"
                if e.patch_map is not None:
                    line += f"\n   map peak region: {region_words(e.patch_map)}"
            lines.append(line)
        lines.append("What does this feature detect? Reply with one short phrase.")
        return "\n".join(lines)

    def __call__(self, ctx: FeatureContext) -> Explanation:
        text = self.client.chat(
            [{"role": "system", "content": LLM_SYSTEM}, {"role": "user", "content": self.prompt(ctx)}]
        )
        return Explanation(
            text.strip().splitlines()[0] if text.strip() else "",
            method=self.method,
            model=getattr(self.client, "model", None),
        )
