"""Hook activations of image+text studies, one row per selected token position, with its role.

``iter_activations(model, studies, "blocks.15.hook_resid_post", positions="maira2_sae_paper")`` builds
prompt batches with the adapter's prompt builder (report teacher-forced after the prompt, so its tokens
carry the "report" role), runs ``model.run_with_cache(..., names_filter=[hook], stop_at_layer=L+1)`` and
yields :class:`ActivationBatch` values holding only the selected positions — never padding, never
BOS/special tokens (:meth:`TokenRoles.mask` guarantees it).

:class:`RoleNormStats` accumulates the mean L2 norm of the activations per role (image positions split
by image slot). Image and text norms differ a lot; the numbers are reported by ``sae-rad train`` /
``sae-rad cache`` and stored in the SAE's ``cfg.json`` metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Batch, Maira2Processor
from sae_rad_ext.adapters.roles import ImageSlot, Role, Selection, TokenRoles
from sae_rad_ext.data.study import Study
from sae_rad_ext.util.batching import batched

__all__ = [
    "ActivationBatch",
    "RoleNormStats",
    "activations_from_batch",
    "default_processor",
    "describe_positions",
    "iter_activations",
    "role_group_names",
]


@dataclass
class ActivationBatch:
    """Activations of the selected positions of one batch of studies (rows in batch-then-position order)."""

    acts: torch.Tensor
    """``[n_selected, d_in]`` hook activations at the selected positions."""
    study_ids: list[str]
    """Ids of the studies of this batch; ``study_index`` indexes into this list."""
    study_index: torch.Tensor
    """``[n_selected]`` int64: which study of ``study_ids`` each row comes from."""
    position: torch.Tensor
    """``[n_selected]`` int64: token position within the study's own (unpadded) sequence."""
    role: torch.Tensor
    """``[n_selected]`` int8 :class:`~sae_rad_ext.adapters.roles.Role` code."""
    image_slot: torch.Tensor
    """``[n_selected]`` int8 :class:`~sae_rad_ext.adapters.roles.ImageSlot` (-1 for text)."""
    patch_row: torch.Tensor
    """``[n_selected]`` int16 patch-grid row of image positions (-1 for text)."""
    patch_col: torch.Tensor
    """``[n_selected]`` int16 patch-grid column of image positions (-1 for text)."""
    token_id: torch.Tensor
    """``[n_selected]`` int64 input token id (the image placeholder id for image positions)."""

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    @property
    def row_study_ids(self) -> list[str]:
        """Study id of every row."""
        return [self.study_ids[i] for i in self.study_index.tolist()]


def role_group_names(role: torch.Tensor, image_slot: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """Group code per row: ``(names, codes)`` where image rows are split by slot (``image:frontal`` …)."""
    names = [r.name.lower() for r in Role if r != Role.IMAGE] + [
        f"image:{s.name.lower()}" for s in ImageSlot if s != ImageSlot.NONE
    ]
    text_codes = {int(r): i for i, r in enumerate(r for r in Role if r != Role.IMAGE)}
    n_text = len(text_codes)
    lut = torch.full((max(int(r) for r in Role) + 1,), -1, dtype=torch.long)
    for r, i in text_codes.items():
        lut[r] = i
    role = role.long().cpu()
    codes = lut[role]
    is_img = role == int(Role.IMAGE)
    codes[is_img] = n_text + image_slot.long().cpu()[is_img].clamp(min=0)
    return names, codes


@dataclass
class RoleNormStats:
    """Running mean L2 norm (and RMS) of activations per role; image positions split by image slot."""

    sums: dict[str, float] = field(default_factory=dict)
    """Sum of L2 norms per group."""
    sq_sums: dict[str, float] = field(default_factory=dict)
    """Sum of squared L2 norms per group."""
    counts: dict[str, int] = field(default_factory=dict)
    """Number of positions per group."""

    def update(self, acts: torch.Tensor, role: torch.Tensor, image_slot: torch.Tensor) -> None:
        """Add rows ``acts [n, d_in]`` with their ``role`` / ``image_slot`` codes ``[n]``."""
        if acts.shape[0] == 0:
            return
        norms = acts.detach().float().norm(dim=-1).cpu().double()
        names, codes = role_group_names(role, image_slot)
        n_groups = len(names)
        s = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, codes, norms)
        sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, codes, norms * norms)
        c = torch.bincount(codes, minlength=n_groups)
        for i in torch.nonzero(c).flatten().tolist():
            k = names[i]
            self.sums[k] = self.sums.get(k, 0.0) + float(s[i])
            self.sq_sums[k] = self.sq_sums.get(k, 0.0) + float(sq[i])
            self.counts[k] = self.counts.get(k, 0) + int(c[i])

    def update_batch(self, batch: ActivationBatch) -> None:
        self.update(batch.acts, batch.role, batch.image_slot)

    def merge(self, other: RoleNormStats) -> RoleNormStats:
        """Add another accumulator's totals into this one (e.g. from another rank); returns self."""
        for k in other.counts:
            self.sums[k] = self.sums.get(k, 0.0) + other.sums[k]
            self.sq_sums[k] = self.sq_sums.get(k, 0.0) + other.sq_sums[k]
            self.counts[k] = self.counts.get(k, 0) + other.counts[k]
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def mean_norm(self, group: str | None = None) -> float:
        """Mean L2 norm of one group (``None``: over all positions)."""
        keys = list(self.counts) if group is None else [group]
        n = sum(self.counts.get(k, 0) for k in keys)
        return sum(self.sums.get(k, 0.0) for k in keys) / n if n else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: per group ``{mean_norm, rms_norm, count, fraction}`` plus ``all``."""
        total = self.total
        out: dict[str, Any] = {}
        for k in sorted(self.counts, key=lambda k: -self.counts[k]):
            n = self.counts[k]
            out[k] = {
                "mean_norm": self.sums[k] / n,
                "rms_norm": math.sqrt(self.sq_sums[k] / n),
                "count": n,
                "fraction": n / total,
            }
        if total:
            out["all"] = {
                "mean_norm": sum(self.sums.values()) / total,
                "rms_norm": math.sqrt(sum(self.sq_sums.values()) / total),
                "count": total,
                "fraction": 1.0,
            }
        return out

    def state(self) -> dict[str, Any]:
        """Raw totals (round-trips through :meth:`from_state`)."""
        return {"sums": dict(self.sums), "sq_sums": dict(self.sq_sums), "counts": dict(self.counts)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RoleNormStats:
        return cls(
            dict(state["sums"]), dict(state["sq_sums"]), {k: int(v) for k, v in state["counts"].items()}
        )

    def format_table(self) -> str:
        """Plain-text table: group, count, share, mean L2 norm, RMS norm."""
        lines = [f"{'role':<16}{'count':>10}{'share':>9}{'mean |x|':>12}{'rms |x|':>12}"]
        for k, v in self.to_dict().items():
            lines.append(
                f"{k:<16}{v['count']:>10}{100 * v['fraction']:>8.1f}%{v['mean_norm']:>12.4g}{v['rms_norm']:>12.4g}"
            )
        return "\n".join(lines)


def describe_positions(positions: Selection) -> str:
    """A string naming a position selection (for metadata): the selection itself or the callable's name."""
    if isinstance(positions, str):
        return positions
    name = getattr(positions, "__qualname__", None) or getattr(positions, "__name__", None) or repr(positions)
    return f"callable:{getattr(positions, '__module__', '?')}.{name}"


def default_processor(model: HookedMaira2) -> Maira2Processor:
    """The hooked model's prompt builder: ``Maira2Processor.from_model_config(model.model.config, model.tokenizer)``."""
    if model.tokenizer is None:
        raise ValueError(
            "cannot build a prompt builder for this model: it has no tokenizer; wrap it with "
            "HookedMaira2.from_hf(model, tokenizer) or pass `processor=Maira2Processor(...)` explicitly"
        )
    return Maira2Processor.from_model_config(model.model.config, model.tokenizer)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's parameters (CPU for a parameterless stand-in)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def stop_layer(hook_name: str) -> int | None:
    """``L+1`` for ``blocks.L.*`` hooks (``run_with_cache`` stops right after that block), else None."""
    return extract_stop_at_layer_from_tlens_hook_name(hook_name)


def batch_pad_offsets(roles: TokenRoles) -> torch.Tensor:
    """``[batch]`` index of the first non-padding position of each row (0 for right padding)."""
    not_pad = roles.role != int(Role.PAD)
    seq = roles.role.shape[1]
    idx = torch.arange(seq, device=roles.role.device).expand_as(roles.role)
    first = torch.where(not_pad, idx, torch.full_like(idx, seq)).min(dim=1).values
    return first.clamp(max=seq)


@torch.no_grad()
def run_hook(model: HookedMaira2, batch: Maira2Batch, hook_name: str, **model_kwargs: Any) -> torch.Tensor:
    """``[batch, seq, d]`` activations of one hook for a prompt batch (``stop_at_layer=L+1``)."""
    dev = model_device(model)
    kwargs = dict(model_kwargs)
    if batch.pixel_values is not None:
        kwargs["pixel_values"] = batch.pixel_values.to(dev)
    kwargs["attention_mask"] = batch.attention_mask.to(dev)
    _, cache = model.run_with_cache(
        batch.input_ids.to(dev), names_filter=[hook_name], stop_at_layer=stop_layer(hook_name), **kwargs
    )
    acts = cache[hook_name]
    if acts.dim() != 3 or acts.shape[:2] != tuple(batch.input_ids.shape):
        raise ValueError(
            f"hook {hook_name!r} gives activations of shape {tuple(acts.shape)}; expected "
            f"[batch, seq, d] = [{batch.input_ids.shape[0]}, {batch.input_ids.shape[1]}, d]. Only residual/"
            "block-output hooks (blocks.L.hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out) are supported."
        )
    return acts


def activations_from_batch(
    model: HookedMaira2,
    batch: Maira2Batch,
    hook_name: str,
    positions: Selection = "all",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> ActivationBatch:
    """Run one prompt batch (a ``Maira2Batch``) and keep the selected positions."""
    roles: TokenRoles = batch.roles
    hidden = run_hook(model, batch, hook_name, **(model_kwargs or {}))  # [b, seq, d]
    mask = roles.mask(positions).to(hidden.device)  # [b, seq]
    b_idx, t_idx = torch.nonzero(mask, as_tuple=True)
    acts = hidden[b_idx, t_idx]
    out_dev = torch.device(device) if device is not None else acts.device
    acts = acts.to(device=out_dev, dtype=dtype or acts.dtype)
    b_cpu, t_cpu = b_idx.cpu(), t_idx.cpu()
    r = roles.to("cpu")
    offsets = batch_pad_offsets(r)
    return ActivationBatch(
        acts=acts,
        study_ids=list(batch.study_ids),
        study_index=b_cpu.long(),
        position=(t_cpu - offsets[b_cpu]).long(),
        role=r.role[b_cpu, t_cpu].to(torch.int8),
        image_slot=r.image_slot[b_cpu, t_cpu].to(torch.int8),
        patch_row=r.patch_row[b_cpu, t_cpu].to(torch.int16),
        patch_col=r.patch_col[b_cpu, t_cpu].to(torch.int16),
        token_id=batch.input_ids.cpu()[b_cpu, t_cpu].long(),
    )


def iter_activations(
    model: HookedMaira2,
    studies: Iterable[Study],
    hook_name: str,
    *,
    processor: Maira2Processor | None = None,
    batch_size: int = 8,
    positions: Selection = "all",
    with_report: bool = True,
    device: torch.device | str | None = None,
    task: str = "findings",
    norm_stats: RoleNormStats | None = None,
) -> Iterator[ActivationBatch]:
    """Yield the hook's activations at the selected positions, ``batch_size`` studies at a time.

    ``positions``: ``"all"``, ``"text"``, ``"report"``, ``"image"``, ``"image:frontal"``, a preset such as
    ``"maira2_sae_paper"``, ``'+'``-joined combinations, or ``callable(TokenRoles) -> bool [batch, seq]``.
    ``with_report`` teacher-forces each study's report after the prompt (role "report").
    ``norm_stats``, if given, is updated with every batch.
    """
    processor = processor if processor is not None else default_processor(model)
    for chunk in batched(studies, batch_size):
        batch = processor.build(chunk, task=task, with_report=with_report)
        out = activations_from_batch(model, batch, hook_name, positions, device=device)
        if norm_stats is not None:
            norm_stats.update_batch(out)
        yield out
