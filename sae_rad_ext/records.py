"""The data every publisher consumes: one :class:`FeatureRecord` per SAE latent, in an
:class:`InterpretationRun` folder.

This is the contract between interpretation (``sae_rad_ext.interpret``, which fills statistics,
examples, explanations, scores and concept alignment) and publishing (SAELens release, Neuronpedia
files, HTML dashboard). Everything is a plain dataclass that round-trips through JSON; large arrays
(decoder vectors) go to ``arrays.safetensors`` beside the JSON.

Folder layout written by :meth:`InterpretationRun.save`::

    run.json              # InterpretationRun.meta (+ format version)
    features.jsonl        # one FeatureRecord per line (decoder vectors left out)
    arrays.safetensors    # optional: "indices" [n] int64, "decoder_vectors" [n, d_in] float32
    <anything else>       # heatmaps, radiograph thumbnails, steering plots: paths in the records
                          # are relative to this folder (absolute paths also work)

:func:`records_from_sae` fills what the weights alone give (decoder norms, top/bottom logits through
``W_dec @ W_U``, decoder-cosine neighbours, Matryoshka level), so every publisher works before any
interpretation has run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_rad_ext.protocols import Unembedding

FORMAT_VERSION = 1


@dataclass
class FeatureExample:
    """One activating context of a feature: a study's token sequence with the feature's values."""

    study_id: str
    """Study id (``Study.study_id``) the context comes from."""
    tokens: list[str]
    """Readable token strings; image positions as ``TokenRoles.describe`` labels
    (``<frontal r12 c05>``), text as the tokenizer's strings. Usually a window around the peak."""
    values: list[float]
    """Feature activation at each token (same length as ``tokens``)."""
    qualifying_token_index: int
    """Index into ``tokens`` of the position that put this example in its group (usually the max)."""
    heatmap_png: str | None = None
    """Rendered radiograph thumbnail with the feature's map overlaid (PNG), if interpretation made one."""
    image_path: str | None = None
    """The radiograph itself (PNG/JPEG, or ``.npy`` greyscale array) for rendering an overlay here."""
    patch_map: list[list[float]] | None = None
    """Feature activation over the image's patch grid ``[rows][cols]`` (e.g. 37×37 for MAIRA-2)."""
    view: str | None = None
    """Which image ``patch_map`` belongs to: ``frontal``, ``lateral`` or ``prior``."""
    role: str | None = None
    """Role of the qualifying position (``image``, ``report``, ``indication``, ...)."""

    @property
    def max_value(self) -> float:
        return max(self.values) if self.values else 0.0


@dataclass
class QuantileGroup:
    """Examples sampled from one activation interval (Neuronpedia's non-top activation groups)."""

    bin_min: float
    """Lower edge of the interval (activation value)."""
    bin_max: float
    """Upper edge of the interval."""
    bin_contains: float
    """Fraction of the feature's non-zero activations that fall in this interval (0..1)."""
    examples: list[FeatureExample] = field(default_factory=list)
    """Examples whose qualifying activation lies in ``[bin_min, bin_max]``."""


@dataclass
class Explanation:
    """A natural-language description of a feature and how well it scored."""

    text: str
    """The explanation (plain text; publishers escape it)."""
    method: str = "unknown"
    """Explainer that produced it (``offline-enrichment``, ``openai-compatible``, ``human``...)."""
    model: str | None = None
    """Model that wrote it (LLM name), if any."""
    scores: dict[str, float] = field(default_factory=dict)
    """Scorer name → score, e.g. ``{"detection_f1": 0.91, "detection_auroc": 0.97,
    "detection_f1_shuffled": 0.52}``. The first entry is the one shown as "the" score."""

    @property
    def primary_score(self) -> float | None:
        return next(iter(self.scores.values()), None) if self.scores else None


@dataclass
class ConceptScore:
    """Alignment of a feature with one concept (a finding label or a planted mask)."""

    concept: str
    """Concept name (e.g. ``pleural_effusion``)."""
    f1: float | None = None
    """Best-threshold F1 of "feature fires" vs the concept label."""
    auroc: float | None = None
    """AUROC of the feature's per-study score vs the label."""
    precision: float | None = None
    recall: float | None = None
    iou: float | None = None
    """IoU of the thresholded activation map with the concept's mask (image concepts only)."""
    positions: str | None = None
    """Which positions the per-study score used (``image``, ``last_prompt``, ``generated``...)."""


@dataclass
class FeatureRecord:
    """Everything published about one SAE latent. Every field but ``index`` is optional."""

    index: int
    """Latent index in the SAE (0..d_sae-1)."""
    frac_nonzero: float | None = None
    """Fraction of selected token positions where the feature fires (> 0)."""
    max_activation: float | None = None
    """Largest activation seen."""
    mean_activation: float | None = None
    """Mean activation over the positions where it fires."""
    hist_edges: list[float] = field(default_factory=list)
    """Activation histogram bin edges (len = len(hist_counts) + 1), non-zero activations only."""
    hist_counts: list[float] = field(default_factory=list)
    """Activation histogram counts."""
    top_examples: list[FeatureExample] = field(default_factory=list)
    """Highest-activating contexts, best first."""
    quantile_groups: list[QuantileGroup] = field(default_factory=list)
    """Examples sampled per activation interval, lowest interval first."""
    role_frequency: dict[str, float] = field(default_factory=dict)
    """Firing frequency per role / view (``image``, ``image:frontal``, ``report``, ``prompt``...)."""
    explanations: list[Explanation] = field(default_factory=list)
    """Explanations, best first."""
    concepts: list[ConceptScore] = field(default_factory=list)
    """Concept alignment rows, best first (``concepts[0]`` is the feature's best concept)."""
    top_logits: list[tuple[str, float]] = field(default_factory=list)
    """Tokens the feature promotes most through ``W_dec @ W_U``, with the logit contribution."""
    bottom_logits: list[tuple[str, float]] = field(default_factory=list)
    """Tokens the feature suppresses most."""
    logit_hist_edges: list[float] = field(default_factory=list)
    """Histogram of the feature's whole ``W_dec @ W_U`` row: bin edges."""
    logit_hist_counts: list[float] = field(default_factory=list)
    """... and counts."""
    decoder_norm: float | None = None
    """‖W_dec[index]‖."""
    decoder_vector: list[float] | torch.Tensor | None = field(default=None, compare=False)
    """The decoder direction ``[d_in]`` (a list or a 1-D tensor, e.g. a view of ``W_dec``; kept in
    ``arrays.safetensors``, not in the JSON). Read it with :meth:`vector`."""
    decoder_neighbors: list[tuple[int, float]] = field(default_factory=list)
    """Most similar other latents by decoder cosine (index, cosine), best first."""
    correlated_features: list[tuple[int, float]] = field(default_factory=list)
    """Latents whose activations correlate with this one (index, Pearson), from interpretation."""
    level: int | None = None
    """Matryoshka group (prefix level) the latent belongs to, for nested SAEs."""
    steering_plot: str | None = None
    """Path of a steering figure (PNG) for this feature, if one was made."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Anything else a producer wants to carry (shown as key/value pairs on the feature page)."""

    # ---- convenience -------------------------------------------------------------------
    @property
    def best_concept(self) -> ConceptScore | None:
        return self.concepts[0] if self.concepts else None

    @property
    def explanation(self) -> Explanation | None:
        return self.explanations[0] if self.explanations else None

    def vector(self) -> list[float] | None:
        """The decoder direction as a list of floats (``None`` when not carried)."""
        v = self.decoder_vector
        if v is None:
            return None
        return v.detach().float().cpu().tolist() if isinstance(v, torch.Tensor) else [float(x) for x in v]

    def has_vector(self) -> bool:
        return self.decoder_vector is not None and len(self.decoder_vector) > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the decoder vector is left out: it lives in ``arrays.safetensors``)."""
        d = dataclasses.asdict(dataclasses.replace(self, decoder_vector=None))
        d.pop("decoder_vector")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureRecord:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown FeatureRecord fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        d["top_examples"] = [FeatureExample(**e) for e in d.get("top_examples", [])]
        d["quantile_groups"] = [
            QuantileGroup(**{**g, "examples": [FeatureExample(**e) for e in g.get("examples", [])]})
            for g in d.get("quantile_groups", [])
        ]
        d["explanations"] = [Explanation(**e) for e in d.get("explanations", [])]
        d["concepts"] = [ConceptScore(**c) for c in d.get("concepts", [])]
        for key in ("top_logits", "bottom_logits"):
            d[key] = [(str(t), float(v)) for t, v in d.get(key, [])]
        for key in ("decoder_neighbors", "correlated_features"):
            d[key] = [(int(i), float(v)) for i, v in d.get(key, [])]
        return cls(**d)


@dataclass
class InterpretationRun:
    """A folder-backed collection of :class:`FeatureRecord` plus run-level metadata."""

    records: list[FeatureRecord]
    """One record per published feature (any subset of the SAE's latents), sorted by index."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Run facts: ``model_name``, ``hook_name``, ``d_sae``, ``dataset``, ``positions`` (selection),
    ``n_studies``, ``n_tokens``, ``context_size``, ``explainer``, ``scorers``, ``metrics`` ..."""
    root: Path | None = None
    """Folder the run was loaded from / saved to; relative paths in records resolve against it."""

    def __post_init__(self) -> None:
        self.records = sorted(self.records, key=lambda r: r.index)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def by_index(self) -> dict[int, FeatureRecord]:
        return {r.index: r for r in self.records}

    def resolve(self, path: str | None) -> Path | None:
        """Absolute path of a file a record refers to (``None`` stays ``None``)."""
        if path is None:
            return None
        p = Path(path)
        if not p.is_absolute() and self.root is not None:
            p = self.root / p
        return p

    def save(self, path: str | Path) -> Path:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / "run.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **self.meta}, indent=2))
        with open(root / "features.jsonl", "w") as f:
            for r in self.records:
                f.write(json.dumps(r.to_dict()) + "\n")
        with_vec = [r for r in self.records if r.has_vector()]
        if with_vec:
            from safetensors.torch import save_file

            save_file(
                {
                    "indices": torch.tensor([r.index for r in with_vec], dtype=torch.int64),
                    "decoder_vectors": torch.stack(
                        [torch.as_tensor(r.decoder_vector, dtype=torch.float32) for r in with_vec]
                    ).contiguous(),
                },
                str(root / "arrays.safetensors"),
            )
        self.root = root
        return root

    @classmethod
    def load(cls, path: str | Path) -> InterpretationRun:
        root = Path(path)
        if not (root / "features.jsonl").is_file():
            raise FileNotFoundError(
                f"{root} is not an interpretation run folder: expected {root / 'features.jsonl'} "
                "(written by InterpretationRun.save / `sae-rad interpret`)"
            )
        meta = json.loads((root / "run.json").read_text()) if (root / "run.json").is_file() else {}
        meta.pop("format_version", None)
        records = []
        with open(root / "features.jsonl") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(FeatureRecord.from_dict(json.loads(line)))
                    except (ValueError, TypeError) as e:
                        raise ValueError(f"{root / 'features.jsonl'} line {n}: {e}") from e
        arrays = root / "arrays.safetensors"
        if arrays.is_file():
            from safetensors.torch import load_file

            t = load_file(str(arrays))
            by = {r.index: r for r in records}
            for i, vec in zip(t["indices"].tolist(), t["decoder_vectors"], strict=True):
                if i in by:
                    by[i].decoder_vector = vec
        return cls(records=records, meta=meta, root=root)

    def merge(self, other: InterpretationRun) -> InterpretationRun:
        """Fill each record's empty fields from ``other`` (same index); keeps this run's values."""
        theirs = other.by_index()
        out = []
        for r in self.records:
            o = theirs.get(r.index)
            if o is not None:
                for f in dataclasses.fields(FeatureRecord):
                    mine = getattr(r, f.name)
                    if mine is None or (isinstance(mine, list | dict) and not mine):
                        setattr(r, f.name, getattr(o, f.name))
            out.append(r)
        mine_idx = {r.index for r in self.records}
        out += [o for i, o in theirs.items() if i not in mine_idx]
        return InterpretationRun(out, {**other.meta, **self.meta}, self.root or other.root)


# ---- weights-only records ---------------------------------------------------------------------
def sae_group_sizes(sae: SAE[Any]) -> list[int] | None:
    """Matryoshka group sizes of an SAE, if it has them (our cfg field, or SAELens metadata)."""
    cfg = sae.cfg
    # configs differ by architecture: ours has group_sizes, others may carry widths in metadata only
    for name in ("group_sizes", "matryoshka_group_sizes"):
        v = getattr(cfg, name, None)
        if v:
            return [int(x) for x in v]
    meta = getattr(cfg, "metadata", None)
    details = meta.get("training_architecture_details") if meta is not None else None
    widths = (details or {}).get("matryoshka_widths") if isinstance(details, dict) else None
    if widths:
        w = [int(x) for x in widths]
        return [w[0]] + [b - a for a, b in zip(w, w[1:], strict=False)]
    return None


def _token_strings(model: Unembedding, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    if tok is None:
        return [f"<tok {i}>" for i in ids]
    if hasattr(tok, "convert_ids_to_tokens"):
        out = []
        for i in ids:
            s = tok.convert_ids_to_tokens(int(i))
            s = tok.decode([int(i)]) if s is None else s
            out.append(str(s).replace("▁", " ").replace("Ġ", " "))
        return out
    return [tok.decode([int(i)]) for i in ids]


@torch.no_grad()
def records_from_sae(
    sae: SAE[Any],
    model: Unembedding | None = None,
    features: list[int] | None = None,
    *,
    n_logits: int = 10,
    n_neighbors: int = 10,
    logit_hist_bins: int = 24,
    firing_rates: torch.Tensor | None = None,
    with_vectors: bool = False,
    chunk: int = 1024,
) -> InterpretationRun:
    """Records filled from the SAE's weights alone (and the model's unembedding when given).

    ``model`` (:class:`~sae_rad_ext.protocols.Unembedding`: ``HookedMaira2``, HookedTransformer) gives
    ``W_U [d_model, d_vocab]`` and a ``tokenizer`` for token strings (``None``: ``"<tok i>"``). ``firing_rates`` ``[d_sae]`` (e.g. ``10 ** sparsity``) fills
    ``frac_nonzero``. ``features`` restricts to a subset of latents (default: all).
    """
    W_dec = sae.W_dec.detach().float().cpu()  # [d_sae, d_in]
    d_sae = W_dec.shape[0]
    idx = list(range(d_sae)) if features is None else [int(i) for i in features]
    bad = [i for i in idx if not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"feature indices {bad[:5]} out of range for an SAE with d_sae={d_sae}")
    norms = W_dec.norm(dim=-1)
    unit = W_dec / norms.clamp(min=1e-8)[:, None]
    groups = sae_group_sizes(sae)
    level_of = None
    if groups:
        level_of = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(groups))
    W_U = None
    if model is not None:
        W_U = getattr(model, "W_U", None)
        if W_U is None:
            raise ValueError(
                f"model {type(model).__name__} has no W_U [d_model, d_vocab]; pass a HookedTransformer-like "
                "model (or model=None for records without logits)"
            )
        W_U = W_U.detach().float().cpu()
        if W_U.shape[0] != W_dec.shape[1]:
            raise ValueError(f"W_U is {tuple(W_U.shape)} but the SAE's d_in is {W_dec.shape[1]}")
    records: list[FeatureRecord] = []
    for start in range(0, len(idx), chunk):
        sel = torch.tensor(idx[start : start + chunk])
        k = min(n_neighbors, d_sae - 1)
        if k > 0:
            cos = unit[sel] @ unit.T  # [c, d_sae]
            cos[torch.arange(len(sel)), sel] = -float("inf")
            nv, ni = cos.topk(k, dim=-1)
        logits = W_dec[sel] @ W_U if W_U is not None else None  # [c, d_vocab]
        for row, i in enumerate(sel.tolist()):
            r = FeatureRecord(index=i, decoder_norm=float(norms[i]))
            if k > 0:
                r.decoder_neighbors = list(zip(ni[row].tolist(), [round(v, 6) for v in nv[row].tolist()], strict=True))
            if level_of is not None:
                r.level = int(level_of[i])
            if firing_rates is not None:
                r.frac_nonzero = float(firing_rates[i])
            if with_vectors:
                r.decoder_vector = W_dec[i]  # a view: no copy per record
            if logits is not None:
                lg = logits[row]
                n = min(n_logits, lg.numel())
                tv, ti = lg.topk(n)
                bv, bi = (-lg).topk(n)
                r.top_logits = list(zip(_token_strings(model, ti.tolist()), tv.tolist(), strict=True))
                r.bottom_logits = list(zip(_token_strings(model, bi.tolist()), (-bv).tolist(), strict=True))
                counts, edges = np.histogram(lg.numpy(), bins=logit_hist_bins)
                r.logit_hist_edges, r.logit_hist_counts = edges.tolist(), counts.astype(float).tolist()
            records.append(r)
    meta = sae_meta(sae)
    return InterpretationRun(records, meta)


def sae_meta(sae: SAE[Any]) -> dict[str, Any]:
    """Run-level facts read from an SAE's config (model, hook, d_in, d_sae, architecture, groups)."""
    cfg = sae.cfg
    md = cfg.metadata
    meta: dict[str, Any] = {
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "architecture": cfg.architecture(),
    }
    for key in ("model_name", "hook_name", "context_size", "dataset_path", "neuronpedia_id", "positions"):
        v = md.get(key) if hasattr(md, "get") else None
        if v is not None:
            meta[key] = v
    groups = sae_group_sizes(sae)
    if groups:
        meta["group_sizes"] = groups
    return meta
