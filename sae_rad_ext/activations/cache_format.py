"""The activation-cache format (see :mod:`sae_rad_ext.activations.cache` for the writer).

Format (a ``datasets.save_to_disk`` folder; ``datasets.load_from_disk(path)`` opens it and SAELens reads it
with ``use_cached_activations=True, cached_activations_path=path``). Each row packs ``context_size``
selected positions (consecutive positions of consecutive studies):

=================  =======================================  =========================================
column             feature                                  meaning
=================  =======================================  =========================================
``<hook_name>``    ``Array2D((context_size, d_in), dtype)``  hook activations (what SAELens trains on)
``token_ids``      ``Sequence(int32, context_size)``         input token id of each position
``study_id``       ``Sequence(string, context_size)``        study of each position
``study_index``    ``Sequence(int64, context_size)``         index of the study in the source stream
``position``       ``Sequence(int32, context_size)``         position within the study's own sequence
``role``           ``Sequence(int8, context_size)``          :class:`~sae_rad_ext.adapters.roles.Role`
``image_slot``     ``Sequence(int8, context_size)``          frontal 0 / lateral 1 / prior 2, text -1
``patch_row``      ``Sequence(int16, context_size)``         patch-grid row (-1 for text)
``patch_col``      ``Sequence(int16, context_size)``         patch-grid column (-1 for text)
=================  =======================================  =========================================

Beside the dataset files: ``sae_rad_cache.json`` (hook, model, positions, counts, per-role norms) and,
when the selected positions do not fill the last row, ``remainder.safetensors`` (the < ``context_size``
left-over positions, same columns) so no study's positions are lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Array2D, Dataset, Features, Sequence, Value
from safetensors.torch import load_file

__all__ = [
    "CACHE_INFO_FILENAME",
    "FORMAT",
    "REMAINDER_FILENAME",
    "ROLE_COLUMNS",
    "cache_features",
    "load_cache_positions",
    "read_cache_info",
]

CACHE_INFO_FILENAME = "sae_rad_cache.json"
REMAINDER_FILENAME = "remainder.safetensors"
FORMAT = "sae-rad-ext activation cache v1"

ROLE_COLUMNS: dict[str, str] = {
    "token_ids": "int32",
    "study_index": "int64",
    "position": "int32",
    "role": "int8",
    "image_slot": "int8",
    "patch_row": "int16",
    "patch_col": "int16",
}


def cache_features(hook_name: str, context_size: int, d_in: int, dtype: str = "float32") -> Features:
    """The ``datasets.Features`` of a cache (see the module docstring)."""
    feats: dict[str, Any] = {hook_name: Array2D(shape=(context_size, d_in), dtype=dtype)}
    for name, dt in ROLE_COLUMNS.items():
        feats[name] = Sequence(Value(dt), length=context_size)
    feats["study_id"] = Sequence(Value("string"), length=context_size)
    return Features(feats)


def cat_columns(cols: list[dict[str, torch.Tensor]], d_in: int) -> dict[str, torch.Tensor]:
    if not cols:
        return {
            "acts": torch.zeros(0, d_in),
            **{k: torch.zeros(0, dtype=getattr(torch, v)) for k, v in ROLE_COLUMNS.items()},
        }
    return {k: torch.cat([c[k] for c in cols]) for k in cols[0]}


def rows_dataset(
    cols: dict[str, torch.Tensor], study_ids: list[str], hook_name: str, ctx: int, dtype: str, base: int = 0
) -> Dataset:
    """The full rows of ``cols`` (``study_ids[study_index - base]`` names each position's study)."""
    n = cols["acts"].shape[0] // ctx
    d_in = cols["acts"].shape[1]
    data: dict[str, Any] = {hook_name: cols["acts"][: n * ctx].reshape(n, ctx, d_in).numpy().astype(dtype)}
    for k in ROLE_COLUMNS:
        data[k] = cols[k][: n * ctx].reshape(n, ctx).numpy()
    sid = np.asarray(study_ids, dtype=object)
    data["study_id"] = (
        [list(r) for r in sid[cols["study_index"][: n * ctx].numpy() - base].reshape(n, ctx)] if n else []
    )
    return Dataset.from_dict(data, features=cache_features(hook_name, ctx, d_in, dtype))


def save_dataset(ds: Dataset, path: Path) -> None:
    """``save_to_disk`` without datasets' per-call progress bar."""
    was = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        ds.save_to_disk(str(path))
    finally:
        if was:
            datasets.utils.logging.enable_progress_bar()


def read_cache_info(path: str | Path) -> dict[str, Any] | None:
    """The cache's ``sae_rad_cache.json`` (None if the folder has none)."""
    p = Path(path) / CACHE_INFO_FILENAME
    return json.loads(p.read_text()) if p.exists() else None


def load_cache_positions(path: str | Path, with_remainder: bool = True) -> dict[str, Any]:
    """Every cached position as flat columns: ``acts [n, d_in]``, ``study_id`` (list), and the role columns
    ``[n]`` — dataset rows then the remainder. For inspection and tests (loads everything into memory)."""
    info = read_cache_info(path)
    if info is None:
        raise FileNotFoundError(f"{path} has no {CACHE_INFO_FILENAME}; is it a finished sae-rad cache?")
    hook, d_in = info["hook_name"], info["d_in"]
    ds = datasets.load_from_disk(str(path))
    ds.set_format("torch", columns=[hook, *ROLE_COLUMNS])
    rows = ds[0 : len(ds)]
    out: dict[str, Any] = {"acts": rows[hook].reshape(-1, d_in) if len(ds) else torch.zeros(0, d_in)}
    for c in ROLE_COLUMNS:
        out[c] = rows[c].reshape(-1) if len(ds) else torch.zeros(0, dtype=getattr(torch, ROLE_COLUMNS[c]))
    ds.reset_format()
    out["study_id"] = [s for row in ds[0 : len(ds)]["study_id"] for s in row] if len(ds) else []
    rp = Path(path) / REMAINDER_FILENAME
    if with_remainder and rp.exists():
        from safetensors import safe_open

        rem = load_file(str(rp))
        with safe_open(str(rp), "pt") as f:
            rem_ids = json.loads(f.metadata()["study_ids"])
        out["acts"] = torch.cat([out["acts"], rem["acts"].to(out["acts"].dtype)])
        for c in ROLE_COLUMNS:
            out[c] = torch.cat([out[c], rem[c].to(out[c].dtype)])
        out["study_id"] += rem_ids
    return out
