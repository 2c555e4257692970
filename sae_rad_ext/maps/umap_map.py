"""UMAP projections of per-study pooled activations, coloured by finding, view and longitudinal change.

Needs ``umap-learn`` (``pip install "sae-rad-ext[maps]"``); it is imported only when a projection is made
(numba compiles it on first use in a process, which takes a while).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sae_rad_ext.data.study import FINDINGS
from sae_rad_ext.maps.common import layer_label
from sae_rad_ext.maps.probes import PooledActivations
from sae_rad_ext.util.files import save_figure

__all__ = ["UmapProjection", "plot_umap", "umap_projections"]


@dataclass
class UmapProjection:
    """2-D UMAP coordinates of the studies that have one pool at one layer."""

    layer: int
    pool: str
    coords: np.ndarray
    """``float32 [n, 2]``."""
    rows: np.ndarray
    """``int [n]``: row of each point in the :class:`PooledActivations`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "pool": self.pool,
            "coords": np.round(self.coords, 4).tolist(),
            "rows": self.rows.tolist(),
        }


def _import_umap() -> Any:
    try:
        import umap
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "UMAP maps need umap-learn: pip install 'sae-rad-ext[maps]' (or umap-learn), or leave "
            "'umap' out of --techniques"
        ) from e
    return umap


def umap_projections(
    pooled: PooledActivations,
    layers: Sequence[int],
    pools: Sequence[str],
    *,
    n_neighbors: int = 15,
    seed: int = 0,
) -> list[UmapProjection]:
    """One UMAP per (layer, pool) over the studies that have the pool (standardised features)."""
    umap = _import_umap()
    out = []
    for L in layers:
        li = pooled.layer_index(L)
        for p in pools:
            if p not in pooled.acts:
                raise ValueError(f"pool {p!r} was not collected; collected: {list(pooled.acts)}")
            rows = np.nonzero(pooled.present[p])[0]
            if len(rows) < 5:
                continue
            x = pooled.acts[p][li][rows]
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(rows) - 1), random_state=seed, n_jobs=1)
            out.append(UmapProjection(L, p, reducer.fit_transform(x).astype(np.float32), rows))
    return out


def plot_umap(proj: UmapProjection, pooled: PooledActivations, targets: np.ndarray, path: str | Path) -> Path:
    """A grid of scatter plots of one projection: one panel per finding, then view and change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*FINDINGS, "view", "change"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 7))
    xy = proj.coords
    for ax, name in zip(axes.flat, panels, strict=True):
        if name in FINDINGS:
            y = targets[proj.rows, FINDINGS.index(name)]
            for v, colour, lab in ((0, "#bbbbbb", "absent"), (1, "#d62728", "present")):
                sel = y == v
                ax.scatter(xy[sel, 0], xy[sel, 1], s=8, c=colour, label=f"{lab} ({int(sel.sum())})")
        else:
            vals = np.array([pooled.info[r][name] for r in proj.rows])
            for i, v in enumerate(sorted(set(vals))):
                sel = vals == v
                ax.scatter(
                    xy[sel, 0], xy[sel, 1], s=8, color=plt.cm.tab10(i % 10), label=f"{v} ({int(sel.sum())})"
                )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(f"UMAP of {proj.pool} activations at layer {layer_label(proj.layer)}")
    return save_figure(fig, path, dpi=90, tight_layout=True)
