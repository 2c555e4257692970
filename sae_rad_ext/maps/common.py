"""Shared pieces of the knowledge maps: layer naming, targets, report log-likelihoods, model inputs.

Layer ``L`` (0 ≤ L < n_layers) means the residual stream after block ``L`` (``blocks.L.hook_resid_post``);
layer ``-1`` means the residual stream entering block 0 (``blocks.0.hook_resid_pre``: token embeddings with
the projected image patches spliced in) — what the language model receives before any of its layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sae_rad_ext.adapters.roles import Role
from sae_rad_ext.data.labels import binarize, label_report
from sae_rad_ext.data.study import FINDINGS, Study

# role groups used for mean ablation (one mean per group)
GROUP_IMAGE, GROUP_PROMPT, GROUP_REPORT, GROUP_OTHER = 0, 1, 2, 3
GROUP_NAMES = ("image", "prompt", "report", "other")


def resid_hook(layer: int) -> str:
    """Hook name of the residual stream at ``layer`` (-1: input of block 0)."""
    return "blocks.0.hook_resid_pre" if layer == -1 else f"blocks.{layer}.hook_resid_post"


def layer_label(layer: int) -> str:
    """Short axis label: ``"emb"`` for -1, else the block index."""
    return "emb" if layer == -1 else str(layer)


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Sorted unique layers, each in ``-1 .. n_layers-1``."""
    out = set()
    for layer in layers:
        L = int(layer)
        if not -1 <= L < n_layers:
            raise ValueError(f"layer {layer} is out of range: expected -1 (embeddings) or 0..{n_layers - 1}")
        out.add(L)
    if not out:
        raise ValueError("no layers given; pass at least one of -1 (embeddings) and 0..n_layers-1")
    return sorted(out)


def study_targets(studies: Sequence[Study], source: str = "auto") -> np.ndarray:
    """``int [n_studies, n_findings]`` 0/1 targets in :data:`FINDINGS` order.

    ``source``: ``"labels"`` (``Study.labels``: planted truth for phantoms, CheXpert-style for MIMIC;
    uncertain counts as positive, missing as negative), ``"report"`` (the project's labeler on the
    reference report) or ``"auto"`` (labels when the study has any, else the report).
    """
    if source not in ("auto", "labels", "report"):
        raise ValueError(f"target source must be 'auto', 'labels' or 'report'; got {source!r}")
    rows = []
    for s in studies:
        use_labels = source == "labels" or (
            source == "auto" and any(s.labels.get(k) is not None for k in FINDINGS)
        )
        lab = s.labels if use_labels else label_report(s.report)
        b = binarize({k: lab.get(k) for k in FINDINGS})
        rows.append([b[k] for k in FINDINGS])
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), len(FINDINGS))


def role_groups(role: torch.Tensor) -> torch.Tensor:
    """``long [batch, seq]`` group of each position: image, prompt text, report, other (BOS/EOS/PAD)."""
    g = torch.full(role.shape, GROUP_OTHER, dtype=torch.long, device=role.device)
    g[role == Role.IMAGE] = GROUP_IMAGE
    prompt = torch.isin(
        role,
        torch.tensor(
            [
                int(r)
                for r in (
                    Role.INSTRUCTION,
                    Role.INDICATION,
                    Role.TECHNIQUE,
                    Role.COMPARISON,
                    Role.PRIOR_REPORT,
                    Role.PHRASE,
                )
            ],
            dtype=role.dtype,
            device=role.device,
        ),
    )
    g[prompt] = GROUP_PROMPT
    g[role == Role.REPORT] = GROUP_REPORT
    return g


def report_token_logprobs(logits: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp [B, T-1], keep [B, T-1])``: log-probability of each teacher-forced report token (and its
    EOS) given the positions before it; ``keep`` marks the scored positions (``Maira2Batch.labels``)."""
    labels = batch.labels.to(logits.device)[:, 1:]
    keep = labels != -100
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return torch.where(keep, tok, torch.zeros_like(tok)), keep


def report_loglik(logits: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum [B], n_tokens [B])``: total log-likelihood of each row's reference report and its length."""
    logp, keep = report_token_logprobs(logits, batch)
    return logp.sum(1), keep.sum(1)


def generated_labels(texts: Sequence[str]) -> np.ndarray:
    """``int [n, n_findings]`` labeler output (uncertain → positive) for generated reports."""
    return np.asarray(
        [[binarize(label_report(t))[k] for k in FINDINGS] for t in texts], dtype=np.int64
    ).reshape(len(texts), len(FINDINGS))


