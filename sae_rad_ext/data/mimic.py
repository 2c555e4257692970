"""MIMIC-CXR-JPG folder layout → studies (current frontal + lateral, optional prior, parsed report).

Layout (PhysioNet MIMIC-CXR-JPG 2.x, plus the MIMIC-CXR reports)::

    ROOT/files/p10/p10000032/s50414267/02aa804e-....jpg
    ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime, ...
    ROOT/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split      (optional)
    ROOT/mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, <14 CheXpert columns> (optional)
    reports: REPORTS/files/p10/p10000032/s50414267.txt, with REPORTS = reports_dir, ROOT/mimic-cxr-reports,
             or beside the study folder (ROOT/files/p10/p10000032/s50414267.txt)

Only the metadata/split/label CSVs (text) are indexed up front; images and reports are read per study.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_rad_ext.data.base import StudyReader, StudyThunk
from sae_rad_ext.data.images import ImageDType, load_image
from sae_rad_ext.data.manifest import iter_table
from sae_rad_ext.data.read_stats import OnError, SourceError, StudyFiltered, StudyReadError
from sae_rad_ext.data.reports import parse_report_sections, study_text_fields
from sae_rad_ext.data.study import Study

FRONTAL_VIEWS = ("PA", "AP")
"""Frontal views in order of preference (MAIRA-2: PA preferred over AP)."""
LATERAL_VIEWS = ("LATERAL", "LL")

CHEXPERT_TO_FINDINGS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly",),
    "pleural_effusion": ("Pleural Effusion",),
    "pneumothorax": ("Pneumothorax",),
    "lung_opacity": ("Lung Opacity", "Consolidation"),
    "support_lines_tubes": ("Support Devices",),
    "pacemaker": (),
    "no_finding": ("No Finding",),
}
"""Project finding → CheXpert columns (several columns: positive if any is, else uncertain, else
negative, else not mentioned). ``pacemaker`` has no CheXpert column and is always ``None``."""

_SPLIT_ALIASES = {"val": "validate", "valid": "validate", "validation": "validate"}
_TABLE_NAMES = {
    "metadata": ("mimic-cxr-2.0.0-metadata", "metadata"),
    "split": ("mimic-cxr-2.0.0-split", "split"),
    "chexpert": ("mimic-cxr-2.0.0-chexpert", "chexpert"),
}


def find_table(root: Path, which: str) -> Path | None:
    """``mimic-cxr-2.0.0-<which>.csv[.gz]`` (or ``*<which>.csv[.gz]``) in ``root``."""
    for stem in _TABLE_NAMES[which]:
        for ext in (".csv", ".csv.gz"):
            p = root / f"{stem}{ext}"
            if p.is_file():
                return p
    hits = sorted(root.glob(f"*{which}.csv")) + sorted(root.glob(f"*{which}.csv.gz"))
    return hits[0] if hits else None


def is_mimic_root(path: Path) -> bool:
    return path.is_dir() and (path / "files").is_dir() and find_table(path, "metadata") is not None


def _id(v: Any) -> str:
    s = str(v).strip()
    return s[:-2] if s.endswith(".0") else s


def _label(values: list[Any]) -> int | None:
    got = set()
    for v in values:
        if v is None or str(v).strip() == "":
            continue
        got.add(int(float(v)))
    for x in (1, -1, 0):
        if x in got:
            return x
    return None


def chexpert_labels(row: dict[str, Any]) -> dict[str, int | None]:
    """A label CSV row → the project's finding labels.

    CheXpert columns are mapped with :data:`CHEXPERT_TO_FINDINGS`; a column already named after a project
    finding (``cardiomegaly``, ``pacemaker``, ..., as phantom datasets write) is taken as it is.
    """
    return {f: _label([row.get(f)] if f in row else [row.get(c) for c in cols])
            for f, cols in CHEXPERT_TO_FINDINGS.items()}


@dataclass
class _Rec:
    subject: str
    study: str
    when: tuple[int, float] = (0, 0.0)
    images: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, ViewPosition)

    def pick(self, views: tuple[str, ...]) -> tuple[str, str] | None:
        for v in views:
            for dicom_id, view in self.images:
                if view == v:
                    return dicom_id, view
        return None


class MimicCxrReader(StudyReader):
    """Studies from a MIMIC-CXR-JPG folder (see the module docstring for the layout).

    Args:
        root: the folder holding ``files/`` and the metadata CSV.
        reports_dir: where ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` reports live (default: ``ROOT/mimic-cxr-reports``
            or beside the study folders).
        split: keep one split (``train``, ``validate``/``val``, ``test``); needs the split CSV.
        require_views: ``("lateral",)`` / ``("prior",)`` keep only studies that have them (others are
            counted in ``stats.filtered``). Studies without a PA/AP image are always filtered.
        with_prior: add the subject's previous study (by StudyDate/StudyTime) that has a frontal image as
            ``prior_frontal`` with its findings (or impression) as ``prior_report``.
        require_findings: a report without a FINDINGS section is an error (``no_findings``); ``False``
            keeps it with ``findings=None`` (``Study.report`` falls back on the impression).
        study_ids: keep only these studies (``s5...`` or bare numbers).
        on_error / max_studies / shard: see :class:`StudyReader`.
        max_side / dtype: decode images downsized to this longest side / as uint8 or float32.
    """

    kind = "mimic-cxr-jpg"

    def __init__(
        self,
        root: str | Path,
        *,
        reports_dir: str | Path | None = None,
        split: str | None = None,
        require_views: Iterable[str] = (),
        with_prior: bool = False,
        require_findings: bool = True,
        study_ids: Iterable[str] | None = None,
        on_error: OnError = "raise",
        max_studies: int | None = None,
        shard: tuple[int, int] | None = None,
        max_side: int | None = None,
        dtype: ImageDType = "uint8",
        image_ext: str = ".jpg",
    ):
        super().__init__(on_error=on_error, max_studies=max_studies, shard=shard)
        self.root = Path(root)
        if not (self.root / "files").is_dir():
            raise SourceError(f"{self.root}: not a MIMIC-CXR-JPG folder (no files/ subfolder)")
        self.metadata_csv = find_table(self.root, "metadata")
        if self.metadata_csv is None:
            raise SourceError(
                f"{self.root}: no metadata CSV (expected mimic-cxr-2.0.0-metadata.csv or .csv.gz): "
                "it gives each image's ViewPosition, needed to tell frontal from lateral"
            )
        self.split = None if split is None else _SPLIT_ALIASES.get(split.lower(), split.lower())
        self.split_csv = find_table(self.root, "split")
        if self.split is not None and self.split_csv is None:
            raise SourceError(f"{self.root}: split={split!r} needs mimic-cxr-2.0.0-split.csv(.gz), which is not there")
        self.chexpert_csv = find_table(self.root, "chexpert")
        self.require_views = tuple(require_views)
        bad = set(self.require_views) - {"frontal", "lateral", "prior"}
        if bad:
            raise ValueError(f"require_views: unknown {sorted(bad)}; use 'lateral' and/or 'prior'")
        self.with_prior = with_prior or "prior" in self.require_views
        self.require_findings = require_findings
        self.study_ids = None if study_ids is None else {_id(s).lstrip("s") for s in study_ids}
        self.max_side, self.dtype, self.image_ext = max_side, dtype, image_ext
        self.reports_dir = None if reports_dir is None else Path(reports_dir)
        if self.reports_dir is not None and not self.reports_dir.is_dir():
            raise SourceError(f"reports_dir {self.reports_dir} is not a folder")
        if self.reports_dir is None and (self.root / "mimic-cxr-reports").is_dir():
            self.reports_dir = self.root / "mimic-cxr-reports"
        if self.require_findings and self.reports_dir is None and next(self.root.glob("files/p*/p*/s*.txt"), None) is None:
            raise SourceError(
                f"{self.root}: findings are required but no reports were found (looked for "
                "mimic-cxr-reports/ and files/pXX/pXXXXXXXX/sXXXXXXXX.txt); pass reports_dir= or require_findings=False"
            )
        self._cache: dict[str, Any] = {}  # shared with reopen()ed copies

    # -- index (text only) --------------------------------------------------------------------------
    def _index(self) -> dict[str, _Rec]:
        if "studies" not in self._cache:
            header, rows = iter_table(self.metadata_csv)
            need = {"dicom_id", "subject_id", "study_id", "ViewPosition"}
            if not need <= set(header):
                raise SourceError(
                    f"{self.metadata_csv}: missing columns {sorted(need - set(header))}; "
                    f"expected {sorted(need)} (+ StudyDate, StudyTime); found {header}"
                )
            studies: dict[str, _Rec] = {}
            for row in rows:
                sid = _id(row["study_id"])
                rec = studies.get(sid)
                if rec is None:
                    try:
                        when = (int(float(row.get("StudyDate") or 0)), float(row.get("StudyTime") or 0.0))
                    except ValueError:
                        when = (0, 0.0)  # unparseable date: sorts first, never a prior of a dated study
                    rec = studies[sid] = _Rec(_id(row["subject_id"]), sid, when)
                rec.images.append((row["dicom_id"].strip(), (row.get("ViewPosition") or "").strip().upper()))
            self._cache["studies"] = studies
        return self._cache["studies"]

    def _splits(self) -> dict[str, str]:
        if "splits" not in self._cache:
            _, rows = iter_table(self.split_csv)
            self._cache["splits"] = {_id(r["study_id"]): r["split"].strip().lower() for r in rows}
        return self._cache["splits"]

    def _labels(self) -> dict[str, dict[str, Any]]:
        if "labels" not in self._cache:
            out: dict[str, dict[str, Any]] = {}
            if self.chexpert_csv is not None:
                _, rows = iter_table(self.chexpert_csv)
                for r in rows:
                    out[_id(r["study_id"])] = {k: v for k, v in r.items() if k not in ("subject_id", "study_id")}
            self._cache["labels"] = out
        return self._cache["labels"]

    def _priors(self) -> dict[str, str | None]:
        """study → the same subject's latest earlier study that has a frontal image."""
        if "priors" not in self._cache:
            by_subject: dict[str, list[_Rec]] = {}
            for rec in self._index().values():
                by_subject.setdefault(rec.subject, []).append(rec)
            priors: dict[str, str | None] = {}
            for recs in by_subject.values():
                recs.sort(key=lambda r: (r.when, r.study))
                last: _Rec | None = None
                for rec in recs:
                    priors[rec.study] = last.study if last is not None and last.when < rec.when else None
                    if rec.pick(FRONTAL_VIEWS) is not None:
                        last = rec
            self._cache["priors"] = priors
        return self._cache["priors"]

    # -- paths ------------------------------------------------------------------------------------
    def study_dir(self, rec: _Rec) -> Path:
        return self.root / "files" / f"p{rec.subject[:2]}" / f"p{rec.subject}" / f"s{rec.study}"

    def report_candidates(self, rec: _Rec) -> list[Path]:
        rel = Path(f"p{rec.subject[:2]}") / f"p{rec.subject}" / f"s{rec.study}.txt"
        out = []
        if self.reports_dir is not None:
            out += [self.reports_dir / "files" / rel, self.reports_dir / rel]
        out.append(self.root / "files" / rel)
        return out

    def _report(self, rec: _Rec, *, required: bool) -> tuple[dict[str, str], Path | None]:
        for p in self.report_candidates(rec):
            if p.is_file():
                try:
                    return parse_report_sections(p.read_text(encoding="utf-8", errors="replace")), p
                except OSError as e:
                    raise StudyReadError("missing_report", f"cannot read report ({e})", path=p) from e
        if required:
            tried = self.report_candidates(rec)
            raise StudyReadError("missing_report", f"report not found (also tried {[str(p) for p in tried[1:]]})",
                                 path=tried[0])
        return {}, None

    # -- studies ----------------------------------------------------------------------------------
    def _filter(self, rec: _Rec) -> None:
        if self.study_ids is not None and rec.study not in self.study_ids:
            raise StudyFiltered("not_in_study_ids")
        if self.split is not None and self._splits().get(rec.study) != self.split:
            raise StudyFiltered(f"split!={self.split}")
        if rec.pick(FRONTAL_VIEWS) is None:
            raise StudyFiltered("no_frontal")
        if "lateral" in self.require_views and rec.pick(LATERAL_VIEWS) is None:
            raise StudyFiltered("no_lateral")
        if "prior" in self.require_views and self._priors().get(rec.study) is None:
            raise StudyFiltered("no_prior")

    def _build(self, rec: _Rec) -> Study:
        self._filter(rec)
        sections, report_path = self._report(rec, required=self.require_findings)
        text = study_text_fields(sections)
        if self.require_findings and not text["findings"]:
            raise StudyReadError(
                "no_findings", f"the report has no FINDINGS section (sections found: {sorted(sections) or 'none'})",
                path=report_path,
            )
        frontal_id, frontal_view = rec.pick(FRONTAL_VIEWS)  # type: ignore[misc]
        sdir = self.study_dir(rec)
        frontal = self._image(sdir / f"{frontal_id}{self.image_ext}")
        lateral_pick = rec.pick(LATERAL_VIEWS)
        lateral = self._image(sdir / f"{lateral_pick[0]}{self.image_ext}") if lateral_pick else None
        meta: dict[str, Any] = {
            "source": self.kind,
            "root": str(self.root),
            "subject_id": f"p{rec.subject}",
            "study_date": rec.when[0],
            "study_time": rec.when[1],
            "view_positions": dict(rec.images),
            "frontal_view": frontal_view,
            "frontal_path": str(sdir / f"{frontal_id}{self.image_ext}"),
            "report_path": None if report_path is None else str(report_path),
            "report_sections": sections,
        }
        if lateral_pick:
            meta["lateral_path"] = str(sdir / f"{lateral_pick[0]}{self.image_ext}")
        if self.split_csv is not None:
            meta["split"] = self._splits().get(rec.study)
        prior_frontal = prior_report = None
        if self.with_prior:
            prior_id = self._priors().get(rec.study)
            if prior_id is not None:
                prec = self._index()[prior_id]
                pid, pview = prec.pick(FRONTAL_VIEWS)  # type: ignore[misc]
                ppath = self.study_dir(prec) / f"{pid}{self.image_ext}"
                prior_frontal = self._image(ppath)
                psections, _ = self._report(prec, required=False)
                ptext = study_text_fields(psections)
                prior_report = ptext["findings"] or ptext["impression"]
                meta.update(prior_study_id=f"s{prior_id}", prior_frontal_path=str(ppath), prior_frontal_view=pview)
        labels: dict[str, int | None] = {}
        raw = self._labels().get(rec.study)
        if raw is not None:
            labels = chexpert_labels(raw)
            meta["chexpert"] = {k: (None if str(v).strip() == "" else float(v)) for k, v in raw.items()}
        return Study(
            study_id=f"s{rec.study}", frontal=frontal, lateral=lateral, prior_frontal=prior_frontal,
            prior_report=prior_report, indication=text["indication"], technique=text["technique"],
            comparison=text["comparison"], findings=text["findings"], impression=text["impression"],
            labels=labels, metadata=meta,
        )

    def _image(self, path: Path):
        return load_image(path, max_side=self.max_side, dtype=self.dtype)

    def _candidates(self) -> Iterator[tuple[str, StudyThunk]]:
        for rec in self._index().values():
            yield f"s{rec.study}", (lambda rec=rec: self._build(rec))

    def count(self) -> int:
        """Studies that pass the filters (from the CSVs alone: files and reports are not checked)."""
        n = 0
        for i, rec in enumerate(self._index().values()):
            if self.shard is not None and i % self.shard[1] != self.shard[0]:
                continue
            try:
                self._filter(rec)
            except StudyFiltered:
                continue
            n += 1
        return n if self.max_studies is None else min(n, self.max_studies)
