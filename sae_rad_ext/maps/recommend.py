"""The "recommend a layer" summary of the knowledge maps (rule in :func:`recommend_layer`'s docstring)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sae_rad_ext.maps.common import layer_label

__all__ = ["Recommendation", "recommend_layer"]


@dataclass
class Recommendation:
    """The layer to read (train an SAE on), and why."""

    layer: int | None
    """Recommended ``blocks.L.hook_resid_post`` layer (None when the maps cannot decide)."""
    probe_layer: int | None
    """Earliest layer where the mean last-prompt-token probe AUROC is within ``tol`` of its best."""
    patch_layer: int | None
    """Earliest layer where patching text positions transfers at least as much as patching image positions."""
    lesion_layer: int | None
    """Block whose skipping hurts report F1 most (information only)."""
    per_layer: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """layer label → the scores behind the choice."""
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = (
            f"Recommended layer: blocks.{self.layer}.hook_resid_post"
            if self.layer is not None
            else "Recommended layer: undecided (see reasons)"
        )
        return "\n".join([head, *[f"  - {r}" for r in self.reasons]])


def _nanmax(v: Sequence[float | None]) -> float | None:
    a = np.asarray([x for x in v if x is not None], dtype=float)
    return None if a.size == 0 or np.all(np.isnan(a)) else float(np.nanmax(a))


def _nanmean(v: Sequence[float]) -> float | None:
    a = np.asarray([x for x in v if x is not None], dtype=float)
    return None if a.size == 0 or np.all(np.isnan(a)) else float(np.nanmean(a))


def recommend_layer(
    results: dict[str, Any],
    layers: Sequence[int],
    tol: float = 0.02,
    min_auroc: float = 0.7,
    min_effect: float = 0.1,
) -> Recommendation:
    """Combine the maps into one layer.

    - probe layer: over the findings whose held-out AUROC at the last prompt token — what the model knows
      right before writing, with no report text to read off — reaches ``min_auroc`` at some layer, the
      earliest layer whose mean AUROC is within ``tol`` of the best layer's; none when no finding reaches
      ``min_auroc`` (the model does not know the findings before writing, so there is nothing to locate);
    - patch layer: earliest layer where the transfer through text positions (prompt + report) is at least
      the transfer through image positions (all views) — the findings have reached the text; only
      findings whose clean effect (``D_present − D_absent``) is at least ``min_effect`` nats count
      (for the others the transfer is a ratio of noise);
    - recommended: the later of the two (the earliest layer satisfying both); one alone if only one is
      available; never −1 (the embeddings); None when neither is reliable. Lesioning is reported beside
      it, not used.
    """
    per: dict[str, dict[str, float | None]] = {layer_label(L): {} for L in layers}
    reasons: list[str] = []
    probe_layer = patch_layer = lesion_layer = None
    probes = results.get("probe")
    if probes:
        curves = probes["auroc"].get("last_prompt", {})
        mean = [_nanmean([curves[k][i] for k in curves]) for i in range(len(probes["layers"]))]
        for L, m in zip(probes["layers"], mean, strict=True):
            per.setdefault(layer_label(L), {})["probe_auroc_last_prompt"] = m
            for pool in probes["auroc"]:
                c = probes["auroc"][pool]
                per[layer_label(L)][f"probe_auroc_{pool}"] = _nanmean(
                    [c[k][probes["layers"].index(L)] for k in c]
                )
        idx = [i for i, L in enumerate(probes["layers"]) if L >= 0]
        known = sorted(
            k for k in curves if (b := _nanmax([curves[k][i] for i in idx])) is not None and b >= min_auroc
        )
        if known:
            kmean = [(probes["layers"][i], _nanmean([curves[k][i] for k in known])) for i in idx]
            best = max(m for _, m in kmean if m is not None)
            probe_layer = next(L for L, m in kmean if m is not None and m >= best - tol)
            reasons.append(
                f"probes: last-prompt AUROC of the findings the model knows before writing ({', '.join(known)}; "
                f"best ≥ {min_auroc}) reaches {best:.3f} (within {tol}) at layer {probe_layer}"
            )
        elif curves:
            reasons.append(
                f"probes: no finding reaches last-prompt AUROC {min_auroc} at any layer: the model does not know "
                "the findings before writing; no probe layer"
            )
    patch = results.get("patch")
    if patch and patch.get("transfer"):
        weak = sorted(f for f in patch["transfer"] if abs(patch["effect"].get(f) or 0.0) < min_effect)
        tr = {f: v for f, v in patch["transfer"].items() if f not in weak}
        if weak:
            reasons.append(
                f"patching: {', '.join(weak)} left out — clean effect < {min_effect} nats "
                "(the model's report preference barely depends on the finding)"
            )
        for i, L in enumerate(patch["layers"] if tr else []):
            img = _nanmean(
                [
                    sum(
                        0.0 if (v := tr[f][r][i]) is None or math.isnan(v) else v
                        for r in tr[f]
                        if r.startswith("image")
                    )
                    for f in tr
                ]
            )
            txt = _nanmean(
                [
                    sum(
                        0.0 if (v := tr[f][r][i]) is None or math.isnan(v) else v
                        for r in tr[f]
                        if r in ("prompt", "report")
                    )
                    for f in tr
                ]
            )
            per.setdefault(layer_label(L), {}).update({"patch_image": img, "patch_text": txt})
            if patch_layer is None and L >= 0 and img is not None and txt is not None and txt >= img:
                patch_layer = L
        if tr:
            reasons.append(
                f"patching: text positions carry at least as much as image positions from layer {patch_layer}"
                if patch_layer is not None
                else "patching: image positions dominate at every mapped layer"
            )
    lesion = results.get("lesion")
    if lesion:
        singles = {
            c["layers"][0]: n
            for n, c in lesion["configs"].items()
            if c["mode"] == "skip" and len(c["layers"]) == 1
        }
        drops = {L: _nanmean(list(lesion["f1_drop"][n].values())) for L, n in singles.items()}
        for L, d in drops.items():
            per.setdefault(layer_label(L), {})["lesion_skip_f1_drop"] = d
            per[layer_label(L)]["lesion_skip_loglik_drop"] = lesion["loglik_drop"][singles[L]]
        if drops:
            lesion_layer = max(drops, key=lambda L: drops[L] if drops[L] is not None else -1)
            reasons.append(
                f"lesioning: skipping block {lesion_layer} costs the most report F1 "
                f"({drops[lesion_layer]:.3f} mean over findings)"
            )
    found = [x for x in (probe_layer, patch_layer) if x is not None]
    layer = max(found) if found else None
    if layer is not None:
        reasons.insert(
            0,
            f"chosen: layer {layer} = the later of the probe layer ({probe_layer}) and the patch "
            f"layer ({patch_layer})",
        )
    else:
        reasons.insert(
            0,
            "no reliable probe or patching map to decide from (see below; or run with "
            "--techniques probe,patch)",
        )
    return Recommendation(layer, probe_layer, patch_layer, lesion_layer, per, reasons)
