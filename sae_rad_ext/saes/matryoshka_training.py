"""Matryoshka BatchTopK SAE for SAELens — the training side, on the sparse kernels.

``LanguageModelSAERunnerConfig(sae=RadMatryoshkaBatchTopKTrainingSAEConfig(...))`` trains it with the
stock SAELens runner/trainer; the saved inference folder loads as
:class:`sae_rad_ext.saes.matryoshka.RadMatryoshkaSAE` (groups kept in ``cfg.json``).

Two loss modes:

* ``"dictionary_learning"`` (default) — as microsoft/maira-2-sae was trained
  (dictionary_learning's ``MatryoshkaBatchTopKTrainer``): ``Σ_i w_i · mean_n ‖x − x̂_{≤i}‖²`` with
  ``group_weights`` (default ``1/G``), plus ``auxk_alpha`` × the aux-k loss normalised by the residual's
  variance (``top_k_aux = d_in // 2``, post-ReLU dead pre-activations), unit-norm decoder rows with the
  gradient component parallel to each row removed, ``b_dec`` initialised to the geometric median of the
  first batch, and an EMA inference threshold (``β = threshold_beta`` from ``threshold_start_step``).
* ``"saelens"`` — exactly stock ``matryoshka_batchtopk``: every level weight 1, summed, the stock TopK
  aux loss (``aux_loss_coefficient``, no variance normalisation), stock ``topk_threshold`` EMA
  (``topk_threshold_lr``), optional ``rescale_acts_by_decoder_norm``.

The training step never builds a dense ``[N, d_sae]`` tensor: batch-top-k selection, decoding, all
level losses and their backward go through ``sae_rad_ext.kernels``. ``TrainStepOutput.feature_acts`` is
a sparse COO ``[N, d_sae]`` tensor (what SAELens's trainer already handles for ``use_sparse_activations``)
and ``hidden_pre`` holds the kept pre-activations in the same sparse layout.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.batchtopk_sae import BatchTopK as DenseBatchTopK
from sae_lens.saes.sae import (
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from typing_extensions import override

from sae_rad_ext import kernels as K
from sae_rad_ext.saes.matryoshka import (
    MATRYOSHKA_ARCHITECTURE,
    RadMatryoshkaSAEConfig,
    decode_codes,
    level_ends_of,
    resolve_group_sizes,
)

LossMode = Literal["dictionary_learning", "saelens"]


@dataclass
class RadMatryoshkaBatchTopKTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the Matryoshka BatchTopK SAE (architecture ``"rad_matryoshka_batchtopk"``).

    Args:
        k: average active latents per token; BatchTopK keeps the ``int(k · N)`` largest post-ReLU
            activations of a batch of ``N`` tokens.
        group_fractions: dictionary_learning's fractions of ``d_sae`` per group (sum 1; remainder of the
            integer split goes to the last group).
        group_sizes: explicit group sizes summing to ``d_sae`` (instead of, or agreeing with, fractions).
        group_weights: per-level loss weights; default ``1/G`` in ``"dictionary_learning"`` mode, ``1`` in
            ``"saelens"`` mode (where other weights are rejected: stock sums the levels).
        loss_mode: ``"dictionary_learning"`` or ``"saelens"`` (see the module docstring).
        auxk_alpha: weight of the variance-normalised aux-k loss (dictionary_learning mode).
        aux_loss_coefficient: weight of the stock TopK aux loss (saelens mode).
        top_k_aux: dead latents used by the aux loss; default ``d_in // 2``.
        threshold_beta, threshold_start_step: EMA of the minimum kept activation (dictionary_learning
            mode; updated once ``n_training_steps > threshold_start_step``).
        topk_threshold_lr: stock ``topk_threshold`` EMA rate (saelens mode, every step).
        normalize_decoder: dictionary_learning's unit-norm decoder rows + parallel-gradient removal.
        init_b_dec_geometric_median: dictionary_learning's ``b_dec`` init on the first batch.
        rescale_acts_by_decoder_norm: stock TopK option (saelens mode only): select and decode as if
            the decoder rows had unit norm; folded into the weights when saving for inference.
        reuse_grad_buffers: let the kernels keep the dense ``W_dec`` gradient buffer between steps and
            re-zero only the rows touched last step (safe with SAELens's trainer, which drops grads
            after each optimizer step).
    """

    k: float = 64  # type: ignore[assignment]
    group_fractions: list[float] | None = None
    group_sizes: list[int] | None = None
    group_weights: list[float] | None = None
    loss_mode: LossMode = "dictionary_learning"
    auxk_alpha: float = 1 / 32
    aux_loss_coefficient: float = 1.0
    top_k_aux: int | None = None
    threshold_beta: float = 0.999
    threshold_start_step: int = 1000
    topk_threshold_lr: float = 0.01
    normalize_decoder: bool = True
    init_b_dec_geometric_median: bool = True
    rescale_acts_by_decoder_norm: bool = False
    reuse_grad_buffers: bool = True

    def __post_init__(self) -> None:
        if self.loss_mode not in ("dictionary_learning", "saelens"):
            raise ValueError(f"loss_mode must be 'dictionary_learning' or 'saelens', got {self.loss_mode!r}")
        if not self.k > 0:
            raise ValueError(f"k must be positive, got {self.k}")
        self.group_sizes = resolve_group_sizes(self.d_sae, self.group_sizes, self.group_fractions)
        G = len(self.group_sizes)
        if self.group_weights is not None:
            w = [float(v) for v in self.group_weights]
            if len(w) != G:
                raise ValueError(
                    f"group_weights has {len(w)} entries but there are {G} groups {self.group_sizes}"
                )
            if self.loss_mode == "saelens" and any(v != 1.0 for v in w):
                raise ValueError(
                    "loss_mode='saelens' sums the levels with weight 1 (as stock matryoshka_batchtopk); "
                    "use loss_mode='dictionary_learning' for other group_weights"
                )
            self.group_weights = w
        if self.normalize_activations in ("constant_norm_rescale", "layer_norm"):
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported by "
                f"{MATRYOSHKA_ARCHITECTURE} (per-row normalisation would have to be undone for every level); "
                "use 'none', 'expected_average_only_in' or 'covariance_whitening'"
            )
        if self.rescale_acts_by_decoder_norm and self.loss_mode != "saelens":
            raise ValueError(
                "rescale_acts_by_decoder_norm is a stock SAELens option: use it with loss_mode='saelens' "
                "(dictionary_learning mode keeps unit-norm decoder rows instead)"
            )
        if self.top_k_aux is not None and self.top_k_aux <= 0:
            raise ValueError(f"top_k_aux must be positive, got {self.top_k_aux}")
        super().__post_init__()

    @override
    @classmethod
    def architecture(cls) -> str:
        return MATRYOSHKA_ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return RadMatryoshkaSAEConfig

    @property
    def level_ends(self) -> list[int]:
        return level_ends_of(self.group_sizes or [self.d_sae])

    @property
    def level_weights(self) -> list[float]:
        """Effective per-level loss weights."""
        G = len(self.group_sizes or [self.d_sae])
        if self.group_weights is not None:
            return list(self.group_weights)
        return [1.0] * G if self.loss_mode == "saelens" else [1.0 / G] * G

    @override
    def get_inference_sae_cfg_dict(self) -> dict[str, Any]:
        d = super().get_inference_sae_cfg_dict()
        d["level_ends"] = self.level_ends
        return d


class RadMatryoshkaBatchTopKTrainingSAE(TrainingSAE[RadMatryoshkaBatchTopKTrainingSAEConfig]):
    """Matryoshka BatchTopK training SAE whose step runs on ``sae_rad_ext.kernels``.

    Buffers: ``topk_threshold`` (double scalar; ``-1`` = not yet set in dictionary_learning mode).
    """

    b_enc: nn.Parameter
    topk_threshold: torch.Tensor

    def __init__(self, cfg: RadMatryoshkaBatchTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        init = -1.0 if cfg.loss_mode == "dictionary_learning" else 0.0
        self.register_buffer(
            "topk_threshold", torch.tensor(init, dtype=torch.double, device=self.W_dec.device)
        )
        self._hooked_W_dec: weakref.ref | None = None  # weakref: a Parameter attribute would register
        # dictionary_learning renormalises W_dec after every optimizer step; here that happens at the
        # start of the next forward, so after a training step one renormalisation is pending until then
        # (applied before folding the activation scale and before saving, never after folding).
        self._renorm_pending = False
        self.setup()

    @property
    def _dl(self) -> bool:
        return self.cfg.loss_mode == "dictionary_learning"

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        if self.cfg.loss_mode == "dictionary_learning" and self.cfg.normalize_decoder:
            with torch.no_grad():  # dictionary_learning: unit-norm rows, W_enc = W_decᵀ
                self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                self.W_enc.data = self.W_dec.data.T.clone().contiguous()

    @override
    def get_activation_fn(self):
        return DenseBatchTopK(self.cfg.k)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    @property
    def level_ends(self) -> list[int]:
        return self.cfg.level_ends

    # -- dense path (SAELens encode/forward/evals) ------------------------------------------------
    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense BatchTopK codes (for SAELens's ``encode``/``forward``/evals; training uses the kernels)."""
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        feature_acts = self.hook_sae_acts_post(self.activation_fn(hidden_pre))
        return feature_acts, hidden_pre

    @override
    def decode(self, feature_acts: torch.Tensor, level: int | None = None) -> torch.Tensor:
        from sae_rad_ext.saes.matryoshka import level_end

        end = level_end(self.level_ends, level)
        lead = feature_acts.shape[:-1]
        z = feature_acts if feature_acts.dim() == 2 else feature_acts.reshape(-1, feature_acts.shape[-1])
        if self.cfg.rescale_acts_by_decoder_norm:
            z = z * (1 / self.W_dec.norm(dim=-1))
        out = decode_codes(z, self.W_dec, self.b_dec, end).reshape(*lead, self.cfg.d_in)
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    @override
    def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):  # noqa: ARG002
        # The kernel step computes the aux loss from sparse pieces (see training_forward_pass); this
        # dense-signature hook exists for SAELens's abstract interface only.
        raise NotImplementedError(
            "RadMatryoshkaBatchTopKTrainingSAE computes its aux loss inside training_forward_pass"
        )

    # -- the kernel training step -----------------------------------------------------------------
    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        cfg = self.cfg
        x = step_input.sae_in
        if x.dim() != 2:
            x = x.reshape(-1, cfg.d_in)
        x = x.to(self.dtype)
        if self._dl and cfg.init_b_dec_geometric_median and step_input.n_training_steps == 0:
            with torch.no_grad():
                self.b_dec.data.copy_(geometric_median(x.float()).to(self.dtype))
        if self._dl and cfg.normalize_decoder:
            self._install_decoder_grad_hook()
            self.renormalize_decoder_()
            self._renorm_pending = True  # the optimizer step after this forward moves W_dec off the sphere

        # x − b_dec is formed inside the encoder (``pre_bias``): its backward gives b_dec the gradient
        # −W_enc·Σ_n ∂pre[n] directly instead of a dense [N, d_in] gradient for the centred input.
        x_in = self._encoder_input(x)
        pre_bias = self.b_dec if cfg.apply_b_dec_to_input else None
        W_enc, b_enc, inv_norm = self.W_enc, self.b_enc, None
        if cfg.rescale_acts_by_decoder_norm:
            norm = self.W_dec.norm(dim=-1)
            W_enc, b_enc, inv_norm = W_enc * norm, b_enc * norm, 1 / norm
        codes = K.batch_topk_encode(x_in, W_enc, b_enc, cfg.k, pre_bias=pre_bias)
        idx, offsets = codes.indices, codes.offsets
        vals = codes.values if inv_norm is None else codes.values * inv_norm.index_select(0, idx)

        reuse = cfg.reuse_grad_buffers
        level_losses, sae_out = K.matryoshka_losses(
            x,
            idx,
            vals,
            self.W_dec,
            self.level_ends,
            self.b_dec,
            offsets=offsets,
            reuse_grad_buffer=reuse,
            return_reconstruction=True,
        )  # [G] unweighted: mean_n ‖x − x̂_{≤i}‖²; sae_out = x̂ (all groups, no gradient)

        losses: dict[str, torch.Tensor] = {}
        ends = self.level_ends
        if self._dl:
            w = torch.tensor(cfg.level_weights, dtype=level_losses.dtype, device=level_losses.device)
            mse = (level_losses * w).sum()
            losses["mse_loss"] = mse
            for e, v in zip(ends, level_losses, strict=True):
                losses[f"mse_loss_level_{e}"] = v.detach()
        else:  # stock matryoshka_batchtopk: outer level is "mse_loss", inner ones summed on top
            mse = level_losses.sum()
            losses["mse_loss"] = level_losses[-1]
            for e, v in zip(ends[:-1], level_losses[:-1], strict=True):
                losses[f"inner_mse_loss_{e}"] = v
        aux = self._aux_loss(x, x_in, pre_bias, sae_out, W_enc, b_enc, inv_norm, step_input.dead_neuron_mask)
        losses["auxiliary_reconstruction_loss"] = aux
        loss = mse + aux

        self._update_threshold(codes.values.detach(), step_input.n_training_steps)
        N = x.shape[0]
        with torch.no_grad():
            rows = torch.repeat_interleave(
                torch.arange(N, device=idx.device), offsets[1:] - offsets[:-1], output_size=idx.numel()
            )
            feature_acts = torch.sparse_coo_tensor(
                torch.stack([rows, idx]),
                codes.values.detach(),
                (N, cfg.d_sae),
                is_coalesced=True,
                check_invariants=False,
            )
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=feature_acts,
            loss=loss,
            losses=losses,
            metrics={"topk_threshold": self.topk_threshold},
        )

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """``process_sae_in`` without the ``b_dec`` subtraction (the encoder kernel applies it)."""
        sae_in = self.reshape_fn_in(x.to(self.dtype))
        sae_in = self.hook_sae_input(sae_in)
        return self.run_time_activation_norm_fn_in(sae_in)

    def _aux_loss(self, x, x_in, pre_bias, sae_out, W_enc, b_enc, inv_norm, dead_mask) -> torch.Tensor:
        cfg = self.cfg
        zero = x.new_zeros((), dtype=torch.float32)
        if dead_mask is None:
            return zero
        dead = dead_mask.nonzero().squeeze(1)
        num_dead = dead.numel()
        if num_dead == 0:
            return zero
        k_aux_full = cfg.top_k_aux or cfg.d_in // 2
        k_aux = min(k_aux_full, num_dead)
        sae_in = x_in if pre_bias is None else x_in - pre_bias
        pre = torch.addmm(b_enc.index_select(0, dead), sae_in, W_enc.index_select(1, dead))  # [N, n_dead]
        if self._dl:
            pre = pre.relu()
        top = pre.topk(k_aux, dim=-1, sorted=False)
        aux_idx = dead.index_select(0, top.indices.reshape(-1)).view_as(top.indices)
        aux_vals = top.values if inv_norm is None else top.values * inv_norm[aux_idx]
        recons = K.sparse_decode(aux_idx, aux_vals, self.W_dec)  # no bias: b_dec is in the residual
        residual = (x - sae_out).detach()
        l2 = (residual.float() - recons.float()).pow(2).sum(-1).mean()
        if self._dl:
            denom = (residual.float() - residual.float().mean(0)).pow(2).sum(-1).mean()
            return cfg.auxk_alpha * (l2 / denom).nan_to_num(0.0)
        scale = min(num_dead / k_aux_full, 1.0)
        return cfg.aux_loss_coefficient * scale * l2

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor, step: int) -> None:
        pos = kept[kept > 0]
        with torch.autocast(self.topk_threshold.device.type, enabled=False):
            if self._dl:
                if step <= self.cfg.threshold_start_step:
                    return
                m = pos.min().to(torch.double) if pos.numel() else self.topk_threshold.new_zeros(())
                if self.topk_threshold < 0:
                    self.topk_threshold.copy_(m)
                else:
                    b = self.cfg.threshold_beta
                    self.topk_threshold.copy_(b * self.topk_threshold + (1 - b) * m)
            elif pos.numel():
                lr = self.cfg.topk_threshold_lr
                self.topk_threshold.copy_((1 - lr) * self.topk_threshold + lr * pos.min().to(torch.double))

    # -- dictionary_learning decoder constraint ---------------------------------------------------
    @torch.no_grad()
    def renormalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (in place)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self._renorm_pending = False

    def _apply_pending_renorm(self) -> bool:
        """The renormalisation the last optimizer step left pending, if any; True when applied."""
        if not (self._dl and self.cfg.normalize_decoder and self._renorm_pending):
            return False
        self.renormalize_decoder_()
        return True

    def _install_decoder_grad_hook(self) -> None:
        # The parameter object can be replaced (load_state_dict(assign=True)); hook the current one.
        # A post-accumulate hook edits the accumulated W_dec.grad in place (the projection is linear and
        # idempotent, so projecting again after gradient accumulation is harmless).
        if self._hooked_W_dec is None or self._hooked_W_dec() is not self.W_dec:
            self.W_dec.register_post_accumulate_grad_hook(_remove_parallel_grad_)
            self._hooked_W_dec = weakref.ref(self.W_dec)

    # -- saving / folding -------------------------------------------------------------------------
    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        # the constraint dictionary_learning applies after every step. Only while pending: once the
        # activation scale is folded in (rows of norm 1/scale), renormalising would undo the fold.
        if self._apply_pending_renorm():
            state_dict["W_dec"] = self.W_dec.detach().clone()
        if self.cfg.rescale_acts_by_decoder_norm:
            norm = self.W_dec.detach().norm(dim=-1).clamp(min=1e-8)
            state_dict["b_enc"] = state_dict["b_enc"] * norm
            state_dict["W_dec"] = state_dict["W_dec"] / norm[:, None]
            state_dict["W_enc"] = state_dict["W_enc"] * norm[None, :]
        thr = float(state_dict.pop("topk_threshold").item())
        state_dict["threshold"] = torch.full_like(state_dict["b_enc"], thr)

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        self._apply_pending_renorm()  # unit rows in the normalised space first, then scale them
        super().fold_activation_norm_scaling_factor(scaling_factor)
        if self.cfg.rescale_acts_by_decoder_norm:
            self.topk_threshold /= scaling_factor  # threshold in units of hidden_pre · ‖W_dec‖ (stock #763)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding decoder norms changes which latents BatchTopK keeps; fold the saved inference SAE "
            "(RadMatryoshkaSAE.fold_W_dec_norm scales its threshold exactly) instead"
        )


@torch.no_grad()
def _remove_parallel_grad_(W_dec: torch.Tensor) -> None:
    """Drop the component of ``W_dec.grad`` parallel to each decoder row, in place (dictionary_learning's
    ``remove_gradient_parallel_to_decoder_directions``: ``g − (g·ŵ) ŵ`` with ``ŵ = w/‖w‖``, written as
    ``g − (g·w)/‖w‖² · w``). Untouched rows have zero gradient and stay zero. Three full-matrix passes
    (row dots, row norms, one ``addcmul_``) instead of gathering the touched rows."""
    grad = W_dec.grad
    if grad is None:
        return
    W = W_dec.detach()
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    dot = torch.einsum("ij,ij->i", grad, W.to(grad.dtype))
    n2 = torch.linalg.vector_norm(W, dim=1, dtype=acc).square_().clamp_min_(1e-24)
    grad.addcmul_(W.to(grad.dtype), (dot.to(acc) / n2).to(grad.dtype).unsqueeze(1), value=-1)


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld iterations, as dictionary_learning initialises ``b_dec``."""
    guess = points.mean(0)
    for _ in range(max_iter):
        prev = guess
        w = 1 / (points - guess).norm(dim=1).clamp_min(1e-12)
        w = w / w.sum()
        guess = (w[:, None] * points).sum(0)
        if (guess - prev).norm() < tol:
            break
    return guess
