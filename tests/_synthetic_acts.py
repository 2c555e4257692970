"""Synthetic sparse activations written as a SAELens cached-activations folder (datasets.save_to_disk)."""

from __future__ import annotations

from pathlib import Path

import torch


def synthetic_batch(
    n: int, d_in: int, n_features: int = 96, active: int = 4, seed: int = 0, noise: float = 0.01
):
    """``[n, d_in]`` sums of ``active`` random unit directions (Zipf-like frequencies) plus noise."""
    g = torch.Generator().manual_seed(1234)  # the same dictionary for every call
    D = torch.randn(n_features, d_in, generator=g)
    D = D / D.norm(dim=-1, keepdim=True)
    freq = 1.0 / torch.arange(1, n_features + 1).float() ** 0.6
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(freq.expand(n, -1), active, generator=g)
    vals = torch.rand(n, active, generator=g) * 2 + 0.5
    x = torch.zeros(n, n_features).scatter_(1, idx, vals) @ D
    return x + noise * torch.randn(n, d_in, generator=g)


def write_cached_activations(
    path: str | Path, hook_name: str, n_seqs: int, context_size: int, d_in: int, seed: int = 0
) -> Path:
    import datasets

    x = synthetic_batch(n_seqs * context_size, d_in, seed=seed).view(n_seqs, context_size, d_in)
    features = datasets.Features({hook_name: datasets.Array2D(shape=(context_size, d_in), dtype="float32")})
    ds = datasets.Dataset.from_dict({hook_name: x.numpy()}, features=features)
    ds.save_to_disk(str(path))
    return Path(path)
