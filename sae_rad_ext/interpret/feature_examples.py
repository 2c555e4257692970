"""Image-aware examples: token contexts, per-study patch-grid maps and heatmap PNGs for chosen
(feature, study) pairs — a second, targeted pass that runs the model only on the studies it needs.

The statistics pass keeps, per feature, only (study, position, value) of its top studies; this pass
re-runs those studies (others are skipped before the model sees them), encodes them and builds
:class:`~sae_rad_ext.records.FeatureExample` values: a window of tokens around the peak
(image positions as ``<frontal r12 c05>``), the feature's values there, the feature's map over the
patch grid of the peak's image (or the frontal image), the model's view of the radiograph
(``images/<study>_<view>.png``) and the map upsampled and overlaid on it (``heatmaps/f<i>_<study>.png``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens import SAE
from transformers import PreTrainedTokenizerBase

from sae_rad_ext.activations.extract import activations_from_batch, default_processor
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import ImageSlot, Role
from sae_rad_ext.data.study import Study
from sae_rad_ext.interpret.scan import encode
from sae_rad_ext.records import FeatureExample
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.files import atomic_write_bytes
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = ["collect_examples", "region_words"]

_SLOT_VIEW = {
    int(ImageSlot.FRONTAL): "frontal",
    int(ImageSlot.LATERAL): "lateral",
    int(ImageSlot.PRIOR): "prior",
}
_VIEW_IMAGE = {"frontal": "frontal", "lateral": "lateral", "prior": "prior_frontal"}


def region_words(patch_map: Any) -> str:
    """Where a frontal map's mass sits: ``upper|middle|lower`` × ``image-left|centre|image-right``
    (image-left is the patient's right on a PA/AP frontal radiograph)."""
    m = torch.as_tensor(np.asarray(patch_map, dtype=np.float32)).clamp(min=0)
    if m.dim() != 2 or float(m.sum()) <= 0:
        return "nowhere"
    g_r, g_c = m.shape
    r = float((m.sum(1) * torch.arange(g_r)).sum() / m.sum()) / max(g_r - 1, 1)
    c = float((m.sum(0) * torch.arange(g_c)).sum() / m.sum()) / max(g_c - 1, 1)
    vert = "upper" if r < 0.36 else "middle" if r < 0.64 else "lower"
    hor = "image-left (patient right)" if c < 0.42 else "centre" if c < 0.58 else "image-right (patient left)"
    return f"{vert} {hor}"


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def _model_view_png(processor: Maira2Processor, image: Any, path: Path, max_side: int = 224) -> None:
    """The radiograph as the model sees it (resize + centre crop), saved as a greyscale PNG."""
    from PIL import Image

    if path.is_file():
        return
    x = processor.preprocess_image(image)[0].numpy()  # normalised [S, S]
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
    im = Image.fromarray((x * 255).astype(np.uint8), "L")
    if im.size[0] > max_side:
        im = im.resize((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _token_strings(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    toks = tokenizer.convert_ids_to_tokens(ids)
    return [str(t).replace("▁", " ").replace("Ġ", " ") if t is not None else "?" for t in toks]


@torch.no_grad()
def collect_examples(
    model: HookedMaira2,
    sae: SAE[Any],
    studies: Iterable[Study],
    wanted: dict[str, list[tuple[int, int]]],
    hook_name: str,
    *,
    out: str | Path | None = None,
    processor: Maira2Processor | None = None,
    window: int = 12,
    batch_size: int = 4,
    heatmaps: bool = True,
    progress: ProgressCallback | None = None,
) -> dict[tuple[int, str], FeatureExample]:
    """Examples for ``wanted = {study_id: [(feature, position), ...]}`` (``position`` = the peak's position
    in the study's own sequence, as the statistics store it; -1 → the feature's max in that study).

    Returns ``{(feature, study_id): FeatureExample}``; image/heatmap paths are relative to ``out``
    (nothing is written without ``out``). ``progress``: stage ``"examples"`` counts the wanted studies
    found in ``studies``."""
    processor = processor if processor is not None else default_processor(model)
    tok = processor.tokenizer
    out_dir = Path(out) if out is not None else None
    grid = int(processor.grid)
    result: dict[tuple[int, str], FeatureExample] = {}
    tick = Ticker(progress, "examples", len(wanted))
    todo = (s for s in studies if s.study_id in wanted)
    for chunk in batched(todo, batch_size):
        batch = processor.build(chunk, with_report=True)
        ab = activations_from_batch(model, batch, hook_name, "all")
        for b, study in enumerate(chunk):
            pairs = wanted[study.study_id]
            feats = sorted({f for f, _ in pairs})
            r = ab.study_index == b
            z = encode(sae, ab.acts[r])[:, feats].cpu()  # [rows, n_feats]
            col = {f: i for i, f in enumerate(feats)}
            role, slot = ab.role[r].long(), ab.image_slot[r].long()
            prow, pcol, pos, ids = (
                ab.patch_row[r].long(),
                ab.patch_col[r].long(),
                ab.position[r],
                ab.token_id[r],
            )
            text_str = _token_strings(tok, ids.tolist())
            labels = [
                f"<{_SLOT_VIEW.get(int(s), 'image')} r{int(a):02d} c{int(c):02d}>"
                if int(ro) == int(Role.IMAGE)
                else t
                for ro, s, a, c, t in zip(role, slot, prow, pcol, text_str, strict=True)
            ]
            for f, p in pairs:
                v = z[:, col[f]]
                i = (
                    int(v.argmax())
                    if p < 0 or not bool((pos == p).any())
                    else int(torch.nonzero(pos == p)[0])
                )
                lo, hi = max(0, i - window), min(len(v), i + window + 1)
                q_role = Role(int(role[i]))
                view = _SLOT_VIEW.get(int(slot[i]), "frontal") if q_role == Role.IMAGE else "frontal"
                on_view = (role == int(Role.IMAGE)) & (slot == {"frontal": 0, "lateral": 1, "prior": 2}[view])
                ex = FeatureExample(
                    study_id=study.study_id,
                    tokens=labels[lo:hi],
                    values=[round(float(x), 5) for x in v[lo:hi]],
                    qualifying_token_index=i - lo,
                    role=q_role.name.lower(),
                    view=view if bool(on_view.any()) else None,
                )
                if bool(on_view.any()) and grid:
                    pm = torch.zeros(grid, grid)
                    keep = on_view & (prow >= 0)
                    pm[prow[keep], pcol[keep]] = v[keep]
                    ex.patch_map = [[round(float(x), 4) for x in row] for row in pm]
                    image = getattr(study, _VIEW_IMAGE[view], None)
                    if out_dir is not None and image is not None:
                        rel = f"images/{_safe(study.study_id)}_{view}.png"
                        _model_view_png(processor, image, out_dir / rel)
                        ex.image_path = rel
                        if heatmaps and float(pm.max()) > 0:
                            from sae_rad_ext.interpret.heatmaps import load_display_image, render_overlay

                            hrel = f"heatmaps/f{f}_{_safe(study.study_id)}_{view}.png"
                            render_overlay(load_display_image(out_dir / rel), pm.numpy(), out_dir / hrel)
                            ex.heatmap_png = hrel
                result[(f, study.study_id)] = ex
        tick(len(chunk))
    return result
