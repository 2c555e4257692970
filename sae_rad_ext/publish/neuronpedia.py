"""Neuronpedia files: SAEDashboard-style dashboard batches, the bulk-import export, steering vectors.

All written from an :class:`~sae_rad_ext.records.InterpretationRun`::

    <out>/dashboard/batch-{N}.json, run_settings.json, skipped_indexes.json   # SAEDashboard's schema
    <out>/export/{model}/{layer}-{set}/release.jsonl, model.jsonl, sourceset.jsonl, source.jsonl,
        features/batch-N.jsonl.gz, activations/batch-N.jsonl.gz, explanations/batch-N.jsonl.gz,
        explanation_scores/batch-N.jsonl.gz                                   # bulk import (camelCase)
    <out>/vectors/vector-new.jsonl       # one `vector/new` payload per feature (steering)

Image positions are already readable tokens in the records (``<frontal r12 c05>``), so Neuronpedia
shows them as text tokens. Weights are referenced (``hfRepoId``/``saelensRelease``), never uploaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sae_rad_ext.records import FeatureExample, FeatureRecord, InterpretationRun
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.files import atomic_write_bytes

MAX_FEATURES_PER_BATCH = 128
"""Neuronpedia's (and the ``neuronpedia`` package's) limit per uploaded batch."""
STEERABLE_HOOK_TYPES = ("hook_resid_pre", "hook_resid_post")
"""Hook types Neuronpedia's ``vector/new`` accepts."""


@dataclass
class NeuronpediaSettings:
    """Where the features go on Neuronpedia and how the dashboards were made."""

    model_id: str
    """Neuronpedia model id (e.g. ``maira-2``)."""
    layer: int
    """Layer number of the hook (``blocks.15.hook_resid_post`` → 15)."""
    sae_set: str
    """Source-set name (e.g. ``maira2-res-mtk-16k``); the source id is ``{layer}-{sae_set}``."""
    hook_name: str = ""
    sae_id_suffix: str | None = None
    dataset: str = ""
    """Name/path of the studies the examples come from."""
    n_prompts_total: int = 0
    """Number of studies (contexts) the statistics ran over."""
    n_tokens_in_prompt: int = 0
    """Context length (tokens per study sequence)."""
    creator_name: str = "sae-rad-ext"
    creator_id: str = "sae-rad-ext"
    release_name: str = ""
    release_title: str = ""
    url: str = ""
    hf_repo_id: str | None = None
    hf_folder_id: str | None = None
    saelens_release: str | None = None
    saelens_sae_id: str | None = None
    log_sparsity_threshold: float = -math.inf
    """Features with log10(frac_nonzero) ≤ this (or never firing) go to ``skipped_indexes.json``."""
    features_per_batch: int = MAX_FEATURES_PER_BATCH
    include_vectors: bool = False
    """Put each decoder vector into the dashboard ``vector`` field / bulk ``vector`` column."""

    @property
    def source_id(self) -> str:
        return f"{self.layer}-{self.sae_set}" + (f"__{self.sae_id_suffix}" if self.sae_id_suffix else "")

    @property
    def hook_type(self) -> str:
        return re.sub(r"^blocks\.\d+\.", "", self.hook_name)

    @classmethod
    def from_run(cls, run: InterpretationRun, **overrides: Any) -> NeuronpediaSettings:
        """Settings derived from the run's metadata (``neuronpedia_id`` = ``model/layer-set`` wins)."""
        m = run.meta
        hook = overrides.get("hook_name") or m.get("hook_name") or ""
        layer_match = re.match(r"blocks\.(\d+)\.", hook)
        model_id = _slug(m.get("model_name") or "model")
        layer = int(layer_match.group(1)) if layer_match else 0
        d_sae = m.get("d_sae") or len(run)
        sae_set = f"res-{max(1, round(d_sae / 1024))}k" if d_sae >= 1024 else f"res-{d_sae}"
        np_id = m.get("neuronpedia_id")
        if np_id and "/" in np_id:
            model_id, source = np_id.split("/", 1)
            sm = re.match(r"(\d+)-(.+)", source)
            if sm:
                layer, sae_set = int(sm.group(1)), sm.group(2)
        base: dict[str, Any] = {
            "model_id": model_id,
            "layer": layer,
            "sae_set": sae_set,
            "hook_name": hook,
            "dataset": str(m.get("dataset") or m.get("dataset_path") or ""),
            "n_prompts_total": int(m.get("n_studies") or 0),
            "n_tokens_in_prompt": int(m.get("context_size") or 0),
            "release_name": m.get("release") or sae_set,
            "release_title": m.get("release_title") or f"{model_id} {sae_set}",
            "saelens_release": m.get("release"),
            "saelens_sae_id": m.get("sae_id"),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9-_]+", "-", s.lower()).strip("-") or "model"


def _num(v: Any) -> float:
    """JSON-safe float (NaN/inf → 0, as SAEDashboard's NaN replacement does)."""
    v = float(v)
    return v if math.isfinite(v) else 0.0


def _centers(edges: list[float]) -> list[float]:
    return [_num((a + b) / 2) for a, b in zip(edges, edges[1:], strict=False)]


def _activation(ex: FeatureExample, bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    if len(ex.tokens) != len(ex.values):
        raise ValueError(f"example of study {ex.study_id}: {len(ex.tokens)} tokens but {len(ex.values)} values")
    return {
        "bin_min": _num(bin_min),
        "bin_max": _num(bin_max),
        "bin_contains": _num(bin_contains),
        "tokens": [str(t) for t in ex.tokens],
        "values": [_num(v) for v in ex.values],
        "qualifying_token_index": int(ex.qualifying_token_index),
    }


def _alignment(vec: list[float] | None, k: int = 10) -> tuple[list[int], list[float], list[float]]:
    if not vec:
        return [], [], []
    total = sum(abs(v) for v in vec) or 1.0
    top = sorted(range(len(vec)), key=lambda i: -abs(vec[i]))[:k]
    return top, [_num(vec[i]) for i in top], [_num(abs(vec[i]) / total) for i in top]


def dashboard_feature(r: FeatureRecord, s: NeuronpediaSettings) -> dict[str, Any]:
    """One feature in SAEDashboard's ``batch-N.json`` schema (field order as SAEDashboard writes it)."""
    vec = r.vector() if r.has_vector() else None
    al_i, al_v, al_l1 = _alignment(vec)
    acts = []
    top_max = r.max_activation if r.max_activation is not None else max((e.max_value for e in r.top_examples), default=0)
    for ex in r.top_examples:
        acts.append(_activation(ex, -1, top_max, -1))
    for g in r.quantile_groups:
        acts += [_activation(ex, g.bin_min, g.bin_max, g.bin_contains) for ex in g.examples]
    return {
        "feature_index": int(r.index),
        "neuron_alignment_indices": al_i,
        "neuron_alignment_values": al_v,
        "neuron_alignment_l1": al_l1,
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [int(i) for i, _ in r.correlated_features],
        "correlated_features_l1": [],
        "correlated_features_pearson": [_num(v) for _, v in r.correlated_features],
        "neg_str": [t for t, _ in r.bottom_logits],
        "neg_values": [_num(v) for _, v in r.bottom_logits],
        "pos_str": [t for t, _ in r.top_logits],
        "pos_values": [_num(v) for _, v in r.top_logits],
        "frac_nonzero": _num(r.frac_nonzero or 0.0),
        "freq_hist_data_bar_values": _centers(r.hist_edges),
        "freq_hist_data_bar_heights": [_num(c) for c in r.hist_counts],
        "logits_hist_data_bar_heights": [_num(c) for c in r.logit_hist_counts],
        "logits_hist_data_bar_values": _centers(r.logit_hist_edges),
        "n_prompts_total": int(s.n_prompts_total),
        "n_tokens_in_prompt": int(s.n_tokens_in_prompt),
        "dataset": s.dataset,
        "decoder_weights_dist": [],
        "vector": [_num(v) for v in vec] if (s.include_vectors and vec) else [],
        "activations": acts,
    }


def _is_skipped(r: FeatureRecord, s: NeuronpediaSettings) -> bool:
    if r.frac_nonzero is None:
        return False  # unknown (weights-only record): keep
    if r.frac_nonzero <= 0:
        return True
    return math.log10(r.frac_nonzero) <= s.log_sparsity_threshold


def _batches(items: list[Any], n: int) -> list[list[Any]]:
    if not 1 <= n <= MAX_FEATURES_PER_BATCH:
        raise ValueError(f"features_per_batch must be in 1..{MAX_FEATURES_PER_BATCH}; got {n}")
    return list(batched(items, n))


def _dump(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False, ensure_ascii=False)


def write_dashboard_batches(run: InterpretationRun, out_dir: str | Path, settings: NeuronpediaSettings) -> list[Path]:
    """Write ``batch-{N}.json`` (≤ ``features_per_batch`` features), ``run_settings.json`` and
    ``skipped_indexes.json`` into ``out_dir``; returns the batch paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept = [r for r in run.records if not _is_skipped(r, settings)]
    skipped = [r.index for r in run.records if _is_skipped(r, settings)]
    if run.meta.get("d_sae"):
        listed = {r.index for r in run.records}
        skipped += [i for i in range(int(run.meta["d_sae"])) if i not in listed]
    paths = []
    for n, batch in enumerate(_batches(kept, settings.features_per_batch)):
        doc = {
            "model_id": settings.model_id,
            "layer": settings.layer,
            "sae_set": settings.sae_set,
            "sae_id_suffix": settings.sae_id_suffix,
            "features": [dashboard_feature(r, settings) for r in batch],
        }
        p = out / f"batch-{n}.json"
        p.write_text(_dump(doc))
        paths.append(p)
    run_settings = {
        "sae_set": settings.sae_set,
        "sae_path": settings.saelens_sae_id or settings.hook_name,
        "np_set_name": settings.sae_set,
        "np_sae_id_suffix": settings.sae_id_suffix,
        "from_local_sae": settings.saelens_release is None,
        "huggingface_dataset_path": settings.dataset,
        "outputs_dir": str(out),
        "sparsity_threshold": settings.log_sparsity_threshold if math.isfinite(settings.log_sparsity_threshold) else 1,
        "n_prompts_total": settings.n_prompts_total,
        "n_tokens_in_prompt": settings.n_tokens_in_prompt,
        "n_features_at_a_time": settings.features_per_batch,
        "start_batch": 0,
        "end_batch": max(len(paths) - 1, 0),
        "use_wandb": False,
        "shuffle_tokens": False,
        "prefix_tokens": None,
        "suffix_tokens": None,
        "model_id": settings.model_id,
        "layer": settings.layer,
        "hook_name": settings.hook_name,
        "positions": run.meta.get("positions"),
        "generator": "sae-rad-ext",
    }
    (out / "run_settings.json").write_text(json.dumps(run_settings, indent=4))
    (out / "skipped_indexes.json").write_text(
        _dump(
            {
                "model_id": settings.model_id,
                "layer": str(settings.layer),
                "sae_set": settings.sae_set,
                "log_sparsity": settings.log_sparsity_threshold if math.isfinite(settings.log_sparsity_threshold) else 1,
                "skipped_indexes": sorted(set(skipped)),
            }
        )
    )
    return paths


# ---- bulk import ---------------------------------------------------------------------------------
def _cuid(*parts: Any) -> str:
    return "c" + hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()[:24]


def _write_jsonl(path: Path, rows: list[dict[str, Any]], gz: bool = False) -> None:
    data = "".join(_dump(r) + "\n" for r in rows).encode()
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if gz else data)


def write_bulk_export(
    run: InterpretationRun, out_dir: str | Path, settings: NeuronpediaSettings, created_at: str | None = None
) -> Path:
    """Write Neuronpedia's bulk-import layout under ``out_dir/{model}/{source}``; returns that folder."""
    s = settings
    now = created_at or datetime.now(timezone.utc).isoformat()
    src = s.source_id
    root = Path(out_dir) / s.model_id / src
    root.mkdir(parents=True, exist_ok=True)
    release = {
        "name": s.release_name or s.sae_set,
        "description": s.release_title or s.sae_set,
        "descriptionShort": s.release_title or s.sae_set,
        "creatorName": s.creator_name,
        "creatorNameShort": s.creator_name,
        "creatorId": s.creator_id,
        "creatorEmail": None,
        "visibility": "PUBLIC",
        "isNewUi": False,
        "featured": False,
        "urls": [s.url] if s.url else [],
        "defaultSourceSetName": s.sae_set,
        "defaultSourceId": src,
        "defaultUmapSourceIds": [],
        "createdAt": now,
    }
    d_in = run.meta.get("d_in")
    model = {
        "id": s.model_id,
        "instruct": False,
        "creatorId": s.creator_id,
        "displayNameShort": s.model_id,
        "displayName": run.meta.get("model_name") or s.model_id,
        "tlensId": None,
        "dimension": int(d_in) if d_in else None,
        "visibility": "PUBLIC",
        "defaultSourceSetName": s.sae_set,
        "defaultSourceId": src,
        "inferenceEnabled": False,
        "layers": int(run.meta.get("n_layers") or s.layer + 1),
        "neuronsPerLayer": int(d_in or 0),
        "createdAt": now,
        "owner": s.creator_name,
        "updatedAt": now,
        "website": s.url or None,
    }
    sourceset = {
        "modelId": s.model_id,
        "name": s.sae_set,
        "creatorId": s.creator_id,
        "hasDashboards": True,
        "visibility": "PUBLIC",
        "description": s.release_title or s.sae_set,
        "type": "",
        "creatorName": s.creator_name,
        "urls": [s.url] if s.url else [],
        "creatorEmail": None,
        "releaseName": s.release_name or s.sae_set,
        "defaultOfModelId": None,
        "defaultRange": 1,
        "defaultShowBreaks": True,
        "showDfa": False,
        "showCorrelated": any(r.correlated_features for r in run.records),
        "showHeadAttribution": False,
        "showUmap": False,
        "createdAt": now,
    }
    source = {
        "id": src,
        "modelId": s.model_id,
        "setName": s.sae_set,
        "creatorId": s.creator_id,
        "hasDashboards": True,
        "inferenceEnabled": False,
        "inferenceHosts": [],
        "saelensConfig": None,
        "saelensRelease": s.saelens_release,
        "saelensSaeId": s.saelens_sae_id,
        "hfRepoId": s.hf_repo_id,
        "hfFolderId": s.hf_folder_id,
        "visibility": "PUBLIC",
        "defaultOfModelId": None,
        "hasUmap": False,
        "hasUmapLogSparsity": False,
        "hasUmapClusters": False,
        "num_prompts": s.n_prompts_total or None,
        "num_tokens_in_prompt": s.n_tokens_in_prompt or None,
        "dataset": s.dataset or None,
        "notes": run.meta.get("positions") and f"positions: {run.meta['positions']}",
        "createdAt": now,
    }
    for name, row in (("release", release), ("model", model), ("sourceset", sourceset), ("source", source)):
        _write_jsonl(root / f"{name}.jsonl", [row])
    kept = [r for r in run.records if not _is_skipped(r, s)]
    for n, batch in enumerate(_batches(kept, s.features_per_batch)):
        feats, acts, expls, scores = [], [], [], []
        for r in batch:
            d = dashboard_feature(r, s)
            max_act = max([max(a["values"], default=0.0) for a in d["activations"]] + [0.0])
            has_vec = bool(d["vector"])
            feats.append(
                {
                    "modelId": s.model_id,
                    "layer": src,
                    "index": str(r.index),
                    "creatorId": s.creator_id,
                    "createdAt": now,
                    "maxActApprox": _num(r.max_activation if r.max_activation is not None else max_act),
                    "hasVector": has_vec,
                    "vector": d["vector"],
                    "vectorLabel": None,
                    "vectorDefaultSteerStrength": _num(max_act) if has_vec else 10,
                    "hookName": s.hook_name or None,
                    "topkCosSimIndices": [int(i) for i, _ in r.decoder_neighbors],
                    "topkCosSimValues": [_num(v) for _, v in r.decoder_neighbors],
                    **{k: v for k, v in d.items() if k not in ("feature_index", "vector", "activations", "n_prompts_total", "n_tokens_in_prompt", "dataset")},
                    "sourceSetName": s.sae_set,
                }
            )
            for j, a in enumerate(d["activations"]):
                vals = a["values"]
                mx = max(vals, default=0.0)
                acts.append(
                    {
                        "id": _cuid(s.model_id, src, r.index, "act", j),
                        "tokens": a["tokens"],
                        "index": str(r.index),
                        "layer": src,
                        "modelId": s.model_id,
                        "maxValue": mx,
                        "maxValueTokenIndex": vals.index(mx) if vals else 0,
                        "minValue": min(vals, default=0.0),
                        "values": vals,
                        "creatorId": s.creator_id,
                        "dataSource": s.dataset or None,
                        "dataIndex": _example_at(r, j).study_id,
                        "dfaValues": [],
                        "dfaTargetIndex": None,
                        "dfaMaxValue": None,
                        "createdAt": now,
                        "lossValues": [],
                        "logitContributions": None,
                        "binMin": a["bin_min"],
                        "binMax": a["bin_max"],
                        "binContains": a["bin_contains"],
                        "qualifyingTokenIndex": a["qualifying_token_index"],
                    }
                )
            for j, e in enumerate(r.explanations):
                eid = _cuid(s.model_id, src, r.index, "expl", j)
                expls.append(
                    {
                        "id": eid,
                        "modelId": s.model_id,
                        "layer": src,
                        "index": str(r.index),
                        "description": e.text,
                        "authorId": s.creator_id,
                        "triggeredByUserId": None,
                        "notes": json.dumps(e.scores, allow_nan=False) if e.scores else None,
                        "scoreV1": _num(e.primary_score or 0.0),
                        "scoreV2": None,
                        "typeName": e.method,
                        "explanationModelName": e.model,
                        "createdAt": now,
                        "updatedAt": now,
                    }
                )
                for name, value in e.scores.items():
                    scores.append(
                        {
                            "id": _cuid(eid, name),
                            "initiatedByUserId": s.creator_id,
                            "value": _num(value),
                            "explanationId": eid,
                            "explanationScoreTypeName": name,
                            "explanationScoreModelName": e.model or e.method,
                            "jsonDetails": "",
                            "createdAt": now,
                        }
                    )
        _write_jsonl(root / "features" / f"batch-{n}.jsonl.gz", feats, gz=True)
        _write_jsonl(root / "activations" / f"batch-{n}.jsonl.gz", acts, gz=True)
        if expls:
            _write_jsonl(root / "explanations" / f"batch-{n}.jsonl.gz", expls, gz=True)
            _write_jsonl(root / "explanation_scores" / f"batch-{n}.jsonl.gz", scores, gz=True)
    return root


def _example_at(r: FeatureRecord, j: int) -> FeatureExample:
    flat = list(r.top_examples) + [e for g in r.quantile_groups for e in g.examples]
    return flat[j]


# ---- steering vectors ----------------------------------------------------------------------------
def steering_vector_payloads(
    run: InterpretationRun, settings: NeuronpediaSettings, features: list[int] | None = None
) -> list[dict[str, Any]]:
    """``vector/new`` payloads (the ``neuronpedia`` package's field names) for features with a decoder
    vector; the default steer strength is the feature's max activation (10 when unknown)."""
    if settings.hook_type not in STEERABLE_HOOK_TYPES:
        raise ValueError(
            f"Neuronpedia steering vectors need hookType in {STEERABLE_HOOK_TYPES}; this SAE's hook is "
            f"{settings.hook_name!r}"
        )
    wanted = None if features is None else set(features)
    out = []
    for r in run.records:
        if (wanted is not None and r.index not in wanted) or not r.has_vector():
            continue
        label = r.explanation.text if r.explanation else f"{settings.source_id} feature {r.index}"
        out.append(
            {
                "modelId": settings.model_id,
                "layerNumber": int(settings.layer),
                "hookType": settings.hook_type,
                "vector": [_num(v) for v in r.vector()],
                "vectorDefaultSteerStrength": _num(r.max_activation) if r.max_activation else 10,
                "vectorLabel": label[:200],
            }
        )
    if wanted is not None and not out:
        raise ValueError(f"none of features {sorted(wanted)[:5]} has a decoder vector (records_from_sae(with_vectors=True))")
    return out


def write_neuronpedia(
    run: InterpretationRun, out_dir: str | Path, settings: NeuronpediaSettings | None = None, created_at: str | None = None
) -> dict[str, Any]:
    """All Neuronpedia files under ``out_dir`` (dashboard/, export/, vectors/); returns their paths."""
    s = settings or NeuronpediaSettings.from_run(run)
    out = Path(out_dir)
    batches = write_dashboard_batches(run, out / "dashboard", s)
    export = write_bulk_export(run, out / "export", s, created_at=created_at)
    vec_path = None
    if s.hook_type in STEERABLE_HOOK_TYPES and any(r.has_vector() for r in run.records):
        vec_path = out / "vectors" / "vector-new.jsonl"
        _write_jsonl(vec_path, steering_vector_payloads(run, s))
    sd = asdict(s)
    if not math.isfinite(sd["log_sparsity_threshold"]):
        sd["log_sparsity_threshold"] = None
    (out / "settings.json").write_text(json.dumps(sd, indent=2, allow_nan=False))
    return {"dashboard": batches, "export": export, "vectors": vec_path, "settings": s}


__all__ = [
    "MAX_FEATURES_PER_BATCH",
    "NeuronpediaSettings",
    "dashboard_feature",
    "steering_vector_payloads",
    "write_bulk_export",
    "write_dashboard_batches",
    "write_neuronpedia",
]
