"""Feature steering and clamping at O(N·d_in·|F|) — only the chosen features are touched."""

from __future__ import annotations

import torch

from ._checks import check_float, check_index


def _coef(name, c, F, like):
    c = torch.as_tensor(c, device=like.device)
    if c.dim() == 0:
        c = c.expand(F)
    if c.shape[-1] != F:
        raise ValueError(f"{name} must have last dimension {F} (one per feature id), got {tuple(c.shape)}")
    return c.to(like.dtype)


def steer(
    hidden: torch.Tensor,
    W_dec: torch.Tensor,
    feature_ids: torch.Tensor,
    coefficients: torch.Tensor | float,
) -> torch.Tensor:
    """``hidden + Σ_f c_f · W_dec[f]`` for ``hidden [..., d_in]``.

    ``coefficients`` is ``[F]`` (same for every position), broadcastable ``[..., F]`` (per position), or
    a scalar. Differentiable (autograd through a ``[..., F] @ [F, d_in]`` product).
    """
    check_float("hidden", hidden)
    check_float("W_dec", W_dec, 2)
    d_sae, d_in = W_dec.shape
    if hidden.shape[-1] != d_in:
        raise ValueError(f"hidden has last dim {hidden.shape[-1]}, W_dec is [{d_sae}, {d_in}]")
    check_index("feature_ids", feature_ids, 1, d_sae)
    F = feature_ids.numel()
    dirs = W_dec.index_select(0, feature_ids.to(torch.long)).to(hidden.dtype)  # [F, d_in]
    c = _coef("coefficients", coefficients, F, hidden)
    return hidden + c @ dirs


def clamp(
    hidden: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    feature_ids: torch.Tensor,
    targets: torch.Tensor | float,
    *,
    b_dec: torch.Tensor | None = None,
    threshold: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Set the chosen features to ``targets``: ``hidden + (target − f) @ W_dec[F]``.

    ``f = act((hidden − b_dec) @ W_enc[:, F] + b_enc[F])`` with ``act`` = ReLU, or JumpReLU when
    ``threshold`` is given (``relu(pre) · (pre > threshold)``, SAELens's JumpReLU; ``threshold`` may be
    ``[d_sae]`` (the SAE's vector), ``[F]`` or a scalar). Only the ``F`` chosen columns are encoded.

    Exact for threshold-based inference (ReLU / JumpReLU, incl. BatchTopK SAEs run with their inference
    threshold): there every latent depends only on its own pre-activation, so editing ``F`` leaves the
    others unchanged and the SAE-reconstruction change is ``(target − f) @ W_dec[F]``. (Not exact for a
    per-row top-k activation, where changing one latent can change which others are kept.)
    """
    check_float("hidden", hidden)
    check_float("W_enc", W_enc, 2)
    check_float("b_enc", b_enc, 1)
    check_float("W_dec", W_dec, 2)
    d_in, d_sae = W_enc.shape
    if W_dec.shape != (d_sae, d_in) or b_enc.shape != (d_sae,) or hidden.shape[-1] != d_in:
        raise ValueError(
            f"shapes disagree: hidden [..., {hidden.shape[-1]}], W_enc {tuple(W_enc.shape)} ([d_in, d_sae]), "
            f"b_enc {tuple(b_enc.shape)}, W_dec {tuple(W_dec.shape)} ([d_sae, d_in])"
        )
    check_index("feature_ids", feature_ids, 1, d_sae)
    fid = feature_ids.to(torch.long)
    F = fid.numel()
    dt = hidden.dtype
    h = hidden if b_dec is None else hidden - b_dec.to(dt)
    pre = h @ W_enc.index_select(1, fid).to(dt) + b_enc.index_select(0, fid).to(dt)
    f = pre.relu()
    if threshold is not None:
        thr = torch.as_tensor(threshold, device=hidden.device, dtype=dt)
        if thr.dim() == 1 and thr.numel() == d_sae and d_sae != F:
            thr = thr.index_select(0, fid)
        f = f * (pre > thr)
    t = _coef("targets", targets, F, hidden)
    return hidden + (t - f) @ W_dec.index_select(0, fid).to(dt)
