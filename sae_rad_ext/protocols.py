"""Types for the seams between layers: which model object a public function accepts.

Most functions name the concrete class (:class:`~sae_rad_ext.adapters.hooked.HookedMaira2`,
:class:`~sae_rad_ext.adapters.prompts.Maira2Processor`, ``sae_lens.SAE``). The two seams where a
function genuinely takes more than one kind of object are spelled here:

- :data:`ReportModel`: report generation runs on the hooked model or on the Hugging Face MAIRA-2 /
  LLaVA model under it (``HookedMaira2.model``); hooks need the former.
- :class:`Unembedding`: weights-only feature records read just ``W_U`` and ``tokenizer``, which
  ``HookedMaira2`` and TransformerLens's ``HookedTransformer`` both have.

This module sits just above the adapters: it imports adapters and third-party types only, so every
other layer may use it. Annotations are not enforced at run time; stand-ins in tests keep working.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from sae_rad_ext.adapters.hooked import HookedMaira2

__all__ = ["ReportModel", "Unembedding"]

ReportModel: TypeAlias = HookedMaira2 | LlavaForConditionalGeneration
"""A model that generates reports: the hooked model, or the HF model it wraps (no hooks then)."""


class Unembedding(Protocol):
    """What reads a model's vocabulary side: ``W_U [d_model, d_vocab]`` and a tokenizer (``None``: no token strings)."""

    @property
    def W_U(self) -> torch.Tensor: ...  # noqa: N802 - TransformerLens name

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...
