"""The one train/holdout split of the project: by patient, from a salted hash of the patient id.

    unit = split_unit(study)                                   # patient id, else the study id
    assign_split(unit, {"train": 0.8, "validate": 0.1, "test": 0.1})   # the phantoms' data split
    assign_split(unit, {"holdout": 0.5, "fit": 0.5}, salt="sae-rad-interpret")
    holdout_mask(studies, 0.3, salt="0")                       # bool [n], True = held out

**Unit.** A study's unit is its patient: ``metadata["patient_id"]`` (phantoms), else
``metadata["subject_id"]`` (MIMIC-CXR), else — for sources that carry no patient id — the study id
itself, so such a source is split by study. Every study of one patient lands in the same part, so no
patient is seen on both sides.

**Hash.** A unit sits at ``u = (crc32(f"{salt}:{unit}") mod 10000) / 10000`` in ``[0, 1)``
(``crc32(unit)`` when ``salt`` is empty) and goes to the first part whose cumulative fraction exceeds
``u`` (the last part takes the rest). The assignment depends only on the unit and the salt — not on the
order or number of studies — so it is stable across runs and machines. The empty salt is the phantom
generator's own train/validate/test split (written into every generated dataset); other uses pass their
own salt so that their halves cut across the phantoms' parts instead of nesting inside them
(``tests/evaluation/test_splits.py`` checks a salted split of one phantom part keeps the requested
fraction). The resolution is 1/10000 of the ids.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["SplitStudy", "assign_split", "holdout_mask", "split_position", "split_unit"]


class SplitStudy(Protocol):
    """What a split needs of a study: its id and metadata (``Study`` has both)."""

    study_id: str
    metadata: dict[str, Any]


def split_unit(study: SplitStudy) -> str:
    """The patient a study belongs to: ``metadata["patient_id"]``, else ``metadata["subject_id"]``,
    else the study id (a source without patient ids is split by study)."""
    md = study.metadata or {}
    return str(md.get("patient_id") or md.get("subject_id") or study.study_id)


def split_position(unit: str, salt: str = "") -> float:
    """Where ``unit`` sits in ``[0, 1)``: ``(crc32(f"{salt}:{unit}") mod 10000) / 10000``, or
    ``crc32(unit)`` when ``salt`` is empty."""
    key = f"{salt}:{unit}" if salt else unit
    return (zlib.crc32(key.encode()) % 10_000) / 10_000


def assign_split(unit: str, fractions: Mapping[str, float], *, salt: str = "") -> str:
    """The part of ``fractions`` (name → fraction, in order; non-negative, summing to 1) that ``unit`` falls
    in: the first whose cumulative fraction exceeds :func:`split_position`, the last one otherwise."""
    names = list(fractions)
    vals = [float(v) for v in fractions.values()]
    if not names or any(not v >= 0 for v in vals) or not math.isclose(sum(vals), 1.0, abs_tol=1e-9):
        raise ValueError(
            f"fractions must be non-negative and sum to 1 (e.g. {{'train': 0.8, 'test': 0.2}}); got {dict(fractions)}"
        )
    u = split_position(unit, salt)
    acc = 0.0
    for name, v in zip(names, vals, strict=True):
        acc += v
        if u < acc:
            return name
    return names[-1]


def holdout_mask(studies: Iterable[SplitStudy], fraction: float, *, salt: str = "") -> np.ndarray:
    """``bool [n]``: True for the studies whose patient (:func:`split_unit`) falls in the first
    ``fraction`` of the hash range — the held-out part of ``{"holdout": fraction, "fit": 1 - fraction}``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1); got {fraction}")
    return np.asarray([split_position(split_unit(s), salt) < fraction for s in studies], dtype=bool)
