"""Knowledge maps: where radiological knowledge lives in a hooked MAIRA-2 / LLaVA, and which layer to read.

    from sae_rad_ext.maps.knowledge_maps import MapConfig, build_knowledge_maps
    maps = build_knowledge_maps(model, studies, "runs/maps", MapConfig(techniques=("probe", "patch")))
    print(maps.recommendation.summary())

Five techniques (after "Medical Interpretability and Knowledge Maps of LLMs"), each in its own module:

- ``probe`` (:mod:`.probes`): held-out linear probes per finding × layer × pooling (image tokens per
  view, report tokens, last prompt token);
- ``umap`` (:mod:`.umap_maps`): UMAP of pooled activations at chosen layers, coloured by finding, view,
  longitudinal change;
- ``lesion`` (:mod:`.lesion`): skip / mean-ablate blocks and windows during generation → report F1 and
  reference log-likelihood drops;
- ``patch`` (:mod:`.patching`): phantom pairs differing in one finding, residual patching at (layer, role);
- ``saliency`` (:mod:`.saliency`): weight-gradient norms of each finding's report sentences.

:func:`recommend_layer` combines them (rule in its docstring). Everything lands in ``out/``:
``knowledge_maps.json`` (every number), PNGs, ``recommendation.txt``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.evaluation.splits import holdout_mask
from sae_rad_ext.maps.common import (
    check_layers,
    layer_label,
    study_targets,
)
from sae_rad_ext.maps.recommend import Recommendation, recommend_layer
from sae_rad_ext.util.files import write_json
from sae_rad_ext.util.progress import ProgressCallback

__all__ = [
    "TECHNIQUES",
    "KnowledgeMaps",
    "MapConfig",
    "Recommendation",
    "build_knowledge_maps",
    "recommend_layer",
]

TECHNIQUES = ("probe", "umap", "lesion", "patch", "saliency")


@dataclass
class MapConfig:
    """What to map and how much work to spend on it."""

    layers: Sequence[int] | None = None
    """Layers to map (−1 = input of block 0, else ``blocks.L.hook_resid_post``); None → all, with −1."""
    techniques: Sequence[str] = ("probe", "lesion", "patch", "saliency")
    """Any of :data:`TECHNIQUES` (``umap`` needs ``umap-learn``)."""
    batch_size: int = 16
    test_fraction: float = 0.3
    """Held-out share of patients for probes."""
    target_source: str = "auto"
    """Probe targets: ``labels`` (planted truth / CheXpert labels), ``report`` (labeler) or ``auto``."""
    seed: int = 0
    findings: Sequence[str] = FINDINGS
    """Findings patched and saliency-mapped (probes and lesioning always score all of them)."""
    n_pairs: int = 8
    """Phantom pairs per finding for patching."""
    pair_seed: int = 9
    """Phantom stream of the pairs (keep it apart from training data)."""
    pair_image_size: int | None = None
    """Phantom size for the pairs; None → the model's image size."""
    pair_lateral_prob: float = 0.5
    """Share of pairs with a lateral view (0 for a model trained on frontal images only)."""
    pair_prior_prob: float = 0.3
    """Share of pairs with a prior study."""
    patch_roles: Sequence[str] = ("image:frontal", "image:lateral", "image:prior", "prompt", "report")
    lesion_modes: Sequence[str] = ("skip", "mean")
    lesion_windows: Sequence[int] = (2,)
    lesion_studies: int = 48
    """Studies used for lesioning (generation is the slow part)."""
    max_new_tokens: int | None = None
    """Generation length for lesioning; None → longest reference report + 8."""
    saliency_studies: int = 32
    umap_layers: Sequence[int] | None = None
    """None → first, middle and last mapped layer."""
    umap_pools: Sequence[str] = ("image:frontal", "last_prompt", "report")

    def __post_init__(self) -> None:
        bad = sorted(set(self.techniques) - set(TECHNIQUES))
        if bad:
            raise ValueError(f"unknown technique(s) {bad}; expected some of {list(TECHNIQUES)}")
        bad = sorted(set(self.findings) - set(FINDINGS))
        if bad or not self.findings:
            raise ValueError(f"unknown or no finding(s) {bad}; expected some of {list(FINDINGS)}")


@dataclass
class KnowledgeMaps:
    """All maps of one run (``to_dict`` is what ``knowledge_maps.json`` holds)."""

    config: dict[str, Any]
    model_name: str
    n_layers: int
    layers: list[int]
    n_studies: int
    results: dict[str, Any]
    """technique → its result dict (``ProbeCurves.to_dict()``, …)."""
    recommendation: Recommendation
    files: list[str]
    """PNG / text files written (relative to ``out``)."""
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "model_name": self.model_name,
            "n_layers": self.n_layers,
            "layers": self.layers,
            "n_studies": self.n_studies,
            "results": self.results,
            "recommendation": asdict(self.recommendation),
            "files": self.files,
            "seconds": self.seconds,
        }


def build_knowledge_maps(
    model: HookedMaira2,
    studies: Sequence[Study],
    out: str | Path,
    cfg: MapConfig | None = None,
    *,
    processor: Maira2Processor | None = None,
    progress: ProgressCallback | None = None,
) -> KnowledgeMaps:
    """Compute the configured maps on ``studies`` (pairs for patching come from phantoms), write them to ``out``.

    ``progress`` gets each technique's events, in order: ``"activations"`` (studies) and ``"probes"``
    (pool × finding) for probe/umap, ``"patching"``, ``"lesioning"``, ``"saliency"``.
    """
    from sae_rad_ext.activations.extract import default_processor
    from sae_rad_ext.maps import plots as map_plots

    cfg = cfg or MapConfig()
    studies = list(studies)
    if not studies:
        raise ValueError("build_knowledge_maps got no studies; pass a study source with at least ~50 studies")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proc = processor or default_processor(model)
    n = model.cfg.n_layers
    layers = check_layers(cfg.layers if cfg.layers is not None else range(-1, n), n)
    targets = study_targets(studies, cfg.target_source)
    results: dict[str, Any] = {
        "targets": {
            "prevalence": dict(zip(FINDINGS, targets.mean(0).tolist(), strict=True)),
            "source": cfg.target_source,
        }
    }
    files: list[str] = []
    seconds: dict[str, float] = {}
    tech = set(cfg.techniques)

    if tech & {"probe", "umap"}:
        from sae_rad_ext.maps.probes import pooled_activations, probe_curves

        t0 = time.perf_counter()
        pooled = pooled_activations(
            model, proc, studies, layers, batch_size=cfg.batch_size, progress=progress
        )
        holdout = holdout_mask(studies, cfg.test_fraction, salt=str(cfg.seed))
        if "probe" in tech:
            pc = probe_curves(pooled, targets, holdout, progress=progress)
            results["probe"] = pc.to_dict()
            files += [
                map_plots.plot_probes(results["probe"], out / "probes_auroc.png").name,
                map_plots.plot_probes(results["probe"], out / "probes_accuracy.png", "accuracy").name,
            ]
        seconds["probe"] = time.perf_counter() - t0
        if "umap" in tech:
            from sae_rad_ext.maps.umap_map import plot_umap, umap_projections

            t0 = time.perf_counter()
            ul = (
                list(cfg.umap_layers)
                if cfg.umap_layers is not None
                else sorted({layers[0], layers[len(layers) // 2], layers[-1]})
            )
            projs = umap_projections(pooled, ul, cfg.umap_pools, seed=cfg.seed)
            results["umap"] = {
                "projections": [p.to_dict() for p in projs],
                "info": pooled.info,
                "study_ids": pooled.study_ids,
            }
            for p in projs:
                name = f"umap_{layer_label(p.layer)}_{p.pool.replace(':', '-')}.png"
                files.append(plot_umap(p, pooled, targets, out / name).name)
            seconds["umap"] = time.perf_counter() - t0
    if "patch" in tech:
        from sae_rad_ext.maps.patching import patch_maps, phantom_pairs

        t0 = time.perf_counter()
        size = cfg.pair_image_size or int(model.cfg.image_size[0])
        pairs = phantom_pairs(
            cfg.findings,
            cfg.n_pairs,
            seed=cfg.pair_seed,
            image_size=size,
            lateral_prob=cfg.pair_lateral_prob,
            prior_prob=cfg.pair_prior_prob,
        )
        pm = patch_maps(
            model,
            proc,
            pairs,
            layers,
            roles=cfg.patch_roles,
            batch_size=max(1, cfg.batch_size // 2),
            progress=progress,
        )
        results["patch"] = pm.to_dict()
        files.append(map_plots.plot_patching(results["patch"], out / "patching.png").name)
        seconds["patch"] = time.perf_counter() - t0
    if "lesion" in tech:
        from sae_rad_ext.maps.lesion import lesion_maps

        t0 = time.perf_counter()
        sub = studies[: cfg.lesion_studies]
        lr = lesion_maps(
            model,
            proc,
            sub,
            targets[: len(sub)],
            modes=cfg.lesion_modes,
            windows=cfg.lesion_windows,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        results["lesion"] = lr.to_dict()
        files.append(map_plots.plot_lesion(results["lesion"], out / "lesion.png").name)
        seconds["lesion"] = time.perf_counter() - t0
    if "saliency" in tech:
        from sae_rad_ext.maps.saliency import gradient_saliency

        t0 = time.perf_counter()
        sub = studies[: cfg.saliency_studies]
        sal = gradient_saliency(
            model,
            proc,
            sub,
            batch_size=max(1, cfg.batch_size // 2),
            findings=cfg.findings,
            progress=progress,
        )
        results["saliency"] = sal.to_dict()
        files.append(map_plots.plot_saliency(results["saliency"], out / "saliency.png").name)
        seconds["saliency"] = time.perf_counter() - t0

    rec = recommend_layer(results, layers)
    (out / "recommendation.txt").write_text(rec.summary() + "\n")
    files.append("recommendation.txt")
    cfg_dict = {k: (list(v) if isinstance(v, (tuple, range)) else v) for k, v in asdict(cfg).items()}
    maps = KnowledgeMaps(
        cfg_dict, str(model.cfg.model_name), n, layers, len(studies), results, rec, files, seconds
    )
    write_json(out / "knowledge_maps.json", maps.to_dict(), indent=1)
    return maps
