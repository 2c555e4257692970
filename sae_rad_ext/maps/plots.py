"""PNG plots of the knowledge maps (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.maps.common import layer_label
from sae_rad_ext.util.files import save_figure as atomic_save_figure

__all__ = ["plot_lesion", "plot_patching", "plot_probes", "plot_saliency", "save_figure"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 90) -> Path:
    """``tight_layout``, then save ``fig`` to ``path`` atomically (never a half-written PNG) and close it."""
    _plt()
    return atomic_save_figure(fig, path, dpi=dpi, tight_layout=True)


def plot_probes(probes: dict[str, Any], path: str | Path, metric: str = "auroc") -> Path:
    """One panel per pool: held-out probe ``metric`` per layer, a line per finding."""
    plt = _plt()
    layers = probes["layers"]
    pools = [
        p
        for p in probes[metric]
        if any(not all(math.isnan(v) for v in c) for c in probes[metric][p].values())
    ]
    pools = pools or list(probes[metric])
    fig, axes = plt.subplots(1, len(pools), figsize=(3.6 * len(pools), 3.4), squeeze=False, sharey=True)
    x = np.arange(len(layers))
    for ax, p in zip(axes[0], pools, strict=True):
        for i, k in enumerate(FINDINGS):
            ax.plot(x, probes[metric][p][k], marker="o", ms=3, color=plt.cm.tab10(i), label=k)
        ax.set_title(f"{p} (n_test={probes['n_test'][p]})", fontsize=9)
        ax.set_xticks(x, [layer_label(L) for L in layers], fontsize=8)
        ax.set_xlabel("layer")
        ax.axhline(0.5 if metric == "auroc" else 0, color="#999", lw=0.6, ls=":")
        ax.set_ylim(0.3 if metric == "auroc" else 0, 1.02)
    axes[0][0].set_ylabel(f"held-out probe {metric}")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Where does the model know each finding? (linear probes)", fontsize=10)
    return save_figure(fig, path)


def plot_patching(patch: dict[str, Any], path: str | Path) -> Path:
    """Layer × role heatmap of the transferred share, one panel per finding (roles without positions dropped)."""
    plt = _plt()
    findings = list(patch["transfer"])
    layers = patch["layers"]
    roles = [
        r for r in patch["roles"] if any(not _isnan(v) for f in findings for v in patch["transfer"][f][r])
    ]
    roles = roles or list(patch["roles"])
    cols = min(3, max(1, len(findings)))
    rows = math.ceil(len(findings) / cols) or 1
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(4.2 * cols + 1.5, 0.45 * len(roles) * rows + 1.2 * rows),
        squeeze=False,
        constrained_layout=True,
    )
    im = None
    for n, (ax, f) in enumerate(zip(axes.flat, findings, strict=False)):
        m = np.array(
            [[np.nan if _isnan(v) else v for v in patch["transfer"][f][r]] for r in roles], dtype=float
        )
        im = ax.imshow(np.nan_to_num(m, nan=0.0), vmin=-0.2, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(
                j,
                i,
                "–" if math.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if (not math.isnan(v) and v < 0.6) else "black",
            )
        ax.set_yticks(range(len(roles)), roles if n % cols == 0 else [], fontsize=7)
        ax.set_xticks(range(len(layers)), [layer_label(L) for L in layers], fontsize=7)
        ax.set_title(f"{f}\neffect {patch['effect'][f]:.3g} nats, n={patch['n_pairs'][f]}", fontsize=8)
        ax.set_xlabel("layer", fontsize=7)
    for ax in list(axes.flat)[len(findings) :]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="transferred share")
    fig.suptitle(
        "Activation patching: share of the finding's effect carried at (layer, positions)", fontsize=10
    )
    return atomic_save_figure(fig, path, dpi=90)


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def plot_lesion(lesion: dict[str, Any], path: str | Path) -> Path:
    """Heatmap of per-finding F1 drop per lesion, and the log-likelihood drop beside it."""
    plt = _plt()
    names = [n for n in lesion["f1_drop"] if n != "none"]
    m = np.array([[lesion["f1_drop"][n][k] for k in FINDINGS] for n in names])
    ll = np.array([lesion["loglik_drop"][n] for n in names])
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(10, 0.3 * len(names) + 1.8), gridspec_kw={"width_ratios": [3, 1]}
    )
    im = a.imshow(
        m, cmap="magma_r", vmin=0, vmax=max(0.05, float(np.nanmax(m)) if m.size else 1), aspect="auto"
    )
    a.set_yticks(range(len(names)), names, fontsize=7)
    a.set_xticks(range(len(FINDINGS)), FINDINGS, rotation=30, ha="right", fontsize=7)
    for (i, j), v in np.ndenumerate(m):
        a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="black" if v < 0.5 else "white")
    fig.colorbar(im, ax=a, label="report F1 drop")
    b.barh(range(len(names)), ll, color="#1f77b4")
    b.set_yticks(range(len(names)), [])
    b.invert_yaxis()
    b.set_xlabel("log-lik drop (nats/token)", fontsize=8)
    a.set_title(
        f"Lesioning (intact macro F1 {np.mean(list(lesion['f1']['none'].values())):.2f}, "
        f"n={lesion['n_studies']})",
        fontsize=9,
    )
    return save_figure(fig, path)


def plot_saliency(sal: dict[str, Any], path: str | Path, key: str = "grad_norm") -> Path:
    """Per finding, gradient norm per layer for attention and MLP weights."""
    plt = _plt()
    findings = list(sal[key])
    n = sal["n_layers"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=False)
    for ax, module in zip(axes, ("attn", "mlp"), strict=True):
        for i, f in enumerate(findings):
            v = np.array(sal[key][f][module])
            ax.plot(range(n), v / max(v.max(), 1e-12), marker="o", ms=3, color=plt.cm.tab10(i), label=f)
        ax.set_title(f"{module} weights ({key}, normalised per finding)", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(range(n))
    axes[1].legend(fontsize=7)
    return save_figure(fig, path)
