"""Activation patching between studies that differ in one finding: where does the finding travel?

    pairs = phantom_pairs(["pleural_effusion"], n_per_finding=8, image_size=128)
    res = patch_maps(model, processor, pairs, layers=range(-1, 6))
    res.transfer["pleural_effusion"]["image:frontal"]    # [n_layers] share of the effect that moves

A pair is ``(absent, present)``: the same phantom patient, views, acquisition, noise and prompt, with one
planted finding removed / added (:func:`~sae_rad_ext.data.phantom.generator.make_study_pair`). Each member is run
with each member's reference report teacher-forced (same tokens, so every position lines up), and the
model's preference is ``D = log p(R_present) − log p(R_absent)``. Patching copies the residual stream at
(layer, role) from the source run into the target run; the transferred share is

    transfer = Σ_pairs (D_patched − D_target) / Σ_pairs (D_source − D_target)

for "add" (source = present, target = absent) and "remove" (the reverse); ``transfer`` is their mean.
0 = nothing of the finding's effect passes through those positions at that layer, 1 = all of it. Role
``all`` (every position) is 1 by construction — a built-in check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.maps.common import (
    check_layers,
    report_loglik,
    resid_hook,
)
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["PATCH_ROLES", "PatchResult", "patch_hook", "patch_maps", "phantom_pairs", "preference"]

PATCH_ROLES = ("image:frontal", "image:lateral", "image:prior", "prompt", "report", "all")
"""Position groups patched (``prompt``: all prompt text; ``all``: every position, the sanity column)."""

Pair = tuple[Study, Study]


def phantom_pairs(
    findings: Sequence[str] = FINDINGS,
    n_per_finding: int = 8,
    *,
    seed: int = 9,
    image_size: int = 224,
    start: int = 0,
    lateral_prob: float = 0.5,
    prior_prob: float = 0.3,
) -> dict[str, list[Pair]]:
    """``{finding: [(absent, present), …]}`` phantom pairs (patients ``start …`` of stream ``seed``)."""
    from sae_rad_ext.data.phantom.generator import make_study_pair

    bad = sorted(set(findings) - set(FINDINGS))
    if bad:
        raise ValueError(f"unknown finding(s) {bad}; expected some of {list(FINDINGS)}")
    return {
        f: [
            make_study_pair(
                seed, start + i, f, image_size=image_size, lateral_prob=lateral_prob, prior_prob=prior_prob
            )
            for i in range(n_per_finding)
        ]
        for f in findings
    }


def patch_hook(source: torch.Tensor, mask: torch.Tensor):
    """A hook that replaces the positions ``mask [B, T]`` of its activation with ``source [B, T, d]``."""

    def fn(x: torch.Tensor, hook: Any) -> torch.Tensor:
        if x.shape != source.shape:
            raise ValueError(
                f"patch source {tuple(source.shape)} does not match the activation {tuple(x.shape)}; "
                "source and target runs must have the same positions"
            )
        m = mask.to(x.device)[..., None]
        return torch.where(m, source.to(x.device, x.dtype), x)

    return fn


@dataclass
class PatchResult:
    """Layer × role transfer maps per finding."""

    layers: list[int]
    roles: list[str]
    transfer: dict[str, dict[str, list[float]]]
    """finding → role → mean of add and remove transfer, per layer (NaN where the role has no positions)."""
    transfer_add: dict[str, dict[str, list[float]]]
    """finding → role → transfer when the finding is patched in (source present, target absent)."""
    transfer_remove: dict[str, dict[str, list[float]]]
    """finding → role → transfer when it is patched out."""
    effect: dict[str, float]
    """finding → mean clean ``D_present − D_absent`` (nats): how much the finding changes the model's
    preference between the two reports. Near 0 → transfers are noise (the model ignores the finding)."""
    effect_positive: dict[str, float]
    """finding → share of pairs whose clean effect is positive."""
    n_pairs: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "roles": self.roles,
            "transfer": self.transfer,
            "transfer_add": self.transfer_add,
            "transfer_remove": self.transfer_remove,
            "effect": self.effect,
            "effect_positive": self.effect_positive,
            "n_pairs": self.n_pairs,
        }


def preference(loglik: torch.Tensor) -> torch.Tensor:
    """``[n_pairs]`` ``log p(R_present) − log p(R_absent)`` from row log-likelihoods ordered
    ``(pair0·R_absent, pair0·R_present, pair1·R_absent, …)``."""
    return loglik[1::2] - loglik[0::2]


def _pair_batches(processor: Maira2Processor, pairs: Sequence[Pair]):
    absent = [s for a, _ in pairs for s in (a, a)]
    present = [s for _, p in pairs for s in (p, p)]
    reports = [r for a, p in pairs for r in (a.report, p.report)]
    ba = processor.build(absent, reports=reports)
    bp = processor.build(present, reports=reports)
    T = max(ba.input_ids.shape[1], bp.input_ids.shape[1])
    ba, bp = (
        processor.build(absent, reports=reports, pad_to=T),
        processor.build(present, reports=reports, pad_to=T),
    )
    for x, y in zip(ba.roles.as_tuple(), bp.roles.as_tuple(), strict=True):
        if not torch.equal(x, y):
            bad = sorted({pairs[i // 2][0].study_id for i in (x != y).any(1).nonzero()[:, 0].tolist()})
            raise ValueError(
                f"pairs {bad[:3]} do not line up position by position (different prompts or image "
                "counts); patching needs pairs with identical prompts (make_study_pair gives them)"
            )
    return ba, bp


@torch.no_grad()
def patch_maps(
    model: HookedMaira2,
    processor: Maira2Processor,
    pairs: dict[str, Sequence[Pair]],
    layers: Sequence[int],
    *,
    roles: Sequence[str] = PATCH_ROLES,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> PatchResult:
    """Transfer maps for every finding of ``pairs`` (``{finding: [(absent, present), …]}``).
    ``progress``: stage ``"patching"`` counts (pair, role) patches."""
    layers = check_layers(layers, model.cfg.n_layers)
    names = [resid_hook(L) for L in layers]
    dev = model.cfg.device
    res = PatchResult(layers, list(roles), {}, {}, {}, {}, {}, {})
    tick = Ticker(progress, "patching", sum(len(v) for v in pairs.values()) * len(roles))
    for finding, fpairs in pairs.items():
        if not fpairs:
            continue
        sums = {d: np.zeros((len(roles), len(layers))) for d in ("add", "remove")}
        den = 0.0
        has = np.zeros(len(roles), bool)
        clean_effects: list[float] = []
        for chunk in batched(list(fpairs), batch_size):
            ba, bp = _pair_batches(processor, chunk)
            ids_a, kw_a = ba.to(dev).model_args()
            ids_p, kw_p = bp.to(dev).model_args()
            logit_a, cache_a = model.run_with_cache(ids_a, names_filter=names, **kw_a)
            logit_p, cache_p = model.run_with_cache(ids_p, names_filter=names, **kw_p)
            d_a, d_p = preference(report_loglik(logit_a, ba)[0]), preference(report_loglik(logit_p, bp)[0])
            clean_effects += (d_p - d_a).tolist()
            den += float((d_p - d_a).sum())
            for r, role in enumerate(roles):
                mask = ba.roles.mask(role).to(dev)
                has[r] |= bool(mask.any())
                for li, name in enumerate(names):
                    if not bool(mask.any()):
                        continue
                    out_a = model.run_with_hooks(
                        ids_a, fwd_hooks=[(name, patch_hook(cache_p[name], mask))], **kw_a
                    )
                    out_p = model.run_with_hooks(
                        ids_p, fwd_hooks=[(name, patch_hook(cache_a[name], mask))], **kw_p
                    )
                    sums["add"][r, li] += float((preference(report_loglik(out_a, ba)[0]) - d_a).sum())
                    sums["remove"][r, li] += float((d_p - preference(report_loglik(out_p, bp)[0])).sum())
                tick(len(chunk))
        safe = den if abs(den) > 1e-9 else float("nan")
        add, rem = sums["add"] / safe, sums["remove"] / safe
        add[~has], rem[~has] = np.nan, np.nan
        res.transfer_add[finding] = {role: add[r].tolist() for r, role in enumerate(roles)}
        res.transfer_remove[finding] = {role: rem[r].tolist() for r, role in enumerate(roles)}
        res.transfer[finding] = {role: ((add[r] + rem[r]) / 2).tolist() for r, role in enumerate(roles)}
        res.effect[finding] = float(np.mean(clean_effects))
        res.effect_positive[finding] = float(np.mean(np.asarray(clean_effects) > 0))
        res.n_pairs[finding] = len(clean_effects)
    return res
