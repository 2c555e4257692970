"""CSV / TSV / JSONL / JSON manifests: one row per study, image paths relative to the manifest."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sae_rad_ext.data.base import StudyReader, StudyThunk
from sae_rad_ext.data.images import ImageDType
from sae_rad_ext.data.read_stats import OnError, SourceError
from sae_rad_ext.data.rows import resolve_columns, row_to_study

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


def _suffix(path: Path) -> str:
    s = path.suffixes
    return (s[-2] if len(s) >= 2 and s[-1] == ".gz" else path.suffix).lower()


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_table(path: str | Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """``(columns, rows)`` of a CSV/TSV/JSONL/JSON table, streamed (JSON arrays/dicts are parsed whole).

    JSON may be a list of row objects or ``{key: {...}}`` (the key becomes ``"_key"`` unless the
    row has its own ``study_id``). JSONL columns are the union of all rows' keys.
    """
    path = Path(path)
    kind = _suffix(path)
    if kind in (".csv", ".tsv"):
        f = _open_text(path)
        reader = csv.DictReader(f, delimiter="\t" if kind == ".tsv" else ",")
        header = list(reader.fieldnames or [])

        def rows_csv() -> Iterator[dict[str, Any]]:
            with f:
                yield from reader

        return header, rows_csv()
    if kind in (".jsonl", ".ndjson"):
        cols: dict[str, None] = {}
        with _open_text(path) as f:  # a text-only pass for the union of keys (rows may differ)
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{path}: line {n} is not JSON ({e})") from e
                    if not isinstance(row, dict):
                        raise SourceError(f"{path}: line {n} is not a JSON object")
                    cols.update(dict.fromkeys(row))

        def rows_jsonl() -> Iterator[dict[str, Any]]:
            with _open_text(path) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)

        return list(cols), rows_jsonl()
    if kind == ".json":
        with _open_text(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and isinstance(data.get("studies"), list):
            data = data["studies"]
        if isinstance(data, dict):
            data = [{"_key": k, **v} if isinstance(v, dict) else {"_key": k, "findings": v} for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise SourceError(f"{path}: expected a JSON list of row objects or {{key: {{...}}}}")
        cols: dict[str, None] = {}
        for r in data:
            cols.update(dict.fromkeys(r))
        return list(cols), iter(data)
    raise SourceError(f"{path}: unknown table format {kind!r}; expected one of {MANIFEST_SUFFIXES} (optionally .gz)")


class ManifestReader(StudyReader):
    """Studies from a manifest file: one row per study.

    Columns (defaults in :data:`sae_rad_ext.data.rows.DEFAULT_COLUMNS`, override with ``columns=``):
    ``study_id``, image paths ``frontal`` (required), ``lateral``, ``prior_frontal`` (JPEG/PNG/DICOM,
    relative to the manifest's folder), text ``findings`` (or a whole ``report`` / ``report_path`` that
    is parsed into sections), ``indication``, ``technique``, ``comparison``, ``impression``,
    ``prior_report``; label columns named after :data:`FINDINGS`; any other column goes to metadata.
    """

    kind = "manifest"

    def __init__(
        self,
        path: str | Path,
        *,
        columns: Mapping[str, str | None] | None = None,
        base_dir: str | Path | None = None,
        require_findings: bool = True,
        on_error: OnError = "raise",
        max_studies: int | None = None,
        max_side: int | None = None,
        dtype: ImageDType = "uint8",
    ):
        super().__init__(on_error=on_error, max_studies=max_studies)
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"{self.path}: manifest file not found")
        self.base_dir = Path(base_dir) if base_dir is not None else self.path.parent
        self.require_findings = require_findings
        self.max_side, self.dtype = max_side, dtype
        header, rows = iter_table(self.path)
        if hasattr(rows, "close"):
            rows.close()
        self.columns = resolve_columns(header, columns, source=str(self.path), require_findings=require_findings)

    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        _, rows = iter_table(self.path)
        for n, row in enumerate(rows, start=1):
            sid = row.get(self.columns["study_id"]) if "study_id" in self.columns else None
            sid = str(sid if sid not in (None, "") else row.get("_key", f"row{n}"))

            def build(row=row, sid=sid, n=n):
                return row_to_study(
                    row, self.columns, study_id=sid, base_dir=self.base_dir, require_findings=self.require_findings,
                    max_side=self.max_side, dtype=self.dtype, source=f"{self.path} row {n}",
                    extra_metadata={"manifest": str(self.path), "row": n},
                )

            yield sid, build

    def count(self) -> int:
        _, rows = iter_table(self.path)
        n = sum(1 for _ in rows)
        return n if self.max_studies is None else min(n, self.max_studies)
