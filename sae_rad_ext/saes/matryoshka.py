"""Matryoshka BatchTopK SAE for SAELens — the inference side (config, SAE class, level metrics).

Architecture name :data:`MATRYOSHKA_ARCHITECTURE` (``"rad_matryoshka_batchtopk"``) is registered with
SAELens for inference (this module) and training (:mod:`sae_rad_ext.saes.matryoshka_training`) when
``sae_rad_ext`` is imported, so ``SAE.load_from_disk`` / ``SAE.from_pretrained`` return
:class:`RadMatryoshkaSAE`.

Unlike stock ``matryoshka_batchtopk`` (saved as a flat ``jumprelu``), the nested groups survive saving:
``cfg.json`` keeps ``group_sizes`` (and ``level_ends``), and every method takes ``level=i`` to use only
groups ``0..i``. Inference follows dictionary_learning's Matryoshka BatchTopK: ``relu(pre)`` kept where
it is above the EMA ``threshold`` learnt in training. Decoding runs through ``sae_rad_ext.kernels``
(sparse gather-sum over the active latents, not a dense ``[N, d_sae] @ W_dec``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.saes.sae import SAE, SAEConfig
from torch import nn
from typing_extensions import override

from sae_rad_ext import kernels as K

MATRYOSHKA_ARCHITECTURE = "rad_matryoshka_batchtopk"

# above this fraction of non-zeros a dense ``z @ W_dec`` beats the sparse gather-sum on CPU
_DENSE_DECODE_FRACTION = 1 / 16


def resolve_group_sizes(
    d_sae: int,
    group_sizes: Sequence[int] | None = None,
    group_fractions: Sequence[float] | None = None,
) -> list[int]:
    """Group sizes from explicit ``group_sizes`` or dictionary_learning's ``group_fractions``.

    Fractions follow dictionary_learning: ``int(f · d_sae)`` for every group but the last, the remainder
    to the last group. Explicit sizes must sum to ``d_sae``. If both are given they must agree.
    """
    if d_sae <= 0:
        raise ValueError(f"d_sae must be positive, got {d_sae}")
    from_fractions = None
    if group_fractions is not None:
        fr = [float(f) for f in group_fractions]
        if not fr or any(not (f > 0) for f in fr):
            raise ValueError(f"group_fractions must be a non-empty list of positive numbers, got {fr}")
        if not math.isclose(sum(fr), 1.0, rel_tol=1e-6, abs_tol=1e-6):
            raise ValueError(f"group_fractions must sum to 1.0, got {fr} (sum {sum(fr)})")
        sizes = [int(f * d_sae) for f in fr[:-1]]
        sizes.append(d_sae - sum(sizes))
        if any(s <= 0 for s in sizes):
            raise ValueError(
                f"group_fractions {fr} give an empty group for d_sae={d_sae} (sizes {sizes}); "
                "use larger fractions or fewer groups"
            )
        from_fractions = sizes
    if group_sizes is not None:
        sizes = [int(s) for s in group_sizes]
        if not sizes or any(s <= 0 for s in sizes) or any(int(s) != s for s in group_sizes):
            raise ValueError(
                f"group_sizes must be a non-empty list of positive ints, got {list(group_sizes)}"
            )
        if sum(sizes) != d_sae:
            raise ValueError(
                f"group_sizes {sizes} sum to {sum(sizes)}, expected d_sae={d_sae}; "
                "give sizes that add up to d_sae or use group_fractions (remainder goes to the last group)"
            )
        if from_fractions is not None and from_fractions != sizes:
            raise ValueError(
                f"group_sizes {sizes} disagree with group_fractions {list(group_fractions or [])} "
                f"(which give {from_fractions} for d_sae={d_sae}); give only one of them"
            )
        return sizes
    if from_fractions is not None:
        return from_fractions
    raise ValueError("give group_fractions (e.g. [0.25, 0.25, 0.5]) or group_sizes (summing to d_sae)")


def level_ends_of(group_sizes: Sequence[int]) -> list[int]:
    """Cumulative ends: level ``i`` uses latents ``[0, level_ends[i])``."""
    ends, acc = [], 0
    for s in group_sizes:
        acc += int(s)
        ends.append(acc)
    return ends


@dataclass
class LevelMetrics:
    """Reconstruction quality of every Matryoshka level on one batch."""

    level_ends: list[int]
    """Cumulative latent count of each level (level ``i`` uses latents ``[0, level_ends[i])``)."""
    explained_variance: torch.Tensor
    """``[G]`` ``1 − Σ‖x − x̂_{≤i}‖² / Σ‖x − mean(x)‖²`` (SAELens's ``metrics/explained_variance``)."""
    l0: torch.Tensor
    """``[G]`` mean number of active latents per token among the level's latents."""
    mse: torch.Tensor
    """``[G]`` mean over tokens of ``‖x − x̂_{≤i}‖²`` (summed over ``d_in``)."""


@dataclass
class RadMatryoshkaSAEConfig(SAEConfig):
    """Inference config of the Matryoshka BatchTopK SAE.

    Args:
        k: average active latents per token in training (BatchTopK); kept for reference — inference
            keeps every activation above ``threshold``.
        group_sizes: size of each nested group; level ``i`` uses groups ``0..i``. Must sum to ``d_sae``.
    """

    k: float = 64
    group_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.group_sizes:
            self.group_sizes = [self.d_sae]
        self.group_sizes = resolve_group_sizes(self.d_sae, group_sizes=self.group_sizes)

    @override
    @classmethod
    def architecture(cls) -> str:
        return MATRYOSHKA_ARCHITECTURE

    @property
    def level_ends(self) -> list[int]:
        return level_ends_of(self.group_sizes)

    @property
    def n_levels(self) -> int:
        return len(self.group_sizes)

    @override
    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["level_ends"] = self.level_ends  # informative; ignored by from_dict (not a field)
        return d


def level_end(level_ends: Sequence[int], level: int | None) -> int:
    """Number of latents used at ``level`` (``None`` → all). Clear error for a bad level."""
    if level is None:
        return int(level_ends[-1])
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be an int in [0, {len(level_ends)}) or None, got {level!r}")
    if not 0 <= level < len(level_ends):
        raise ValueError(
            f"level must be in [0, {len(level_ends)}) (there are {len(level_ends)} levels), got {level}"
        )
    return int(level_ends[level])


def dense_to_csr(z: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-zeros of ``z[:, :end]`` (dense or sparse COO ``[N, d_sae]``) as flat CSR
    ``(indices [nnz], values [nnz], offsets [N+1])``; ``values`` stays differentiable w.r.t. ``z``."""
    N = z.shape[0]
    if z.is_sparse:
        z = z.coalesce()
        rows, cols = z.indices()
        vals = z.values()
        keep = (cols < end) & (vals != 0)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    else:
        zz = z[:, :end]
        rows, cols = zz.nonzero(as_tuple=True)
        vals = zz[rows, cols]
    offsets = torch.zeros(N + 1, dtype=torch.long, device=z.device)
    if rows.numel():
        torch.cumsum(torch.bincount(rows, minlength=N), 0, out=offsets[1:])
    return cols, vals, offsets


def decode_codes(z: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None, end: int) -> torch.Tensor:
    """``z[:, :end] @ W_dec[:end] + b_dec`` for 2-D ``z``: sparse kernel decode of the non-zeros, or a
    dense matmul when ``z`` is mostly non-zero (an edited/dense code)."""
    if not z.is_sparse:
        nnz = int((z[:, :end] != 0).sum())
        if nnz > _DENSE_DECODE_FRACTION * z.shape[0] * max(end, 1):
            out = z[:, :end].to(W_dec.dtype) @ W_dec[:end]
            return out + b_dec if b_dec is not None else out
    idx, vals, offsets = dense_to_csr(z, end)
    return K.sparse_decode_flat(idx, vals.to(W_dec.dtype), offsets, W_dec, b_dec)


class RadMatryoshkaSAE(SAE[RadMatryoshkaSAEConfig]):
    """Inference Matryoshka BatchTopK SAE: ``encode(x, level)``, ``decode(z, level)``, ``level_metrics``.

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``,
    ``threshold [d_sae]`` (the training EMA threshold; a negative value keeps every positive activation,
    as dictionary_learning does before the EMA starts).
    """

    b_enc: nn.Parameter
    threshold: nn.Parameter

    def __init__(self, cfg: RadMatryoshkaSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))

    # -- structure -------------------------------------------------------------------------------
    @property
    def group_sizes(self) -> list[int]:
        return list(self.cfg.group_sizes)

    @property
    def level_ends(self) -> list[int]:
        return self.cfg.level_ends

    @property
    def n_levels(self) -> int:
        return self.cfg.n_levels

    # -- encode / decode -------------------------------------------------------------------------
    def _encode_2d(self, sae_in: torch.Tensor, end: int) -> torch.Tensor:
        hidden_pre = sae_in @ self.W_enc[:, :end] + self.b_enc[:end]
        if end < self.cfg.d_sae:  # keep the hook's shape [.., d_sae]
            hidden_pre = torch.cat(
                [hidden_pre, hidden_pre.new_zeros(*hidden_pre.shape[:-1], self.cfg.d_sae - end)], -1
            )
        hidden_pre = self.hook_sae_acts_pre(hidden_pre)
        acts = hidden_pre.relu()
        acts = acts * (acts > self.threshold)
        return acts

    @override
    def encode(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Feature activations ``[..., d_sae]``; with ``level=i`` only latents of groups ``0..i`` are
        computed (the others are 0)."""
        end = level_end(self.level_ends, level)
        sae_in = self.process_sae_in(x)
        return self.hook_sae_acts_post(self._encode_2d(sae_in, end))

    @override
    def decode(self, feature_acts: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Reconstruction from ``feature_acts [..., d_sae]`` (dense or sparse COO) using only groups
        ``0..level`` (``None``: all)."""
        end = level_end(self.level_ends, level)
        lead = feature_acts.shape[:-1]
        z = feature_acts if feature_acts.dim() == 2 else feature_acts.reshape(-1, feature_acts.shape[-1])
        out = decode_codes(z, self.W_dec, self.b_dec, end)
        out = out.reshape(*lead, out.shape[-1])
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    @override
    def forward(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        if level is None:
            return super().forward(x)
        feature_acts = self.encode(x, level=level)
        return self.hook_sae_output(self.decode(feature_acts, level=level))

    # -- metrics ---------------------------------------------------------------------------------
    @torch.no_grad()
    def level_metrics(self, x: torch.Tensor) -> LevelMetrics:
        """Explained variance, L0 and MSE of every level on ``x [..., d_in]`` from one encode and one
        all-prefix sparse decode (``kernels.matryoshka_decode``)."""
        if self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise NotImplementedError(
                f"level_metrics does not support normalize_activations={self.cfg.normalize_activations!r} "
                "(per-row normalisation); compare decode(encode(x, level=i), level=i) with x instead"
            )
        acts = self.encode(x)
        z = acts.reshape(-1, self.cfg.d_sae)
        xx = self.reshape_fn_in(x).reshape(-1, self.cfg.d_in).to(self.dtype)
        idx, vals, offsets = dense_to_csr(z, self.cfg.d_sae)
        ends = self.level_ends
        recons = K.matryoshka_decode(idx, vals, self.W_dec, ends, self.b_dec, offsets=offsets)  # [G, N, d]
        xf = xx.float()
        err = (recons.float() - xf).pow(2).sum(-1)  # [G, N]
        total_var = (xf - xf.mean(0)).pow(2).sum(-1).mean()
        mse = err.mean(1)
        ends_t = torch.tensor(ends, device=idx.device)
        grp = torch.bucketize(idx, ends_t, right=True)
        per_group = torch.bincount(grp, minlength=len(ends)).float()
        l0 = per_group.cumsum(0) / max(z.shape[0], 1)
        return LevelMetrics(level_ends=list(ends), explained_variance=1 - mse / total_var, l0=l0, mse=mse)

    # -- folding ---------------------------------------------------------------------------------
    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Fold decoder norms into the encoder; the threshold scales with each latent's norm (exact)."""
        current = self.threshold.clone()
        norms = self.fold_and_get_W_dec_norm()
        self.threshold.data = current * norms
