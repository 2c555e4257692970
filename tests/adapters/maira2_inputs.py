"""Hand-built MAIRA-2-style inputs for the model / hook tests (independent of the prompt builder)."""

from __future__ import annotations

import torch

SEGMENTS = ["Given the current frontal image", " the current lateral image", " and the prior frontal image"]


def study_ids(tok, n_images: int, tokens_per_image: int, tail: str = " Provide a description of the findings.",
              ) -> list[int]:
    """``<s>`` + MAIRA-2-like text with ``n_images`` blocks of ``tokens_per_image`` image tokens."""
    img = tok.convert_tokens_to_ids("<image>")
    ids = [tok.bos_token_id]
    for i in range(n_images):
        ids += tok(SEGMENTS[i % 3], add_special_tokens=False)["input_ids"] + [img] * tokens_per_image
    return ids + tok(tail, add_special_tokens=False)["input_ids"]


def batch(tok, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``rows`` with the pad token: ``(input_ids, attention_mask)``."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):] = torch.tensor(r)
        mask[i, n - len(r):] = 1
    return ids, mask


def pixels(n_images: int, size: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_images, channels, size, size, generator=g)
