"""Hugging Face ``datasets`` → studies: a ``save_to_disk`` folder, an ``imagefolder``, or a dataset object."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sae_rad_ext.data.base import StudyReader, StudyThunk
from sae_rad_ext.data.images import ImageDType
from sae_rad_ext.data.read_stats import OnError, SourceError
from sae_rad_ext.data.rows import resolve_columns, row_to_study

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def is_saved_dataset(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def is_imagefolder(path: Path) -> bool:
    """A folder of images (optionally with ``metadata.csv/jsonl`` whose ``file_name`` column names them)."""
    if not path.is_dir():
        return False
    for name in ("metadata.csv", "metadata.jsonl"):
        if (path / name).is_file():
            head = (path / name).read_text(encoding="utf-8", errors="replace")[:4096]
            if "file_name" in head:
                return True
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())


class HFDatasetReader(StudyReader):
    """Studies from a Hugging Face dataset, streamed row by row.

    Args:
        source: a ``save_to_disk`` folder (``load_from_disk``; memory-mapped Arrow, rows read lazily), an
            ``imagefolder`` folder (``load_dataset("imagefolder", data_dir=..., streaming=True)``), or a
            ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict`` object.
        split: which split of a ``DatasetDict`` (default: ``train`` or the only one).
        columns: study field → column, e.g. ``{"frontal": "image", "findings": "text"}`` (defaults in
            :data:`~sae_rad_ext.data.rows.DEFAULT_COLUMNS`). Image columns may hold PIL images, arrays,
            bytes, ``{"bytes", "path"}`` dicts or paths (relative to the dataset folder).
        require_findings: default ``True`` (``False`` for an imagefolder without a text column).
    """

    kind = "hf"

    def __init__(
        self,
        source: Any,
        *,
        split: str | None = None,
        columns: Mapping[str, str | None] | None = None,
        require_findings: bool | None = None,
        on_error: OnError = "raise",
        max_studies: int | None = None,
        shard: tuple[int, int] | None = None,
        max_side: int | None = None,
        dtype: ImageDType = "uint8",
    ):
        super().__init__(on_error=on_error, max_studies=max_studies, shard=shard)
        import datasets

        self.max_side, self.dtype = max_side, dtype
        self.base_dir: Path | None = None
        name = type(source).__name__
        if isinstance(source, str | Path):
            path = Path(source)
            self.base_dir = path
            if is_saved_dataset(path):
                ds = datasets.load_from_disk(str(path))
                self.kind = "hf-disk"
            elif is_imagefolder(path):
                ds = datasets.load_dataset("imagefolder", data_dir=str(path), streaming=True)
                self.kind = "imagefolder"
            else:
                raise SourceError(f"{path}: not a datasets folder (no dataset_dict.json/state.json) nor an imagefolder")
            name = str(path)
        else:
            ds = source
        if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
            splits = list(ds)
            if split is None:
                split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
                if split is None:
                    raise SourceError(f"{name}: several splits {splits}; pass split=")
            if split not in ds:
                raise SourceError(f"{name}: no split {split!r}; splits: {splits}")
            ds = ds[split]
        elif split is not None and getattr(ds, "split", None) not in (None, split):
            raise SourceError(f"{name}: split={split!r} but the dataset is split {ds.split!r}")
        self.dataset, self.split, self.name = ds, split, name
        found = list(ds.column_names or []) if ds.column_names is not None else list(ds.features or {})
        has_text = any(c in found for c in ("findings", "text", "caption", "report", "report_text", "report_path"))
        if require_findings is None:
            require_findings = self.kind != "imagefolder" or has_text or bool(columns and columns.get("findings"))
        self.require_findings = require_findings
        self.columns = resolve_columns(found, columns, source=name, require_findings=require_findings)

    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        import datasets

        ds = self.dataset
        if isinstance(ds, datasets.Dataset):  # random access: rows are only fetched (and decoded) when built
            ids = ds[self.columns["study_id"]] if "study_id" in self.columns else [None] * len(ds)
            for n, sid in enumerate(ids):
                sid = str(sid) if sid not in (None, "") else f"{self.split or 'row'}-{n}"
                yield sid, (lambda n=n, sid=sid: self._build(ds[n], sid, n))
        else:
            for n, row in enumerate(ds):
                sid = row.get(self.columns["study_id"]) if "study_id" in self.columns else None
                sid = str(sid) if sid not in (None, "") else f"{self.split or 'row'}-{n}"
                yield sid, (lambda row=row, sid=sid, n=n: self._build(row, sid, n))

    def _build(self, row: dict[str, Any], sid: str, n: int):
        return row_to_study(
            row, self.columns, study_id=sid, base_dir=self.base_dir, require_findings=self.require_findings,
            max_side=self.max_side, dtype=self.dtype, source=f"{self.name} row {n}",
            extra_metadata={"source": self.kind, "row": n},
        )

    def count(self) -> int:
        import datasets

        ds = self.dataset
        if isinstance(ds, datasets.Dataset):
            n = len(ds)
        elif self.kind == "imagefolder" and self.base_dir is not None:
            n = sum(1 for p in self.base_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            n = sum(1 for _ in ds)
        if self.shard is not None:
            n = len(range(self.shard[0], n, self.shard[1]))
        return n if self.max_studies is None else min(n, self.max_studies)
