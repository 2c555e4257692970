"""Activation cache in SAELens's cached-activations format, written in resumable shards, optionally by
several processes under ``torchrun``.

Format: :mod:`sae_rad_ext.activations.cache_format` (also re-exported here).

Resumability: studies are cut into shards of ``studies_per_shard`` consecutive studies (shard ``k`` =
studies ``[k*S, (k+1)*S)`` of the source stream). A shard is written to ``.shards/shard_k.partial``,
renamed to ``.shards/shard_k`` and then recorded in ``.shards/manifest-rank<r>.json`` (written to a
temporary file and ``os.replace``-d, so it is never half-written). A rerun skips recorded shards and
deletes unrecorded shard folders, so a kill at any moment loses nothing and duplicates nothing. Under
``torchrun`` rank ``r`` of ``W`` writes shards ``k % W == r``; rank 0 merges once all ranks are done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors.torch import load_file, save_file

from sae_rad_ext.activations.cache_format import (
    CACHE_INFO_FILENAME,
    FORMAT,
    REMAINDER_FILENAME,
    ROLE_COLUMNS,
    cache_features,
    cat_columns,
    load_cache_positions,
    read_cache_info,
    rows_dataset,
    save_dataset,
)
from sae_rad_ext.activations.extract import (
    ActivationBatch,
    RoleNormStats,
    activations_from_batch,
    default_processor,
)
from sae_rad_ext.activations.extract import describe_positions as _describe
from sae_rad_ext.adapters.hooked import HookedMaira2
from sae_rad_ext.adapters.prompts import Maira2Processor
from sae_rad_ext.adapters.roles import Selection
from sae_rad_ext.data.study import Study
from sae_rad_ext.util.batching import batched
from sae_rad_ext.util.files import write_json
from sae_rad_ext.util.progress import ProgressCallback, Ticker

__all__ = [
    "CACHE_INFO_FILENAME",
    "CacheResult",
    "cache_activations",
    "cache_features",
    "load_cache_positions",
    "read_cache_info",
]

@dataclass
class CacheResult:
    """What :func:`cache_activations` did (on rank 0 after the merge; on other ranks, their own part)."""

    path: Path
    """The cache folder."""
    n_studies: int
    """Studies in the source stream."""
    n_rows: int
    """Rows in the merged dataset (0 on ranks other than 0)."""
    n_positions: int
    """Selected positions written (rows × context_size + remainder); rank 0 only."""
    n_remainder: int
    """Positions in ``remainder.safetensors`` (fewer than one row)."""
    shards_written: int
    """Shards this process wrote in this call (resumed shards are not counted)."""
    role_norms: dict[str, Any]
    """Per-role activation norm summary (:meth:`RoleNormStats.to_dict`)."""


# ---- columns ---------------------------------------------------------------------------------
def _batch_columns(out: ActivationBatch, first_study: int) -> dict[str, Any]:
    return {
        "acts": out.acts.detach().float().cpu(),
        "token_ids": out.token_id.to(torch.int32),
        "study_index": out.study_index.long() + first_study,
        "position": out.position.to(torch.int32),
        "role": out.role.to(torch.int8),
        "image_slot": out.image_slot.to(torch.int8),
        "patch_row": out.patch_row.to(torch.int16),
        "patch_col": out.patch_col.to(torch.int16),
    }


def _read_manifests(shard_dir: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for f in sorted(shard_dir.glob("manifest-rank*.json")):
        for entry in json.loads(f.read_text())["shards"]:
            done[int(entry["shard"])] = entry
    return done


# ---- distributed -----------------------------------------------------------------------------
def _rank_world() -> tuple[int, int, bool]:
    """``(rank, world_size, we_initialised)``; initialises torch.distributed under torchrun (gloo on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = os.environ.get("SAE_RAD_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ---- main entry ------------------------------------------------------------------------------
@torch.no_grad()
def cache_activations(
    model: HookedMaira2,
    studies: Callable[[], Iterable[Study]] | Iterable[Study],
    out_dir: str | Path,
    hook_name: str,
    *,
    context_size: int,
    positions: Selection = "maira2_sae_paper",
    processor: Maira2Processor | None = None,
    batch_size: int = 8,
    studies_per_shard: int = 64,
    with_report: bool = True,
    task: str = "findings",
    dtype: str = "float32",
    model_name: str | None = None,
    data_description: str | None = None,
    keep_shards: bool = False,
    progress: ProgressCallback | None = None,
) -> CacheResult:
    """Cache ``hook_name`` activations of the selected positions of every study into ``out_dir``.

    Reruns resume (completed shards are skipped). Under ``torchrun`` each rank calls this with the same
    arguments; ranks write disjoint shards and rank 0 merges. ``progress`` gets two events after
    each model batch this process runs: stages ``"studies"`` and ``"positions"`` (cumulative, this process).
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(
            f"cache dtype must be float32 or float16 (what datasets' Array2D stores); got {dtype!r}"
        )
    out = Path(out_dir)
    info_path = out / CACHE_INFO_FILENAME
    rank, world, own_pg = _rank_world()
    try:
        if info_path.exists() and json.loads(info_path.read_text()).get("complete"):
            info = json.loads(info_path.read_text())
            return CacheResult(
                out,
                info["n_studies"],
                info["n_rows"],
                info["n_positions"],
                info["n_remainder"],
                0,
                info["role_norms"],
            )
        shard_dir = out / ".shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = shard_dir / f"manifest-rank{rank}.json"
        _barrier(world)
        done = _read_manifests(shard_dir)
        if rank == 0:  # unrecorded (half-written or unrecorded) shard folders are redone
            for p in shard_dir.glob("shard_*"):
                k = int(p.name.split("_")[1].split(".")[0])
                if k not in done or p.name.endswith(".partial"):
                    shutil.rmtree(p)
        _barrier(world)
        own = [e for e in done.values() if e.get("rank") == rank]
        processor = processor if processor is not None else default_processor(model)
        factory = studies if callable(studies) else (lambda: studies)
        written, n_studies, d_in = 0, 0, None
        tick_studies, tick_positions = Ticker(progress, "studies"), Ticker(progress, "positions")
        for k, group in groupby(enumerate(factory()), key=lambda p: p[0] // studies_per_shard):
            chunk = [s for _, s in group]
            n_studies = k * studies_per_shard + len(chunk)
            if k % world != rank or k in done:
                continue
            first = k * studies_per_shard
            cols, stats, ids = [], RoleNormStats(), [s.study_id for s in chunk]
            for j, sub in enumerate(batched(chunk, batch_size)):
                b = processor.build(sub, task=task, with_report=with_report)
                act = activations_from_batch(model, b, hook_name, positions)
                stats.update_batch(act)
                cols.append(_batch_columns(act, first + j * batch_size))
                tick_studies(len(sub))
                tick_positions(len(act))
            c = cat_columns(cols, d_in or 0)
            d_in = int(c["acts"].shape[1]) if c["acts"].numel() else d_in
            n_full = c["acts"].shape[0] // context_size
            part = shard_dir / f"shard_{k:06d}.partial"
            if part.exists():
                shutil.rmtree(part)
            part.mkdir()
            if n_full:
                save_dataset(rows_dataset(c, ids, hook_name, context_size, dtype, base=first), part / "rows")
            tail = {k2: v[n_full * context_size :].contiguous() for k2, v in c.items()}
            save_file(tail, str(part / "tail.safetensors"))
            (part / "study_ids.json").write_text(json.dumps(ids))
            os.replace(part, shard_dir / f"shard_{k:06d}")
            own.append(
                {
                    "shard": k,
                    "rank": rank,
                    "first_study": first,
                    "n_studies": len(chunk),
                    "n_rows": int(n_full),
                    "n_tail": int(tail["acts"].shape[0]),
                    "d_in": d_in,
                    "norms": stats.state(),
                }
            )
            write_json(manifest_path, {"shards": sorted(own, key=lambda e: e["shard"])}, indent=1)
            written += 1
        (shard_dir / f"done-rank{rank}.json").write_text(json.dumps({"n_studies": n_studies}))
        _barrier(world)
        if rank != 0:
            _barrier(world)
            stats = RoleNormStats()
            for e in own:
                stats.merge(RoleNormStats.from_state(e["norms"]))
            return CacheResult(out, n_studies, 0, 0, 0, written, stats.to_dict())
        result = _merge(
            out,
            hook_name,
            context_size,
            dtype,
            n_studies,
            studies_per_shard,
            meta={
                "hook_name": hook_name,
                "model_name": model_name,
                "positions": _describe(positions),
                "with_report": with_report,
                "task": task,
                "data": data_description,
            },
            keep_shards=keep_shards,
        )
        result.shards_written = written
        _barrier(world)
        return result
    finally:
        if own_pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _merge(
    out: Path,
    hook_name: str,
    ctx: int,
    dtype: str,
    n_studies: int,
    sps: int,
    meta: dict[str, Any],
    keep_shards: bool,
) -> CacheResult:
    shard_dir = out / ".shards"
    done = _read_manifests(shard_dir)
    n_shards = -(-n_studies // sps)
    missing = [k for k in range(n_shards) if k not in done]
    if missing:
        raise RuntimeError(
            f"cannot merge the cache in {out}: shards {missing[:10]} are missing (rerun to resume)"
        )
    parts, tails, stats = [], [], RoleNormStats()
    d_in = next((e["d_in"] for e in done.values() if e.get("d_in")), None)
    if d_in is None:
        raise RuntimeError(f"no positions were selected from {n_studies} studies; nothing to cache")
    all_ids: list[str] = []
    for k in range(n_shards):
        d = shard_dir / f"shard_{k:06d}"
        stats.merge(RoleNormStats.from_state(done[k]["norms"]))
        ids = json.loads((d / "study_ids.json").read_text())
        if (d / "rows").exists():
            parts.append(datasets.load_from_disk(str(d / "rows")))
        t = load_file(str(d / "tail.safetensors"))
        if t["acts"].shape[0]:
            tails.append(t)
        all_ids.extend(ids)
    tail = cat_columns(tails, d_in)
    n_tail_rows = tail["acts"].shape[0] // ctx
    if n_tail_rows:
        parts.append(rows_dataset(tail, all_ids, hook_name, ctx, dtype))
    rem = {k: v[n_tail_rows * ctx :].contiguous() for k, v in tail.items()}
    ds = (
        datasets.concatenate_datasets(parts)
        if parts
        else rows_dataset(cat_columns([], d_in), [], hook_name, ctx, dtype)
    )
    tmp = out / ".merge_tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_dataset(ds, tmp)
    for name in ("state.json", "dataset_info.json"):
        (out / name).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == "state.json"):
        os.replace(f, out / f.name)
    tmp.rmdir()
    (out / REMAINDER_FILENAME).unlink(missing_ok=True)
    if rem["acts"].shape[0]:
        rem_ids = [all_ids[i] for i in rem["study_index"].tolist()]
        save_file(rem, str(out / REMAINDER_FILENAME), metadata={"study_ids": json.dumps(rem_ids)})
    n_rows = len(ds)
    info = {
        "format": FORMAT,
        "complete": True,
        **meta,
        "context_size": ctx,
        "d_in": d_in,
        "dtype": dtype,
        "n_studies": n_studies,
        "n_rows": n_rows,
        "n_positions": n_rows * ctx + int(rem["acts"].shape[0]),
        "n_remainder": int(rem["acts"].shape[0]),
        "studies_per_shard": sps,
        "columns": [hook_name, "token_ids", "study_id", *[c for c in ROLE_COLUMNS if c != "token_ids"]],
        "role_norms": stats.to_dict(),
        "role_norm_state": stats.state(),
    }
    write_json(out / CACHE_INFO_FILENAME, info, indent=1)
    if not keep_shards:
        shutil.rmtree(shard_dir)
    return CacheResult(
        out, n_studies, n_rows, info["n_positions"], info["n_remainder"], 0, info["role_norms"]
    )
