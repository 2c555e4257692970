"""A folder (or list) of DICOM files → studies, with report text from a CSV/JSON/JSONL sidecar."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from sae_rad_ext.data.base import StudyReader, StudyThunk
from sae_rad_ext.data.dicom import is_dicom
from sae_rad_ext.data.images import ImageDType
from sae_rad_ext.data.manifest import iter_table
from sae_rad_ext.data.read_stats import OnError, SourceError, StudyFiltered, StudyReadError
from sae_rad_ext.data.rows import resolve_columns, row_to_study

SIDECAR_NAMES = ("sidecar", "reports", "studies", "metadata")
_FRONTAL = {"PA": 0, "AP": 1}
_LATERAL = {"LATERAL", "LL", "RL", "LAT", "XTABLE LATERAL"}
_KEY_COLUMNS = ("study_id", "StudyInstanceUID", "AccessionNumber", "file", "file_name", "path", "dicom", "_key")


def list_dicoms(root: Path) -> list[Path]:
    """Every DICOM file under ``root`` (by suffix or the ``DICM`` magic), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and is_dicom(p))


def find_sidecar(root: Path) -> Path | None:
    for stem in SIDECAR_NAMES:
        for ext in (".csv", ".jsonl", ".json", ".tsv"):
            if (root / f"{stem}{ext}").is_file():
                return root / f"{stem}{ext}"
    return None


def _header(path: Path) -> dict[str, str]:
    import pydicom

    tags = ["StudyInstanceUID", "AccessionNumber", "ViewPosition", "SeriesDescription", "SOPInstanceUID", "PatientID"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except Exception:
        return {}
    return {t: str(ds.get(t, "") or "").strip() for t in tags}


class DicomReader(StudyReader):
    """Studies from DICOM files.

    Args:
        source: a folder (searched recursively) or a list of files.
        sidecar: a CSV/TSV/JSON/JSONL table of text per study (columns as for manifests: ``findings`` or a
            whole ``report``, ``indication``, ...), keyed by a ``study_id`` (StudyInstanceUID, AccessionNumber
            or file stem) or ``file`` column (file name or path relative to the folder). Default: ``sidecar``,
            ``reports`` or ``studies`` ``.csv/.jsonl/.json`` in the folder, if any.
        group_by: ``"study"`` groups files by StudyInstanceUID (a header-only pass) and takes the frontal
            (PA over AP, then images without a ViewPosition) and lateral image by ViewPosition (a study with
            only lateral images is filtered, ``stats.filtered["no_frontal"]``); ``"file"`` makes each file a study (no pre-pass).
        require_findings: default ``True`` when there is a sidecar, else ``False`` (images only).
        window / voi: passed to :func:`read_dicom` through the image loader defaults (VOI applied).
    """

    kind = "dicom"

    def __init__(
        self,
        source: str | Path | Iterable[str | Path],
        *,
        sidecar: str | Path | None = None,
        columns: Mapping[str, str | None] | None = None,
        group_by: Literal["study", "file"] = "study",
        require_findings: bool | None = None,
        on_error: OnError = "raise",
        max_studies: int | None = None,
        shard: tuple[int, int] | None = None,
        max_side: int | None = None,
        dtype: ImageDType = "uint8",
    ):
        super().__init__(on_error=on_error, max_studies=max_studies, shard=shard)
        if group_by not in ("study", "file"):
            raise ValueError(f"group_by must be 'study' or 'file', got {group_by!r}")
        if isinstance(source, str | Path):
            src = Path(source)
            if src.is_dir():
                self.base_dir = src
                self.files = list_dicoms(src)
                sidecar = sidecar if sidecar is not None else find_sidecar(src)
            elif src.is_file():
                self.base_dir, self.files = src.parent, [src]
            else:
                raise SourceError(f"{src}: no such DICOM file or folder")
        else:
            self.files = [Path(p) for p in source]
            self.base_dir = Path(sidecar).parent if sidecar is not None else Path(".")
        if not self.files:
            raise SourceError(f"{source}: no DICOM files found (looked for *.dcm and files with the DICM magic)")
        self.group_by = group_by
        self.max_side, self.dtype = max_side, dtype
        self.sidecar = None if sidecar is None else Path(sidecar)
        self.require_findings = (self.sidecar is not None) if require_findings is None else require_findings
        self._rows: dict[str, dict[str, Any]] = {}
        self._group_cache: list = []  # shared with reopen()ed copies
        self.columns: dict[str, str] = {}
        if self.sidecar is not None:
            header, rows = iter_table(self.sidecar)
            keys = [k for k in _KEY_COLUMNS if k in header]
            if not keys:
                raise SourceError(f"{self.sidecar}: no key column; expected one of {list(_KEY_COLUMNS)}; found {header}")
            self.columns = resolve_columns(header, columns, source=str(self.sidecar),
                                           require_findings=self.require_findings, required=())
            for k in ("frontal", "lateral", "study_id"):
                self.columns.pop(k, None)
            for row in rows:
                for k in keys:
                    v = str(row.get(k) or "").strip()
                    if v:
                        self._rows.setdefault(v, row)
                        self._rows.setdefault(Path(v).stem, row)
        elif self.require_findings:
            raise SourceError(f"{source}: require_findings=True but no sidecar with report text was given or found "
                              f"(looked for {', '.join(n + '.csv/.jsonl/.json' for n in SIDECAR_NAMES)})")

    def _groups(self) -> list[tuple[str, Path | None, Path | None, dict[str, str]]]:
        """(study id, frontal, lateral, header) per study, in file order (one header-only pass, cached)."""
        if self._group_cache:
            return self._group_cache[0]
        groups: dict[str, list[tuple[Path, dict[str, str]]]] = {}
        for p in self.files:
            h = _header(p)
            groups.setdefault(h.get("StudyInstanceUID") or str(p), []).append((p, h))
        out = []
        for key, members in groups.items():
            def rank(m):
                view = m[1].get("ViewPosition", "").upper()
                return _FRONTAL.get(view, 2 if view not in _LATERAL else 9)

            frontals = sorted((m for m in members if rank(m) < 9), key=rank)
            laterals = [m for m in members if rank(m) == 9]
            first = (frontals or laterals)[0]
            sid = key if key != str(first[0]) else first[0].stem
            if not frontals:  # lateral-only: filtered at build time (as MIMIC studies without PA/AP are)
                out.append((sid, None, first[0], first[1]))
                continue
            out.append((sid, frontals[0][0], laterals[0][0] if laterals else None, frontals[0][1]))
        self._group_cache.append(out)
        return out

    def _row_for(self, sid: str, paths: list[Path], header: dict[str, str]) -> dict[str, Any] | None:
        keys = [sid, header.get("StudyInstanceUID", ""), header.get("AccessionNumber", "")]
        for p in paths:
            keys += [p.name, p.stem, str(p)]
            try:
                keys.append(str(p.relative_to(self.base_dir)))
            except ValueError:
                pass
        for k in keys:
            if k and k in self._rows:
                return self._rows[k]
        return None

    def _build(self, sid: str, frontal: Path | None, lateral: Path | None, header: dict[str, str]):
        if frontal is None:
            raise StudyFiltered("no_frontal")
        row = self._row_for(sid, [p for p in (frontal, lateral) if p is not None], header) if self._rows else None
        if row is None and self.sidecar is not None and self.require_findings:
            raise StudyReadError("missing_report", f"no row for this study in sidecar {self.sidecar}", path=frontal)
        cols = dict(self.columns)
        cols.update(frontal="__frontal", lateral="__lateral")
        full = {**(row or {}), "__frontal": str(frontal), "__lateral": None if lateral is None else str(lateral)}
        extra = {"source": self.kind, "dicom_header": header}
        if self.sidecar is not None:
            extra["sidecar"] = str(self.sidecar)
        return row_to_study(full, cols, study_id=sid, base_dir=self.base_dir, require_findings=self.require_findings,
                            max_side=self.max_side, dtype=self.dtype, source=str(frontal), extra_metadata=extra)

    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        if self.group_by == "file":
            for p in self.files:
                yield p.stem, (lambda p=p: self._build(p.stem, p, None, {}))
            return
        for sid, frontal, lateral, header in self._groups():
            yield sid, (lambda a=(sid, frontal, lateral, header): self._build(*a))

    def count(self) -> int:
        n = len(self.files) if self.group_by == "file" else len(self._groups())
        if self.shard is not None:
            n = len(range(self.shard[0], n, self.shard[1]))
        return n if self.max_studies is None else min(n, self.max_studies)
