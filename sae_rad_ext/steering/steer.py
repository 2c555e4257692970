"""Steered report generation and strength sweeps on a hooked MAIRA-2 / LLaVA model.

    from sae_rad_ext.steering.steer import Intervention, steered_generate, strength_sweep

    out = steered_generate(model, processor, studies, sae, [Intervention(812, "add", 8.0, positions="report")])
    out.reports[0]                                    # the steered FINDINGS text
    sweep = strength_sweep(model, processor, studies, sae, feature=812, coefficients=[0, 2, 4, 8],
                           unit="max_act", positions="all")
    sweep.reports[4.0], sweep.random_reports[4.0]     # feature vs equal-norm random direction

Interventions are applied by hooks at every forward pass of ``HookedMaira2.generate`` (prefill and each
decoding step, KV cache on); see :mod:`sae_rad_ext.steering.interventions` for what each kind does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from sae_lens import SAE

from sae_rad_ext.adapters.generation import generate_reports
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.steering.interventions import Intervention, SaeView, intervention_hooks, sae_hook_name
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = [
    "Intervention",
    "SteeredReports",
    "SweepResult",
    "random_direction",
    "steered_generate",
    "strength_sweep",
    "study_feature_activations",
]

@dataclass
class SteeredReports:
    """Generated reports, one per study, in input order."""

    study_ids: list[str]
    reports: list[str]
    """Decoded text by the end-of-report rule of :mod:`sae_rad_ext.adapters.generation`."""
    token_ids: list[list[int]]
    """New token ids per study, up to (not including) the first EOS."""
    seconds: float = 0.0
    """Wall time spent in ``generate``."""


@torch.no_grad()
def steered_generate(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Any],
    sae: SAE[Any] | None,
    interventions: Sequence[Intervention] = (),
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    task: str = "findings",
    progress: ProgressCallback | None = None,
    **generate_kwargs: Any,
) -> SteeredReports:
    """Greedy generation with ``interventions`` active (none: the model's own reports).

    ``model`` is a :class:`~sae_rad_ext.adapters.HookedMaira2`; ``processor`` a ``Maira2Processor``.
    Studies are generated ``batch_size`` at a time (left padding; the role table of each batch places
    the edits). A per-position ``value`` tensor needs the whole list in one batch. ``progress``: stage
    ``"steered generation"`` counts studies.
    """
    studies = list(studies)
    tick = Ticker(progress, "steered generation", len(studies))
    return _steered_generate(
        model, processor, studies, sae, interventions, max_new_tokens, batch_size, task, tick, generate_kwargs
    )


def _steered_generate(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: list[Any],
    sae: SAE[Any] | None,
    interventions: Sequence[Intervention],
    max_new_tokens: int,
    batch_size: int,
    task: str,
    tick: Ticker,
    generate_kwargs: dict[str, Any],
) -> SteeredReports:
    """:func:`steered_generate` counting finished studies on ``tick`` (shared by a whole sweep)."""
    import time

    if not studies:
        raise ValueError("steered_generate needs at least one study")
    if (
        any(isinstance(iv.value, torch.Tensor) and iv.value.dim() == 3 for iv in interventions)
        and len(studies) > batch_size
    ):
        raise ValueError(
            f"a per-position intervention value needs all {len(studies)} studies in one batch; "
            f"set batch_size ≥ {len(studies)}"
        )
    ids_out: list[list[int]] = []
    reports: list[str] = []
    secs = 0.0
    for chunk in batched(studies, batch_size):
        batch = processor.build(list(chunk), task, with_report=False).to(model.cfg.device)
        T = batch.input_ids.shape[1]
        hooks = (
            intervention_hooks(model, sae, interventions, batch.roles, T, max_new_tokens)
            if interventions
            else []
        )
        t0 = time.perf_counter()
        gen = generate_reports(
            model, processor, batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks, **generate_kwargs
        )
        secs += time.perf_counter() - t0
        ids_out += gen.token_ids
        reports += gen.texts
        tick(len(chunk))
    return SteeredReports(
        [str(getattr(s, "study_id", i)) for i, s in enumerate(studies)], reports, ids_out, secs
    )


def random_direction(sae: SAE[Any], feature: int, seed: int = 0) -> torch.Tensor:
    """A random Gaussian direction with exactly the norm of ``W_dec[feature]`` (the equal-norm control)."""
    W = sae.W_dec.detach()
    if not 0 <= int(feature) < W.shape[0]:
        raise ValueError(f"feature {feature} out of range for d_sae={W.shape[0]}")
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randn(W.shape[1], generator=g, dtype=torch.float64)
    return (d / d.norm() * W[int(feature)].double().norm()).to(W.dtype)


@torch.no_grad()
def study_feature_activations(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Any],
    sae: SAE[Any],
    features: Sequence[int],
    *,
    positions: Selection = "image",
    with_report: bool = False,
    reports: Sequence[str] | None = None,
    pool: Literal["max", "mean"] = "max",
    batch_size: int = 16,
    hook_name: str | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """``float [n_studies, F]``: each feature's activation pooled over a study's selected positions.

    Only the chosen features are encoded (``O(N·d·|F|)``). ``positions`` default ``"image"`` (what the
    model sees, nothing from any report); ``with_report`` / ``reports`` teacher-force a report after the
    prompt (e.g. the model's own generated one, for ``positions="report"``). Studies without a selected
    position get 0. ``progress``: stage ``"feature activations"`` counts studies.
    """
    hook = hook_name or sae_hook_name(sae)
    fid = torch.as_tensor(list(features), dtype=torch.long)
    p = next(model.model.parameters())
    view = SaeView(sae, p.device, p.dtype)
    view.check_ids(fid)
    layer = _stop_layer(hook)
    rows = []
    studies = list(studies)
    tick = Ticker(progress, "feature activations", len(studies))
    for i, chunk in enumerate(batched(studies, batch_size)):
        rep = None if reports is None else list(reports[i * batch_size : i * batch_size + len(chunk)])
        batch = processor.build(list(chunk), with_report=with_report or rep is not None, reports=rep)
        batch = batch.to(model.cfg.device)
        ids, kw = batch.model_args()
        _, cache = model.run_with_cache(
            ids,
            **kw,
            names_filter=[hook],
            stop_at_layer=layer,
        )
        f = view.encode_selected(cache[hook], fid.to(p.device))  # [B, T, F]
        m = batch.roles.mask(positions).to(f.device)[..., None]
        if pool == "max":
            pooled = torch.where(m, f, torch.zeros_like(f)).amax(1)
        else:
            pooled = (f * m).sum(1) / m.sum(1).clamp(min=1)
        rows.append(pooled.float().cpu())
        tick(len(chunk))
    return torch.cat(rows)


def _stop_layer(hook: str) -> int | None:
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1]) + 1
    return None


@dataclass
class SweepResult:
    """Reports of one feature steered at several strengths, beside an equal-norm random direction."""

    feature: int
    coefficients: list[float]
    """Coefficients as given (in ``unit``)."""
    absolute: list[float]
    """The coefficients actually applied to ``W_dec[feature]`` (``coef × scale``)."""
    unit: str
    scale: float
    """1 for ``unit="absolute"``, the feature's typical max activation for ``unit="max_act"``."""
    kind: str
    positions: str
    study_ids: list[str]
    baseline: list[str]
    """Unsteered reports of the same studies."""
    reports: dict[float, list[str]] = field(default_factory=dict)
    """Coefficient → steered reports (feature direction)."""
    random_reports: dict[float, list[str]] = field(default_factory=dict)
    """Coefficient → reports steered along the random direction of equal norm (``"add"`` only)."""
    random_norm: float = 0.0
    feature_norm: float = 0.0
    seconds: float = 0.0


@torch.no_grad()
def strength_sweep(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Any],
    sae: SAE[Any],
    feature: int,
    coefficients: Sequence[float],
    *,
    unit: Literal["absolute", "max_act"] = "absolute",
    max_act: float | None = None,
    kind: Literal["add", "clamp"] = "add",
    positions: Selection = "all",
    steps: Sequence[int] | None = None,
    random_control: bool = True,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    calibration_positions: Selection = "all",
    progress: ProgressCallback | None = None,
) -> SweepResult:
    """Generate reports for ``studies`` with ``feature`` steered at each coefficient.

    ``kind="add"``: ``h + c·W_dec[f]``; ``kind="clamp"``: feature clamped to ``c``. ``unit="max_act"``
    multiplies coefficients by the feature's typical max activation — ``max_act`` if given, else the
    median over ``studies`` of its per-study max over ``calibration_positions`` (falls back to 1 when the
    feature never fires there). The random control (``"add"`` only) uses :func:`random_direction` with
    the same coefficients. ``progress``: stage ``"strength sweep"`` counts generated reports over every
    generation of the sweep (baseline, each coefficient, each random control; ``done`` reaches ``total``).
    """
    import time

    t0 = time.perf_counter()
    if not coefficients:
        raise ValueError("coefficients is empty; give the strengths to sweep, e.g. [0, 2, 4, 8]")
    if unit not in ("absolute", "max_act"):
        raise ValueError(f"unit must be 'absolute' or 'max_act', got {unit!r}")
    studies = list(studies)
    scale = 1.0
    if unit == "max_act":
        if max_act is None:
            acts = study_feature_activations(
                model,
                processor,
                studies,
                sae,
                [feature],
                positions=calibration_positions,
                batch_size=batch_size,
            )[:, 0]
            fired = acts[acts > 0]
            max_act = float(fired.median()) if fired.numel() else 1.0
        scale = float(max_act)
    absolute = [float(c) * scale for c in coefficients]
    steered = sum(not (kind == "add" and a == 0.0) for a in absolute)
    randoms = sum(a != 0.0 for a in absolute) if random_control and kind == "add" else 0
    tick = Ticker(progress, "strength sweep", (1 + steered + randoms) * len(studies))

    def generate(interventions: list[Intervention]) -> SteeredReports:
        return _steered_generate(
            model, processor, studies, sae, interventions, max_new_tokens, batch_size, "findings", tick, {}
        )

    base = generate([])
    res = SweepResult(
        int(feature),
        [float(c) for c in coefficients],
        absolute,
        unit,
        scale,
        kind,
        str(positions),
        base.study_ids,
        base.reports,
    )
    rnd = random_direction(sae, feature, seed)
    res.random_norm = float(rnd.norm())
    res.feature_norm = float(sae.W_dec[int(feature)].norm())
    proto = Intervention(int(feature), kind, 0.0, positions=positions, steps=steps)
    for c, a in zip(res.coefficients, res.absolute, strict=True):
        if kind == "add" and a == 0.0:
            res.reports[c] = list(base.reports)  # adding 0 × direction is the identity (tested)
        else:
            res.reports[c] = generate([replace(proto, value=a)]).reports
        if random_control and kind == "add":
            if a == 0.0:
                res.random_reports[c] = list(base.reports)
            else:
                iv = replace(proto, value=a, direction=rnd)
                res.random_reports[c] = generate([iv]).reports
    res.seconds = time.perf_counter() - t0
    return res
