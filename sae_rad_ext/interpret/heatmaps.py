"""Feature heatmaps on radiographs: a display-ready greyscale image and a patch map overlaid on it.

Used by the examples pass (:mod:`sae_rad_ext.interpret.feature_examples`) and the HTML dashboard
(:mod:`sae_rad_ext.publish.html`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

THUMB = 160
"""Default side (pixels) of a rendered overlay."""

def load_display_image(path: str | Path) -> np.ndarray:
    """Greyscale ``uint8`` array from a PNG/JPEG (any mode) or a ``.npy`` array."""
    from PIL import Image

    p = Path(path)
    if p.suffix == ".npy":
        a = np.load(p).astype(np.float32)
        if a.ndim == 3:
            a = a.mean(-1)
    else:
        a = np.asarray(Image.open(p).convert("L"), dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)


def render_overlay(
    image: np.ndarray | None,
    patch_map: np.ndarray | list[list[float]],
    out_path: str | Path,
    *,
    vmax: float | None = None,
    size: int = THUMB,
    cmap: str = "inferno",
) -> Path:
    """Write a PNG: the radiograph (grey; blank when ``None``) with the patch map upsampled and overlaid
    (colour and opacity rise with activation, normalised by ``vmax``, default the map's max)."""
    import matplotlib
    from PIL import Image

    m = np.asarray(patch_map, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"patch_map must be a non-empty [rows, cols] grid; got shape {m.shape}")
    if image is None:
        base = Image.new("L", (size, size), 40)
    else:
        base = Image.fromarray(np.asarray(image, dtype=np.uint8))
        w, h = base.size
        scale = size / max(w, h)
        base = base.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    top = float(vmax) if vmax else float(m.max())
    norm = np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)
    up = np.asarray(
        Image.fromarray((norm * 255).astype(np.uint8)).resize(base.size, Image.BILINEAR), dtype=np.float32
    ) / 255.0
    rgba = matplotlib.colormaps[cmap](up)  # [H, W, 4] floats
    rgba[..., 3] = 0.75 * up
    overlay = Image.fromarray((rgba * 255).astype(np.uint8), "RGBA")
    out = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out.save(out_path)
    return out_path
