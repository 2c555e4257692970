"""Tabular rows (manifest lines, dataset rows, DICOM sidecars) → :class:`Study`, with column mapping."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sae_rad_ext.data.images import ImageDType, decode_image_value
from sae_rad_ext.data.read_stats import SourceError, StudyReadError
from sae_rad_ext.data.reports import parse_report_sections, study_text_fields
from sae_rad_ext.data.study import FINDINGS, Study

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "study_id": ("study_id", "id", "study", "uid"),
    "frontal": ("frontal", "frontal_path", "frontal_image", "image", "image_path", "img", "file_name", "path"),
    "lateral": ("lateral", "lateral_path", "lateral_image"),
    "prior_frontal": ("prior_frontal", "prior_frontal_path", "prior_image", "prior"),
    "prior_report": ("prior_report", "prior_findings"),
    "indication": ("indication", "clinical_information", "history", "reason"),
    "technique": ("technique",),
    "comparison": ("comparison",),
    "findings": ("findings", "text", "caption"),
    "impression": ("impression",),
    "report": ("report", "report_text", "full_report"),
    "report_path": ("report_path", "report_file"),
    "labels": ("labels",),
}
"""Study field → column names tried in order when ``columns=`` does not name one.

``report`` is a whole report (parsed with :func:`parse_report_sections` to fill any text field its own
column left empty); ``report_path`` is a ``.txt`` report file (relative to the source). Label columns are
named after a finding (``cardiomegaly``) or ``label_<finding>``; a ``metadata`` column holding a JSON object
(or a dict) is merged into ``Study.metadata``."""

IMAGE_FIELDS = ("frontal", "lateral", "prior_frontal")
TEXT_FIELDS = ("prior_report", "indication", "technique", "comparison", "findings", "impression")
LABEL_NAMES = (*FINDINGS, "no_finding")


def resolve_columns(
    found: Iterable[str],
    columns: Mapping[str, str | None] | None,
    *,
    source: str,
    require_findings: bool,
    required: tuple[str, ...] = ("frontal",),
) -> dict[str, str]:
    """Map study fields to the source's column names; a clear :class:`SourceError` when one is missing.

    ``columns`` entries override the defaults (``None`` turns a field off); an entry naming a column
    the source lacks is an error, as is a missing required field or (with ``require_findings``) no
    findings/report column at all.
    """
    found = list(found)
    have = set(found)
    columns = dict(columns or {})
    unknown = set(columns) - set(DEFAULT_COLUMNS) - set(LABEL_NAMES)
    if unknown:
        raise ValueError(f"columns= has unknown study fields {sorted(unknown)}; known: {sorted(DEFAULT_COLUMNS)}")
    out: dict[str, str] = {}
    for fieldname, candidates in DEFAULT_COLUMNS.items():
        if fieldname in columns:
            col = columns[fieldname]
            if col is None:
                continue
            if col not in have:
                raise SourceError(
                    f"{source}: columns={{{fieldname!r}: {col!r}}} but there is no column {col!r}; found columns: {found}"
                )
            out[fieldname] = col
            continue
        for cand in candidates:
            if cand in have and cand not in out.values():
                out[fieldname] = cand
                break
    for name in LABEL_NAMES:
        if name in columns:
            col = columns[name]
            if col is not None and col not in have:
                raise SourceError(f"{source}: columns={{{name!r}: {col!r}}} but there is no column {col!r}; found columns: {found}")
        else:
            col = next((c for c in (name, f"label_{name}") if c in have), None)
        if col is not None:
            out[name] = col
    missing = [f for f in required if f not in out]
    if missing:
        expected = {f: list(DEFAULT_COLUMNS[f]) for f in missing}
        raise SourceError(
            f"{source}: no column for {missing}. Expected one of {expected} (or map yours with "
            f"columns={{'frontal': '<your column>'}}); found columns: {found}"
        )
    if require_findings and not ({"findings", "report", "report_path"} & set(out)):
        raise SourceError(
            f"{source}: findings are required but there is no text column. Expected one of "
            f"findings={list(DEFAULT_COLUMNS['findings'])}, report={list(DEFAULT_COLUMNS['report'])} or "
            f"report_path={list(DEFAULT_COLUMNS['report_path'])} (or pass columns={{'findings': ...}}, "
            f"or require_findings=False); found columns: {found}"
        )
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _text(v: Any) -> str | None:
    return None if _blank(v) else str(v).strip()


def parse_label(v: Any) -> int | None:
    """CheXpert-style label: ``1/1.0/"1"`` → 1, ``0`` → 0, ``-1`` → -1, blank/NaN → None."""
    if _blank(v):
        return None
    if isinstance(v, bool):
        return int(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        s = str(v).strip().lower()
        table = {"positive": 1, "true": 1, "yes": 1, "negative": 0, "false": 0, "no": 0, "uncertain": -1}
        if s in table:
            return table[s]
        raise ValueError(f"label {v!r} is not 1/0/-1/blank") from None
    if x not in (1.0, 0.0, -1.0):
        raise ValueError(f"label {v!r} is not 1/0/-1/blank")
    return int(x)


def _labels(row: Mapping[str, Any], cols: dict[str, str]) -> dict[str, int | None]:
    labels: dict[str, int | None] = {}
    if "labels" in cols and not _blank(row.get(cols["labels"])):
        raw = row[cols["labels"]]
        if isinstance(raw, str):
            raw = json.loads(raw)
        labels.update({str(k): parse_label(v) for k, v in dict(raw).items()})
    for name in LABEL_NAMES:
        if name in cols:
            labels[name] = parse_label(row.get(cols[name]))
    return labels


def row_to_study(
    row: Mapping[str, Any],
    cols: dict[str, str],
    *,
    study_id: str,
    base_dir: str | Path | None,
    require_findings: bool,
    max_side: int | None = None,
    dtype: ImageDType = "uint8",
    source: str = "",
    extra_metadata: Mapping[str, Any] | None = None,
) -> Study:
    """Build one study from a row (decodes its images). Raises :class:`StudyReadError`."""
    text: dict[str, str | None] = {f: _text(row.get(cols[f])) if f in cols else None for f in TEXT_FIELDS}
    report_file = None
    full = _text(row.get(cols["report"])) if "report" in cols else None
    if full is None and "report_path" in cols and not _blank(row.get(cols["report_path"])):
        report_file = Path(str(row[cols["report_path"]]))
        if not report_file.is_absolute() and base_dir is not None:
            report_file = Path(base_dir) / report_file
        if not report_file.is_file():
            raise StudyReadError("missing_report", "report file not found", path=report_file)
        full = report_file.read_text(encoding="utf-8", errors="replace")
    sections: dict[str, str] = {}
    if full is not None:
        sections = parse_report_sections(full)
        for k, v in study_text_fields(sections).items():
            if text.get(k) is None and v:
                text[k] = v
        if text["findings"] is None and set(sections) <= {"preamble"} and full is not None:
            text["findings"] = sections.get("preamble") or None  # a report column without headers is the findings
    if require_findings and not text["findings"]:
        if full is not None:
            raise StudyReadError(
                "no_findings",
                f"the report has no FINDINGS section (sections found: {sorted(sections) or 'none'})",
                path=report_file or (f"{source} column {cols.get('report')!r}" if source else None),
            )
        where = cols.get("findings") or cols.get("report") or cols.get("report_path")
        raise StudyReadError("missing_report", f"empty findings/report (column {where!r})", path=source or None)

    images: dict[str, Any] = {}
    for f in IMAGE_FIELDS:
        value = row.get(cols[f]) if f in cols else None
        images[f] = decode_image_value(value, base_dir=base_dir, max_side=max_side, dtype=dtype, what=f)
    if images["frontal"] is None:
        raise StudyReadError("bad_row", f"no frontal image (column {cols.get('frontal')!r} is empty)", path=source or None)

    used = set(cols.values())
    metadata: dict[str, Any] = {"source": source} if source else {}
    for k, v in row.items():
        if k in used:
            continue
        if k == "metadata" and isinstance(v, str) and v.lstrip().startswith("{"):
            try:
                metadata.update(json.loads(v))  # a JSON metadata column (e.g. phantom datasets)
                continue
            except json.JSONDecodeError:
                pass
        if k == "metadata" and isinstance(v, dict):
            metadata.update(v)
        elif v is None or isinstance(v, str | int | float | bool):
            metadata[k] = v
    for f in IMAGE_FIELDS:
        v = row.get(cols[f]) if f in cols else None
        if isinstance(v, str | Path) and str(v):
            metadata[f"{f}_path"] = str(v)
        elif isinstance(v, dict) and v.get("path"):
            metadata[f"{f}_path"] = str(v["path"])
    if report_file is not None:
        metadata["report_path"] = str(report_file)
    if sections:
        metadata["report_sections"] = sections
    metadata.update(extra_metadata or {})
    try:
        labels = _labels(row, cols)
    except (ValueError, TypeError) as e:
        raise StudyReadError("bad_row", f"bad label value: {e}", path=source or None) from e
    return Study(
        study_id=study_id,
        frontal=images["frontal"],
        lateral=images["lateral"],
        prior_frontal=images["prior_frontal"],
        prior_report=text["prior_report"],
        indication=text["indication"],
        technique=text["technique"],
        comparison=text["comparison"],
        findings=text["findings"],
        impression=text["impression"],
        labels=labels,
        metadata=metadata,
    )
