"""The streaming pass: studies → model → SAE codes → statistics, study-level scores, map/mask overlap.

:func:`scan` runs each batch of studies once teacher-forced (prompt + reference report) and, with
``generate=True``, once more on prompt + the model's OWN generated report. Per study it encodes every
non-padding position with the SAE, then

- updates :class:`~sae_rad_ext.interpret.stats.FeatureStatsAccumulator` with the positions of
  ``stats_positions`` (a :class:`~sae_rad_ext.adapters.roles.TokenRoles` selection);
- pools one ``[d_sae]`` score per kind (:data:`KINDS`) into :class:`~sae_rad_ext.interpret.score_store.ScoreWriter`;
- for studies with 2-D masks (phantoms: ``metadata["masks"]["frontal"][concept]``) accumulates, for every
  feature × concept, the IoU of the feature's frontal patch map (thresholded at ``map_threshold`` × the
  map's max) with the mask on the patch grid, and the pointing-game hit (the map's argmax patch lies on
  the mask) — a couple of ``[n_concepts, d_sae]`` tensors, no maps kept.

Positions and leakage: image positions and the last prompt token come before any report word; the
teacher-forced reference report (``report_tf``) contains the answer, so a feature that reads its words
aligns with the labels without the model having seen anything — those rows are labelled as leaking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE

from sae_rad_ext.activations.extract import (
    activations_from_batch,
    default_processor,
    role_group_names,
)
from sae_rad_ext.adapters.generation import generate_reports
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import ImageSlot, Role, Selection, TokenRoles
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.evaluation.splits import assign_split, split_unit
from sae_rad_ext.interpret.score_store import ScoreWriter, StudyInfo
from sae_rad_ext.interpret.stats import FeatureStatsAccumulator
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["KINDS", "LEAKS", "MapOverlap", "ScanConfig", "encode", "mask_to_grid", "scan"]

KINDS: dict[str, str] = {
    "stats": "max over the statistics positions (top studies, explanations, scoring)",
    "image": "max over the current images' patches (frontal + lateral)",
    "image:frontal": "max over the frontal image's patches",
    "image:frontal:topk": "mean of the top-k frontal patches",
    "image:lateral": "max over the lateral image's patches (0 without one)",
    "last_prompt": "the last prompt token (the generation prompt, before any report word)",
    "prompt": "max over study-specific prompt text (indication, technique, comparison, prior report)",
    "generated": "max over the model's own generated report (prompt + generated text re-run)",
    "report_tf": "max over the teacher-forced REFERENCE report (leaks: the report's words name the findings)",
}
"""Study-level score kinds: which positions a per-study feature score pools."""

LEAKS: dict[str, str] = {
    "report_tf": "reference report words (teacher-forced): the label is read, not seen",
    "prompt": "indication / prior report text may name findings",
    "stats": "includes report positions when the statistics selection does",
}
"""Kinds whose alignment can be explained by reading the answer instead of seeing the image."""

SPLIT_SALT = "sae-rad-interpret"
"""Salt of the fit/holdout split, so it cuts across a dataset's own (unsalted) train/test parts."""

_PROMPT_VALUE_ROLES = (Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON, Role.PRIOR_REPORT, Role.PHRASE)


@torch.no_grad()
def encode(sae: SAE[Any], acts: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``sae.encode`` on ``acts [n, d_in]`` in row chunks, on the SAE's device/dtype → float32 ``[n, d_sae]``."""
    W = sae.W_enc
    if acts.shape[-1] != W.shape[0]:
        raise ValueError(
            f"activations have d_in={acts.shape[-1]} but the SAE expects {W.shape[0]}: wrong hook/model?"
        )
    out = [
        sae.encode(acts[i : i + chunk].to(W.device, W.dtype)).float() for i in range(0, acts.shape[0], chunk)
    ]
    return torch.cat(out) if out else torch.zeros(0, W.shape[1], device=W.device)


def mask_to_grid(mask: Any, grid: int) -> torch.Tensor:
    """A 2-D mask of the source image → patch coverage ``[grid, grid]`` in [0, 1] on the model's view
    (MAIRA-2 preprocessing: shortest edge resized, centre crop — i.e. the centred square of the source)."""
    m = torch.as_tensor(mask).float()
    if m.dim() != 2:
        raise ValueError(f"a mask must be [H, W]; got shape {tuple(m.shape)}")
    h, w = m.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    m = m[top : top + s, left : left + s].clamp(0, 1)
    return F.adaptive_avg_pool2d(m[None, None], grid)[0, 0]


def grid_mask(coverage: torch.Tensor, min_cover: float = 0.25) -> torch.Tensor:
    """Binary patch mask: coverage ≥ ``min_cover``; a thin structure covering no patch that much keeps
    every touched patch instead (tubes, lines)."""
    b = coverage >= min_cover
    return b if bool(b.any()) or not bool((coverage > 0).any()) else coverage > 0


@dataclass
class MapOverlap:
    """Feature-map × mask overlap accumulated over studies, per split (``fit``, ``holdout``)."""

    concepts: list[str]
    iou_sum: torch.Tensor
    """``[2, n_concepts, d_sae]`` sum over mask-positive studies of the IoU (feature map ≥ t·max vs mask)."""
    hit_sum: torch.Tensor
    """``[2, n_concepts, d_sae]`` pointing-game hits (argmax patch on the mask; a silent map misses)."""
    n: torch.Tensor
    """``[2, n_concepts]`` mask-positive studies counted."""

    @classmethod
    def empty(cls, concepts: list[str], d_sae: int) -> MapOverlap:
        c = len(concepts)
        return cls(
            list(concepts),
            torch.zeros(2, c, d_sae, dtype=torch.float64),
            torch.zeros(2, c, d_sae, dtype=torch.float64),
            torch.zeros(2, c, dtype=torch.int64),
        )

    def update(
        self, z_map: torch.Tensor, masks: dict[str, torch.Tensor], split: str, threshold: float
    ) -> None:
        """``z_map [P, d_sae]`` frontal codes in row-major patch order; ``masks`` concept → bool ``[P]``."""
        s = 1 if split == "holdout" else 0
        mx, am = z_map.max(0)  # [d]
        on = (z_map >= threshold * mx.clamp(min=1e-12)) & (z_map > 0)  # [P, d]
        n_on = on.sum(0).double()
        for c, name in enumerate(self.concepts):
            m = masks.get(name)
            if m is None or not bool(m.any()):
                continue
            mf = m.to(z_map.device, torch.float32)
            inter = (mf @ on.float()).double()  # [d]
            union = float(mf.sum()) + n_on - inter
            self.iou_sum[s, c] += (inter / union.clamp(min=1)).cpu()
            self.hit_sum[s, c] += (m.to(z_map.device)[am] & (mx > 0)).double().cpu()
            self.n[s, c] += 1

    def mean_iou(self, split: str = "holdout") -> torch.Tensor:
        s = 1 if split == "holdout" else 0
        return self.iou_sum[s] / self.n[s, :, None].clamp(min=1)

    def pointing(self, split: str = "holdout") -> torch.Tensor:
        s = 1 if split == "holdout" else 0
        return self.hit_sum[s] / self.n[s, :, None].clamp(min=1)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {"iou_sum": self.iou_sum, "hit_sum": self.hit_sum, "n": self.n},
            str(path),
            metadata={"concepts": ",".join(self.concepts)},
        )

    @classmethod
    def load(cls, path: str | Path) -> MapOverlap:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            concepts = (f.metadata() or {}).get("concepts", "")
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls([c for c in concepts.split(",") if c], t["iou_sum"], t["hit_sum"], t["n"])


@dataclass
class ScanConfig:
    """Options of :func:`scan`."""

    hook_name: str
    """Hook the SAE reads, e.g. ``blocks.15.hook_resid_post``."""
    stats_positions: Selection = "all"
    """Positions counted in the statistics and the ``stats`` kind (a TokenRoles selection)."""
    concepts: tuple[str, ...] = (*FINDINGS, "no_finding")
    batch_size: int = 4
    generate: bool = True
    """Also generate each study's report and score the model's own text (kind ``generated``)."""
    max_new_tokens: int = 96
    topk_patches: int = 8
    """k of the ``image:frontal:topk`` pooling."""
    map_threshold: float = 0.5
    """A patch is "on" in a feature map at ≥ this fraction of the map's maximum (IoU)."""
    label_source: str = "auto"
    """``study`` (Study.labels), ``labeler`` (label_report on the findings) or ``auto`` (labels if any)."""
    top_n: int = 20
    reservoir: int = 64
    holdout_fraction: float = 0.5
    """Share of patients in the ``holdout`` split (:mod:`sae_rad_ext.evaluation.splits`, salt
    :data:`SPLIT_SALT`); the rest is ``fit``."""
    flush_every: int = 256


def _row_mask(selection: Selection, role, slot, prow, pcol) -> torch.Tensor:
    return TokenRoles(role[None], slot[None], prow[None], pcol[None]).mask(selection)[0]


def study_labels(study: Study, concepts: Iterable[str], source: str = "auto") -> dict[str, int | None]:
    """Per-concept labels of a study from its labels or (``labeler``/``auto`` without labels) the report."""
    concepts = list(concepts)
    if source not in ("auto", "study", "labeler"):
        raise ValueError(f"label_source must be 'auto', 'study' or 'labeler'; got {source!r}")
    have = {c: study.labels.get(c) for c in concepts if c in (study.labels or {})}
    if source == "study" or (source == "auto" and have):
        return {c: have.get(c) for c in concepts}
    from sae_rad_ext.data.labels import label_report

    lab = label_report(study.report or "")
    return {c: lab.get(c) for c in concepts}


def _pool(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor | None:
    return z[rows].max(0).values.clamp(min=0) if bool(rows.any()) else None


@torch.no_grad()
def scan(
    model: HookedMaira2,
    sae: SAE[Any],
    studies: Iterable[Study],
    out: str | Path,
    cfg: ScanConfig,
    *,
    processor: Maira2Processor | None = None,
    split_fn: Callable[[Study], str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[FeatureStatsAccumulator, MapOverlap]:
    """One pass over ``studies``: writes ``out/scores/…`` + ``out/studies.jsonl`` and returns the
    statistics accumulator and the map overlap (call ``.result()`` / ``.save`` on them).

    ``split_fn(study) -> "fit" | "holdout"``; default: the patient-level split of
    :mod:`sae_rad_ext.evaluation.splits` with ``cfg.holdout_fraction`` and :data:`SPLIT_SALT`.
    ``progress``: stage ``"scan studies"`` counts studies (total known when ``studies`` has a length)."""
    processor = processor if processor is not None else default_processor(model)
    tick = Ticker(progress, "scan studies", len(studies) if isinstance(studies, Sized) else None)
    d_sae = int(sae.W_enc.shape[1])
    fractions = {"holdout": cfg.holdout_fraction, "fit": 1.0 - cfg.holdout_fraction}
    split_fn = split_fn or (lambda s: assign_split(split_unit(s), fractions, salt=SPLIT_SALT))
    kinds = [k for k in KINDS if cfg.generate or k != "generated"]
    writer = ScoreWriter(out, kinds, d_sae, flush_every=cfg.flush_every)
    acc = FeatureStatsAccumulator(d_sae, top_n=cfg.top_n, reservoir=cfg.reservoir)
    overlap = MapOverlap.empty(list(cfg.concepts), d_sae)
    grid = int(processor.grid)
    try:
        for chunk in batched(studies, cfg.batch_size):
            batch = processor.build(chunk, with_report=True)
            ab = activations_from_batch(model, batch, cfg.hook_name, "all")
            gen_text, gab = [None] * len(chunk), None
            if cfg.generate:
                gen_text, gab = _generated(model, processor, chunk, cfg)
            codes, groups, positions, index = [], [], [], []
            for b, study in enumerate(chunk):
                r = ab.study_index == b
                z = encode(sae, ab.acts[r])
                role, slot = ab.role[r], ab.image_slot[r]
                prow, pcol, pos = ab.patch_row[r], ab.patch_col[r], ab.position[r]
                dev = z.device
                role_d, slot_d = role.to(dev).long(), slot.to(dev).long()
                sel = _row_mask(cfg.stats_positions, role, slot, prow, pcol).to(dev)
                _, g = role_group_names(role, slot)
                gi = acc.add_study(study.study_id)
                codes.append(z[sel])
                groups.append(g[sel.cpu()])
                positions.append(pos[sel.cpu()])
                index.append(gi)
                img = role_d == int(Role.IMAGE)
                fr = img & (slot_d == int(ImageSlot.FRONTAL))
                lat = img & (slot_d == int(ImageSlot.LATERAL))
                prompt_rows = torch.isin(
                    role_d, torch.tensor([int(x) for x in _PROMPT_VALUE_ROLES], device=dev)
                )
                non_report = torch.nonzero(role_d != int(Role.REPORT)).flatten()
                s: dict[str, torch.Tensor | None] = {
                    "stats": _pool(z, sel),
                    "image": _pool(z, fr | lat),
                    "image:frontal": _pool(z, fr),
                    "image:lateral": _pool(z, lat),
                    "prompt": _pool(z, prompt_rows),
                    "report_tf": _pool(z, role_d == int(Role.REPORT)),
                    "last_prompt": z[non_report[pos.to(dev)[non_report].argmax()]].clamp(min=0)
                    if len(non_report)
                    else None,
                }
                if bool(fr.any()):
                    zf = z[fr]
                    s["image:frontal:topk"] = (
                        zf.topk(min(cfg.topk_patches, zf.shape[0]), dim=0).values.mean(0).clamp(min=0)
                    )
                if gab is not None:
                    gr = gab.study_index == b
                    s["generated"] = (
                        encode(sae, gab.acts[gr]).max(0).values.clamp(min=0) if bool(gr.any()) else None
                    )
                split = split_fn(study)
                masks = _study_masks(study, cfg.concepts, grid)
                if masks and bool(fr.any()):
                    order = (prow[fr.cpu()].long() * grid + pcol[fr.cpu()].long()).to(dev)
                    zmap = torch.zeros(grid * grid, d_sae, device=dev)
                    zmap[order] = z[fr]
                    overlap.update(zmap, masks, split, cfg.map_threshold)
                views = (
                    ["frontal"]
                    + (["lateral"] if study.lateral is not None else [])
                    + (["prior"] if study.prior_frontal is not None else [])
                )
                info = StudyInfo(
                    study_id=study.study_id,
                    split=split,
                    labels=study_labels(study, cfg.concepts, cfg.label_source),
                    findings=study.report,
                    generated=gen_text[b],
                    indication=study.indication or "",
                    views=views,
                    view_position=(study.metadata or {}).get("view_position"),
                    mask_concepts=[c for c, m in masks.items() if bool(m.any())],
                )
                writer.add(info, {k: v for k, v in s.items() if v is not None})
            acc.update(codes, groups, positions, index)
            tick(len(chunk))
    finally:
        writer.close()
    return acc, overlap


def _study_masks(study: Study, concepts: Iterable[str], grid: int) -> dict[str, torch.Tensor]:
    """Concept → bool ``[grid*grid]`` frontal patch mask (row-major), for the concepts the study has masks of."""
    masks = ((study.metadata or {}).get("masks") or {}).get("frontal") or {}
    if not grid or not masks:
        return {}
    return {c: grid_mask(mask_to_grid(masks[c], grid)).flatten() for c in concepts if c in masks}


def _generated(model: HookedMaira2, processor: Maira2Processor, chunk: list[Study], cfg: ScanConfig):
    """Generate each study's report, then re-run prompt + generated text; returns texts and report rows."""
    gb = processor.build(chunk, with_report=False)
    gen = generate_reports(model, processor, gb, max_new_tokens=cfg.max_new_tokens)
    texts, out = gen.texts, gen.output_ids.cpu()
    roles = processor.roles_for_generated(gb, out)
    mask = (roles.role != int(Role.PAD)).long()
    full = dataclasses.replace(gb, input_ids=out, attention_mask=mask, roles=roles)  # prompt + generated
    if not bool((roles.role == int(Role.REPORT)).any()):
        return texts, None
    return texts, activations_from_batch(model, full, cfg.hook_name, "report")
