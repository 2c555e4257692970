"""Gradient saliency over weights: which layers and modules carry a finding's report sentences?

    sal = gradient_saliency(model, processor, studies)
    sal.grad_norm["pleural_effusion"]["mlp"]      # [n_layers] ‖∂ log p(finding sentences) / ∂W‖ per layer

For each finding, the objective is the log-likelihood of the reference-report tokens that belong to
sentences mentioning that finding (the project's labeler decides which sentences do; positive and
negative mentions alike — "Small left effusion.", "No pleural effusion."), summed over the studies that
mention it. Its gradient with respect to every language-model weight is grouped per layer into ``attn``
(q/k/v/o projections), ``mlp`` (gate/up/down) and ``norm``, and reported as the gradient norm and as
``|Σ grad · weight|`` (first-order estimate of the change if the module's weights were zeroed). The
vision tower, projector, embeddings and LM head are reported as single rows in ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Batch, Maira2Processor
from sae_rad_ext.adapters.roles import Role
from sae_rad_ext.data.labels import label_sentences
from sae_rad_ext.data.study import FINDINGS, Study
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["MODULES", "SaliencyResult", "finding_token_mask", "gradient_saliency", "module_of"]

MODULES = ("attn", "mlp", "norm")
_LAYER_RE = re.compile(
    r"language_model\.layers\.(\d+)\.(self_attn|mlp|input_layernorm|post_attention_layernorm)\."
)


def module_of(param_name: str) -> tuple[int, str] | tuple[None, str]:
    """``(layer, "attn"|"mlp"|"norm")`` for a decoder-layer weight, else ``(None, group)`` with group one of
    ``vision``, ``projector``, ``embed``, ``final_norm``, ``lm_head``, ``other``."""
    m = _LAYER_RE.search(param_name)
    if m:
        kind = {"self_attn": "attn", "mlp": "mlp"}.get(m.group(2), "norm")
        return int(m.group(1)), kind
    for key, group in (
        ("vision_tower", "vision"),
        ("multi_modal_projector", "projector"),
        ("embed_tokens", "embed"),
        ("language_model.norm", "final_norm"),
        ("lm_head", "lm_head"),
    ):
        if key in param_name:
            return None, group
    return None, "other"


def finding_token_mask(processor: Maira2Processor, batch: Maira2Batch, finding: str) -> torch.Tensor:
    """``bool [B, T]``: report tokens inside sentences that mention ``finding`` (labeler rules)."""
    tok = processor.tokenizer
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for b in range(len(batch)):
        pos = (batch.roles.role[b] == Role.REPORT).nonzero()[:, 0]
        if not len(pos):
            continue
        ids = batch.input_ids[b, pos].tolist()
        ends = [len(tok.decode(ids[: i + 1])) for i in range(len(ids))]  # char end of each token
        text = tok.decode(ids)
        spans = [(m.start(), m.end()) for m in re.finditer(r"[^.]+\.?", text)]
        hit = [any(f == finding for f, _, _ in label_sentences(text[a:e])) for a, e in spans]
        for i, end in enumerate(ends):
            start = ends[i - 1] if i else 0
            centre = (start + end) / 2
            for (a, e), h in zip(spans, hit, strict=True):
                if h and a <= centre < e:
                    out[b, pos[i]] = True
                    break
    return out


@dataclass
class SaliencyResult:
    """Per finding, gradient norms per (layer, module) and for the non-decoder parts."""

    n_layers: int
    grad_norm: dict[str, dict[str, list[float]]]
    """finding → module (attn/mlp/norm/all) → ‖grad‖ per layer."""
    grad_x_weight: dict[str, dict[str, list[float]]]
    """finding → module → ``|Σ grad·weight|`` per layer."""
    other: dict[str, dict[str, float]]
    """finding → group (vision, projector, embed, final_norm, lm_head) → ‖grad‖."""
    n_studies: dict[str, int]
    """finding → studies whose report mentions it."""
    n_tokens: dict[str, int]
    """finding → report tokens in the objective."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "grad_norm": self.grad_norm,
            "grad_x_weight": self.grad_x_weight,
            "other": self.other,
            "n_studies": self.n_studies,
            "n_tokens": self.n_tokens,
        }


def gradient_saliency(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    findings: Sequence[str] = FINDINGS,
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> SaliencyResult:
    """Weight-gradient saliency of each finding's report sentences (see the module docstring).
    ``progress``: stage ``"saliency"`` counts (study with a report, finding) pairs."""
    n = model.cfg.n_layers
    params = [(name, p) for name, p in model.model.named_parameters()]
    res = SaliencyResult(n, {}, {}, {}, {}, {})
    dev = model.cfg.device
    req = {name: p.requires_grad for name, p in params}
    tick = Ticker(progress, "saliency", sum(1 for s in studies if s.report) * len(findings))
    try:
        for _, p in params:
            p.requires_grad_(True)
        for finding in findings:
            model.model.zero_grad(set_to_none=True)
            n_st = n_tok = 0
            for chunk in batched([s for s in studies if s.report], batch_size):
                b = processor.build(chunk, with_report=True)
                mask = finding_token_mask(processor, b, finding)
                if not bool(mask.any()):
                    tick(len(chunk))
                    continue
                ids, kw = b.to(dev).model_args()
                logits = model(ids, **kw)
                logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
                target = mask[:, 1:].to(dev)  # token t+1 predicted at position t
                (-(logp * target).sum()).backward()
                n_st += int(mask.any(1).sum())
                n_tok += int(mask.sum())
                tick(len(chunk))
            gn = {m: [0.0] * n for m in (*MODULES, "all")}
            gw = {m: [0.0] * n for m in (*MODULES, "all")}
            other: dict[str, float] = {}
            for name, p in params:
                if p.grad is None:
                    continue
                layer, group = module_of(name)
                sq, gxw = (
                    float(p.grad.double().pow(2).sum()),
                    float((p.grad.double() * p.detach().double()).sum()),
                )
                if layer is None:
                    other[group] = other.get(group, 0.0) + sq
                else:
                    for m in (group, "all"):
                        gn[m][layer] += sq
                        gw[m][layer] += gxw
            res.grad_norm[finding] = {m: [v**0.5 for v in vals] for m, vals in gn.items()}
            res.grad_x_weight[finding] = {m: [abs(v) for v in vals] for m, vals in gw.items()}
            res.other[finding] = {g: v**0.5 for g, v in other.items()}
            res.n_studies[finding], res.n_tokens[finding] = n_st, n_tok
    finally:
        model.model.zero_grad(set_to_none=True)
        for name, p in params:
            p.requires_grad_(req[name])
    return res
