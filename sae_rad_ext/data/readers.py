"""One entry point for every study source: :func:`open_studies` (and :func:`count_studies`).

``sae-rad ... --studies SOURCE`` goes through here. The source kind is detected from what is on
disk (or named with ``kind=``):

=============  ===========================================================================
kind           detected when SOURCE is
=============  ===========================================================================
``mimic``      a folder with ``files/`` and ``mimic-cxr-2.0.0-metadata.csv[.gz]``
``hf``         a ``datasets`` ``save_to_disk`` folder (``dataset_dict.json`` / ``state.json``)
``manifest``   a ``.csv/.tsv/.jsonl/.json`` file, or a folder holding ``manifest.*`` / ``studies.*``
``dicom``      a ``.dcm`` file, or a folder of DICOM files (optional ``sidecar.csv`` etc.)
``imagefolder`` a folder of JPEG/PNG images (optional ``metadata.csv`` with ``file_name``)
``phantom``    a ``write_phantom_dataset`` folder (``phantom.json`` + ``dataset/``; masks decoded)
``<scheme>:``  a registered scheme, e.g. ``phantom:...`` (see :func:`register_source`)
=============  ===========================================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_rad_ext.data.base import IterReader, StudyReader
from sae_rad_ext.data.dicom import is_dicom
from sae_rad_ext.data.dicom_reader import DicomReader, find_sidecar
from sae_rad_ext.data.hf import IMAGE_SUFFIXES, HFDatasetReader, is_imagefolder, is_saved_dataset
from sae_rad_ext.data.manifest import MANIFEST_SUFFIXES, ManifestReader, _suffix
from sae_rad_ext.data.mimic import MimicCxrReader, find_table, is_mimic_root
from sae_rad_ext.data.read_stats import SourceError

KINDS = ("phantom", "mimic", "hf", "imagefolder", "manifest", "dicom")
_MANIFEST_NAMES = ("manifest", "studies")
_SCHEMES: dict[str, Callable[..., Any]] = {}
_SCHEME_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9_+-]+):")


def register_source(scheme: str, opener: Callable[..., Any]) -> None:
    """Make ``open_studies("<scheme>:<rest>", **kw)`` call ``opener(rest, **kw)``.

    The opener returns a :class:`~sae_rad_ext.data.base.StudyReader` (or any iterator of studies).
    Lets other modules add virtual sources (e.g. generated phantoms) without this module importing them.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_+-]*", scheme) or len(scheme) < 2:
        raise ValueError(f"scheme must be lower-case letters/digits, at least 2 chars (not a drive letter): {scheme!r}")
    _SCHEMES[scheme] = opener


def _manifest_in(folder: Path) -> Path | None:
    for stem in _MANIFEST_NAMES:
        for ext in MANIFEST_SUFFIXES:
            for p in (folder / f"{stem}{ext}", folder / f"{stem}{ext}.gz"):
                if p.is_file():
                    return p
    return None


def detect_source(source: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` for a source on disk; :class:`SourceError` naming what was looked for otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        schemes = f"; registered schemes: {sorted(_SCHEMES)}" if _SCHEMES else ""
        raise SourceError(f"study source {str(source)!r} does not exist{schemes}")
    if path.is_file():
        if _suffix(path) in MANIFEST_SUFFIXES:
            return "manifest", path
        if is_dicom(path):
            return "dicom", path
        raise SourceError(
            f"{path}: cannot tell what kind of study source this file is; expected a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}) or a DICOM file"
        )
    if (path / "phantom.json").is_file() and is_saved_dataset(path / "dataset"):
        return "phantom", path
    if is_mimic_root(path):
        return "mimic", path
    if (path / "files").is_dir() and find_table(path, "metadata") is None:
        raise SourceError(f"{path}: looks like MIMIC-CXR-JPG (has files/) but has no mimic-cxr-2.0.0-metadata.csv(.gz)")
    if is_saved_dataset(path):
        return "hf", path
    manifest = _manifest_in(path)
    if manifest is not None:
        return "manifest", manifest
    seen_image = False
    for dirpath, dirnames, filenames in os.walk(path):  # stops at the first DICOM; no full listing
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES:
                seen_image = True
            elif is_dicom(p):
                return "dicom", path
        if seen_image:
            break
    if seen_image or is_imagefolder(path):
        return "imagefolder", path
    raise SourceError(
        f"{path}: cannot tell what kind of study source this folder is. Looked for: MIMIC-CXR-JPG (files/ + "
        f"mimic-cxr-2.0.0-metadata.csv), a datasets save_to_disk folder (dataset_dict.json or state.json), "
        f"a manifest ({'/'.join(_MANIFEST_NAMES)}.csv/.jsonl/...), DICOM files, or images (imagefolder). "
        f"Pass kind= one of {KINDS} to say which."
    )


def open_studies(source: str | Path | Any, *, kind: str | None = None, **kw: Any) -> StudyReader:
    """Open any study source as a streaming iterator of :class:`Study` (a :class:`StudyReader`).

    ``kw`` goes to the reader (:class:`MimicCxrReader`, :class:`HFDatasetReader`, :class:`ManifestReader`,
    :class:`DicomReader`); all take ``on_error="raise"|"skip"``, ``max_studies``, ``shard``,
    ``max_side`` and ``dtype``. The reader's ``stats`` counts read / skipped / filtered studies.

    Examples::

        for study in open_studies("/data/mimic-cxr-jpg/2.1.0", split="train", on_error="skip"):
            ...
        open_studies("studies.jsonl", columns={"findings": "report_findings"})
        open_studies("/data/my_hf_dataset", columns={"frontal": "image", "findings": "text"})
    """
    if not isinstance(source, str | Path):
        return HFDatasetReader(source, **kw)  # a datasets object
    m = _SCHEME_RE.match(str(source)) if isinstance(source, str) else None
    if m and m.group("scheme") in _SCHEMES:
        return _SCHEMES[m.group("scheme")](str(source)[m.end():], **kw)
    if kind is None:
        kind, path = detect_source(source)
    else:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        path = Path(source).expanduser()
        if kind == "manifest" and path.is_dir():
            path = _manifest_in(path) or path
    if kind == "phantom":
        return _open_phantom(path, **kw)
    if kind == "mimic":
        return MimicCxrReader(path, **kw)
    if kind in ("hf", "imagefolder"):
        return HFDatasetReader(path, **kw)
    if kind == "manifest":
        return ManifestReader(path, **kw)
    if path.is_dir() and "sidecar" not in kw:
        kw["sidecar"] = find_sidecar(path)
    return DicomReader(path, **kw)


def _open_phantom(path: Path, *, split: str | None = None, require_findings: bool = True, **kw: Any) -> StudyReader:
    """A phantom folder through its own loader (keeps the planted masks), with reader options."""
    from sae_rad_ext.data.phantom.io import load_phantom_dataset

    allowed = {"on_error", "max_studies", "shard"}
    if set(kw) - allowed:
        raise TypeError(f"a phantom folder takes split, require_findings and {sorted(allowed)}; got {sorted(set(kw) - allowed)}")

    def count() -> int:
        import datasets

        ds = datasets.load_from_disk(str(path / "dataset"))
        return len(ds) if split is None else sum(1 for s in ds["split"] if s == split)

    return IterReader(lambda: load_phantom_dataset(path, split=split), count=count, kind="phantom", **kw)


def count_studies(source: str | Path | Any, **kw: Any) -> int:
    """How many studies ``open_studies(source, **kw)`` would yield at most, without decoding any image
    (MIMIC: from the CSVs after split/view filters; manifests: rows; datasets: rows; DICOM: studies)."""
    reader = open_studies(source, **kw)
    count = getattr(reader, "count", None)
    if count is None:
        raise TypeError(f"{type(reader).__name__} cannot count its studies cheaply")
    return count()
