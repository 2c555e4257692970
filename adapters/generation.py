"""Greedy report generation and decoding with one end-of-report rule.

Every place that turns a prompt batch into report text goes through :func:`generate_reports`, so the
texts a steering sweep, a lesion map, the interpretation scan and the phantom benchmark score are cut
and cleaned the same way.

**End-of-report rule** (:meth:`~sae_rad_ext.adapters.prompts.Maira2Processor.decode_generated`): a
row's report is its generated tokens up to, not including, the first EOS (all of them when no EOS
came within ``max_new_tokens``); padding, image, BOS and the tokenizer's special tokens are dropped;
grounding tokens (``<obj> <box> <xN> <yN>``) are dropped for the ``findings`` task and kept for the
grounded tasks; the rest is decoded without tokenization clean-up and stripped of outer whitespace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Batch, Maira2Processor
from transformers import LlavaForConditionalGeneration

__all__ = ["GeneratedReports", "generate_reports"]


@dataclass
class GeneratedReports:
    """What :func:`generate_reports` returns for one batch."""

    texts: list[str]
    """One report per row, by the end-of-report rule in the module docstring."""
    token_ids: list[list[int]]
    """Generated ids of each row before its first EOS (padding and special tokens not removed)."""
    output_ids: torch.Tensor
    """``long [B, T + n_new]``: the prompt followed by everything ``generate`` produced (on the model's device)."""


def _device(model: HookedMaira2 | LlavaForConditionalGeneration) -> torch.device:
    if isinstance(model, HookedMaira2):
        return torch.device(model.cfg.device)
    return next(model.parameters()).device


@torch.no_grad()
def generate_reports(
    model: HookedMaira2 | LlavaForConditionalGeneration,
    processor: Maira2Processor,
    batch: Maira2Batch,
    *,
    max_new_tokens: int,
    fwd_hooks: Sequence[tuple[str | Callable[..., bool], Callable[..., Any]]] = (),
    **generate_kwargs: Any,
) -> GeneratedReports:
    """Greedy-generate a report for every row of ``batch`` (built ``with_report=False``) and decode it.

    ``model`` is a :class:`~sae_rad_ext.adapters.hooked.HookedMaira2` or the Hugging Face MAIRA-2 /
    LLaVA model under it; ``fwd_hooks`` (HookedMaira2 only) stay active for the prompt and every
    decoding step. ``generate_kwargs`` go to ``generate`` (``do_sample`` defaults to ``False``, EOS
    and padding ids to the processor's). The batch is moved to the model's device.
    """
    if fwd_hooks and not isinstance(model, HookedMaira2):
        raise TypeError(
            f"fwd_hooks need a HookedMaira2; got {type(model).__name__}. Wrap the model with "
            "HookedMaira2(model, tokenizer) or generate without hooks"
        )
    b = batch.to(_device(model))
    kw: dict[str, Any] = {
        "do_sample": False,
        "eos_token_id": processor.eos_token_id,
        "pad_token_id": processor.pad_token_id,
        **generate_kwargs,
    }
    if fwd_hooks:
        kw["fwd_hooks"] = list(fwd_hooks)
    out = model.generate(**b.model_inputs(), max_new_tokens=max_new_tokens, **kw)
    new = out[:, b.input_ids.shape[1] :] if out.shape[1] >= b.input_ids.shape[1] else out
    eos = processor.eos_token_id
    ids = [row[: row.index(eos)] if eos is not None and eos in row else row for row in new.tolist()]
    return GeneratedReports(processor.decode_generated(b, out), ids, out)
