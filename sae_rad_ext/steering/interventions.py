"""SAE-feature interventions at a hook point, restricted to token roles and generation steps.

An :class:`Intervention` edits the residual stream (or any hook the SAE reads) at the positions a
:class:`~sae_rad_ext.adapters.roles.TokenRoles` selection keeps, during the forward passes you choose:

- ``"add"``    ``h + Σ_f c_f · W_dec[f]`` (or a custom ``direction``, e.g. a random control);
- ``"clamp"``  set features to target values: ``h + (t − f(h)) @ W_dec[F]``, where ``f(h)`` encodes only
  the chosen features (``O(N·d·|F|)``, :func:`sae_rad_ext.kernels.clamp`). Everything the SAE does not
  reconstruct (its error term) and every other feature's contribution is left as it was, because only
  the difference is added;
- ``"scale"``  multiply the chosen features' activations by factors (``t = s · f``; ``s = 1`` is a no-op);
- ``"ablate"`` clamp to 0.

Positions are absolute, in the padded coordinates of the batch: prompt positions take their role from
the batch, generated positions are ``REPORT``. ``steps`` are forward passes: step 0 is the prefill (the
whole prompt), step ``j ≥ 1`` is the decoding pass that reads generated token ``j − 1`` and writes token
``j`` (an edit during the prefill also lives on in the KV cache). An edit applies to position ``p`` in
step ``j`` iff ``p`` is selected and ``j`` is in ``steps`` (``None``: every step).

The hooks work the same outside generation (``run_with_hooks`` / ``run_with_cache``: one chunk at
offset 0), so they serve lesioning and patching too: a ``"clamp"`` with a per-position target tensor
``[batch, positions, F]`` patches recorded activations in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens import SAE

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.roles import Role, Selection, TokenRoles
from sae_rad_ext.kernels import clamp as clamp_kernel
from sae_rad_ext.kernels import steer as steer_kernel

__all__ = [
    "THRESHOLD_ARCHITECTURES",
    "Intervention",
    "SaeView",
    "extend_roles",
    "intervention_hooks",
    "position_hook",
    "sae_hook_name",
]

Kind = Literal["add", "clamp", "scale", "ablate"]
KINDS: tuple[str, ...] = ("add", "clamp", "scale", "ablate")

THRESHOLD_ARCHITECTURES: frozenset[str] = frozenset({"standard", "jumprelu", "rad_matryoshka_batchtopk"})
"""SAE architectures whose latents depend only on their own pre-activation (ReLU / JumpReLU /
threshold inference): for them encoding only the chosen columns is exact."""


@dataclass(frozen=True)
class Intervention:
    """One edit of SAE features at a hook.

    ``value`` means: ``"add"`` coefficient(s) ``c_f``; ``"clamp"`` target activation(s); ``"scale"``
    factor(s); ignored for ``"ablate"``. It is a scalar (all features), one per feature ``[F]``, or a
    per-position tensor ``[batch, positions, F]`` in the padded coordinates of the batch (prompt +
    generated positions; the batch must then be generated in one piece).
    """

    features: int | Sequence[int]
    """SAE latent id(s) ``F``."""
    kind: Kind = "add"
    """``"add"``, ``"clamp"``, ``"scale"`` or ``"ablate"`` (see the module docstring)."""
    value: float | Sequence[float] | torch.Tensor = 1.0
    """Coefficient / target / factor: scalar, ``[F]`` or ``[batch, positions, F]``."""
    positions: Selection = "all"
    """A ``TokenRoles.mask`` selection (``"image"``, ``"report"``, ``"image:frontal"``, ``"all"``, a callable)."""
    steps: Sequence[int] | None = None
    """Forward passes to edit in: 0 = prefill, ``j`` = the pass producing new token ``j``; None = all."""
    direction: torch.Tensor | None = None
    """``"add"`` only: ``[d_in]`` or ``[F, d_in]`` vectors used instead of ``W_dec[F]`` (controls)."""
    hook_name: str | None = None
    """Hook to edit; default: the SAE's ``cfg.metadata.hook_name``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Intervention.kind must be one of {KINDS}, got {self.kind!r}")
        feats = self.feature_ids
        if feats.numel() == 0:
            raise ValueError("Intervention.features is empty; give at least one SAE latent id")
        if self.direction is not None:
            if self.kind != "add":
                raise ValueError(f"a custom direction only makes sense with kind='add', not {self.kind!r}")
            if self.direction.dim() not in (1, 2):
                raise ValueError(f"direction must be [d_in] or [F, d_in], got {tuple(self.direction.shape)}")
            if self.direction.dim() == 2 and self.direction.shape[0] != feats.numel():
                raise ValueError(f"direction has {self.direction.shape[0]} rows for {feats.numel()} features")
        if self.steps is not None and any(int(s) < 0 for s in self.steps):
            raise ValueError(f"steps must be ≥ 0 (0 = prefill), got {list(self.steps)}")

    @property
    def feature_ids(self) -> torch.Tensor:
        """``long [F]``."""
        f = self.features
        return torch.as_tensor([f] if isinstance(f, int) else list(f), dtype=torch.long)


def sae_hook_name(sae: SAE[Any]) -> str:
    """The hook an SAELens SAE reads (``cfg.metadata.hook_name``); raises if it is not recorded."""
    name = sae.cfg.metadata.hook_name  # SAELens metadata: a missing key reads as None
    if not name:
        raise ValueError(
            "the SAE's cfg.metadata has no hook_name; pass Intervention(hook_name=...) explicitly"
        )
    return str(name)


class SaeView:
    """The SAE weights an intervention needs, on the model's device and dtype.

    Threshold-inference architectures (:data:`THRESHOLD_ARCHITECTURES`) encode only the chosen columns
    (exact); any other SAELens SAE (TopK, gated, …) is encoded in full by ``sae.encode`` and the
    chosen columns taken (correct, ``O(N·d·d_sae)``).
    """

    def __init__(self, sae: SAE[Any], device: torch.device | str, dtype: torch.dtype) -> None:
        cfg = sae.cfg
        norm = getattr(cfg, "normalize_activations", "none")
        if norm in (
            "constant_norm_rescale",
            "layer_norm",
        ):  # per-token run-time rescaling (others are folded)
            raise ValueError(
                f"SAE normalize_activations={norm!r} rescales every token at run time, so a feature's "
                "contribution to the hook is not W_dec[f]; interventions need an SAE that reads the raw hook "
                "activations (normalize_activations 'none', or a folded 'expected_average_only_in')"
            )
        if str(getattr(cfg.metadata, "hook_name", "") or "").endswith("_z"):
            raise ValueError("hook_z SAEs (per-head reshaping) are not supported by the intervention hooks")
        self.sae = sae
        self.arch = cfg.architecture()
        self.exact = self.arch in THRESHOLD_ARCHITECTURES
        kw = {"device": device, "dtype": dtype}
        self.W_enc = sae.W_enc.detach().to(**kw)  # [d_in, d_sae]
        self.b_enc = sae.b_enc.detach().to(**kw)  # [d_sae]
        self.W_dec = sae.W_dec.detach().to(**kw)  # [d_sae, d_in]
        self.b_dec_in = sae.b_dec.detach().to(**kw) if getattr(cfg, "apply_b_dec_to_input", False) else None
        thr = getattr(sae, "threshold", None)  # JumpReLU-style architectures only (not on the SAE base class)
        self.threshold = thr.detach().to(**kw) if isinstance(thr, torch.Tensor) else None
        self.d_in, self.d_sae = int(self.W_enc.shape[0]), int(self.W_enc.shape[1])

    def check_ids(self, fid: torch.Tensor) -> None:
        if fid.numel() and (int(fid.min()) < 0 or int(fid.max()) >= self.d_sae):
            raise ValueError(f"feature ids {fid.tolist()} out of range for an SAE with d_sae={self.d_sae}")

    @torch.no_grad()
    def encode_selected(self, h: torch.Tensor, fid: torch.Tensor) -> torch.Tensor:
        """Activations of features ``fid`` for ``h [..., d_in]`` → ``[..., F]``."""
        fid = fid.to(h.device)
        if not self.exact:
            z = self.sae.encode(h.to(self.sae.W_enc.dtype).to(self.sae.W_enc.device))
            return z.index_select(-1, fid.to(z.device)).to(h.device, h.dtype)
        x = h if self.b_dec_in is None else h - self.b_dec_in
        pre = x @ self.W_enc.index_select(1, fid) + self.b_enc.index_select(0, fid)
        f = pre.relu()
        if self.threshold is not None:
            f = f * (pre > self.threshold.index_select(0, fid))
        return f


def extend_roles(roles: TokenRoles, n_new: int) -> TokenRoles:
    """``roles`` followed by ``n_new`` generated positions with role REPORT."""
    if n_new <= 0:
        return roles
    B = roles.shape[0]
    dev = roles.role.device
    minus = torch.full((B, n_new), -1, device=dev)
    gen = TokenRoles(
        torch.full((B, n_new), int(Role.REPORT), dtype=torch.int8, device=dev),
        minus.to(torch.int8),
        minus.to(torch.int16),
        minus.to(torch.int16),
    )
    return TokenRoles(*(torch.cat([a, b], 1) for a, b in zip(roles.as_tuple(), gen.as_tuple(), strict=True)))


def position_hook(
    edit: Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor],
    mask: torch.Tensor,
    prompt_len: int,
    steps: Sequence[int] | None,
    offset: Callable[[], int],
) -> Callable:
    """A TransformerLens hook calling ``edit(chunk [B, L, d], chunk_mask [B, L], positions slice)`` on the
    selected positions of the chunk being processed, only in the chosen steps.

    ``mask`` is ``bool [B, T_total]`` over absolute (padded) positions; ``offset()`` returns where the
    current chunk starts (``HookedMaira2.position_offset``). General: knowledge maps reuse it for
    lesions and patches.
    """
    step_set = None if steps is None else {int(s) for s in steps}

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        off = int(offset())
        L = act.shape[1]
        if step_set is not None:
            step = 0 if off == 0 else off - prompt_len + 1
            if step not in step_set:
                return act
        if off + L > mask.shape[1]:
            raise RuntimeError(
                f"chunk at positions {off}..{off + L} runs past the intervention mask "
                f"({mask.shape[1]} positions); raise max_new_tokens when building the hooks"
            )
        m = mask[:, off : off + L].to(act.device)
        if m.shape[0] != act.shape[0]:
            raise RuntimeError(
                f"hook sees batch {act.shape[0]}, the intervention mask was built for {m.shape[0]}"
            )
        if not bool(m.any()):
            return act
        return edit(act, m, slice(off, off + L))

    return hook


def _per_position(value: Any, F: int, pos: slice, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 3:
        if v.shape[0] != like.shape[0] or v.shape[2] != F or v.shape[1] < pos.stop:
            raise ValueError(
                f"a per-position value must be [batch={like.shape[0]}, ≥{pos.stop} positions, F={F}]; "
                f"got {tuple(v.shape)}"
            )
        return v[:, pos]
    if v.dim() == 0:
        return v.expand(F)
    if v.dim() == 1 and v.numel() == F:
        return v
    raise ValueError(f"value must be a scalar, [F={F}] or [batch, positions, F]; got shape {tuple(v.shape)}")


def _make_edit(
    view: SaeView | None, iv: Intervention
) -> Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]:
    fid = iv.feature_ids
    F = fid.numel()

    def edit(act: torch.Tensor, m: torch.Tensor, pos: slice) -> torch.Tensor:
        f_ids = fid.to(act.device)
        if iv.kind == "add":
            c = _per_position(iv.value, F, pos, act)
            if iv.direction is not None:
                d = iv.direction.to(act.device, act.dtype)
                dirs = d.expand(F, -1) if d.dim() == 1 else d
                new = steer_kernel(act, dirs, torch.arange(F, device=act.device), c)
            else:
                new = steer_kernel(act, view.W_dec, f_ids, c)
        elif iv.kind == "scale" or not view.exact:
            f = view.encode_selected(act, f_ids)
            if iv.kind == "scale":
                t = f * _per_position(iv.value, F, pos, act)
            else:
                t = torch.zeros_like(f) + (
                    0.0 if iv.kind == "ablate" else _per_position(iv.value, F, pos, act)
                )
            new = steer_kernel(act, view.W_dec, f_ids, t - f)
        else:
            t = 0.0 if iv.kind == "ablate" else _per_position(iv.value, F, pos, act)
            new = clamp_kernel(
                act,
                view.W_enc,
                view.b_enc,
                view.W_dec,
                f_ids,
                t,
                b_dec=view.b_dec_in,
                threshold=view.threshold,
            )
        return torch.where(m[..., None], new, act)

    return edit


def intervention_hooks(
    model: HookedMaira2,
    sae: SAE[Any] | None,
    interventions: Sequence[Intervention],
    roles: TokenRoles,
    prompt_len: int,
    n_new: int = 0,
) -> list[tuple[str, Callable]]:
    """``fwd_hooks`` for ``HookedMaira2.generate`` / ``run_with_hooks`` applying ``interventions``.

    ``roles`` is the batch's role table ``[B, prompt_len]`` (or already covering every position);
    ``n_new`` generated positions are appended as REPORT. ``sae`` may be None when every intervention
    is an ``"add"`` with its own ``direction``.
    """
    if roles.shape[1] < prompt_len:
        raise ValueError(f"roles cover {roles.shape[1]} positions, fewer than prompt_len={prompt_len}")
    full = extend_roles(roles, prompt_len + n_new - roles.shape[1])
    view = None
    if sae is not None:
        p = next(model.model.parameters())
        view = SaeView(sae, p.device, p.dtype)
    hooks = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"interventions must be Intervention objects, got {type(iv).__name__}")
        if view is None and not (iv.kind == "add" and iv.direction is not None):
            raise ValueError(f"{iv.kind!r} of features {iv.feature_ids.tolist()} needs an SAE; pass sae=")
        if view is not None:
            view.check_ids(iv.feature_ids)
            if iv.direction is not None and iv.direction.shape[-1] != view.d_in:
                raise ValueError(
                    f"direction has width {iv.direction.shape[-1]}, the SAE's d_in is {view.d_in}"
                )
        name = iv.hook_name or (sae_hook_name(sae) if sae is not None else None)
        if name is None:
            raise ValueError("an SAE-free intervention needs Intervention(hook_name=...)")
        model.check_hook_name(name)
        mask = full.mask(iv.positions)
        hooks.append(
            (
                name,
                position_hook(
                    _make_edit(view, iv), mask, prompt_len, iv.steps, lambda: model.position_offset
                ),
            )
        )
    return hooks
