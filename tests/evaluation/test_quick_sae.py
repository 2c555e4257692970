"""The phantom benchmark's per-layer SAE is the project's Matryoshka SAE, trained on raw-scale rows."""

from __future__ import annotations

import torch

from sae_rad_ext.evaluation.phantom_benchmark import train_quick_topk_sae
from sae_rad_ext.saes.matryoshka import RadMatryoshkaSAE


def _rows(n: int = 3000, d: int = 24, m: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative combinations of ``m`` unit atoms, far from unit scale and off-centre."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(m, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, m, generator=g) < 0.08) * (1 + torch.rand(n, m, generator=g))
    return 40.0 * (codes @ atoms) + 5.0, atoms


def _ev(sae: RadMatryoshkaSAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        xh = sae.decode(sae.encode(x))
    return float(1 - (xh - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_quick_sae_learns_the_atoms_and_is_deterministic():
    x, atoms = _rows()
    sae = train_quick_topk_sae(x, d_sae=64, k=4, steps=150, batch=256, seed=0)
    assert isinstance(sae, RadMatryoshkaSAE) and sae.group_sizes == [64]
    untrained = train_quick_topk_sae(x, d_sae=64, k=4, steps=0, batch=256, seed=0)
    ev = _ev(sae, x)
    assert ev > 0.7 and ev > _ev(untrained, x) + 0.3, ev
    with torch.no_grad():
        l0 = float((sae.encode(x) > 0).sum(1).float().mean())
    assert 1 <= l0 <= 8, l0  # about k active latents per row at inference (EMA threshold)
    dirs = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    found = (atoms @ dirs.T).amax(1)  # best decoder cosine per planted atom
    assert int((found > 0.9).sum()) >= len(atoms) // 2, found
    again = train_quick_topk_sae(x, d_sae=64, k=4, steps=150, batch=256, seed=0)
    assert torch.equal(again.W_enc, sae.W_enc) and torch.equal(again.threshold, sae.threshold)
    other = train_quick_topk_sae(x, d_sae=64, k=4, steps=5, batch=256, seed=1)
    assert not torch.equal(other.W_enc[:, :4], untrained.W_enc[:, :4])
