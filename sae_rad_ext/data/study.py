"""The value every reader yields and every batcher consumes: one chest X-ray study."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "lung_opacity",
    "pacemaker",
    "support_lines_tubes",
)
"""Findings the project's labeler, phantoms and concept alignment know (plus ``no_finding``)."""

LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_UNCERTAIN, LABEL_NOT_MENTIONED = 1, 0, -1, None


@dataclass
class Study:
    """One study: images, prompt sections, the report, and optional labels.

    Images are ``uint8`` or float arrays ``[H, W]`` (greyscale) or ``[H, W, 3]``; the adapter's
    preprocessing turns them into model pixels (MAIRA-2: greyscale, min-max to [0, 255], resize the
    shortest edge, centre-crop, normalise).
    """

    study_id: str
    """Unique id (MIMIC: ``s5xxxxxxx``; phantoms: ``phantom-<seed>-<n>``)."""
    frontal: np.ndarray
    """Current frontal image (PA or AP)."""
    lateral: np.ndarray | None = None
    """Current lateral image, if any."""
    prior_frontal: np.ndarray | None = None
    """Prior frontal image of the same patient, if any."""
    prior_report: str | None = None
    """Report of the prior study (used in the prompt only when ``prior_frontal`` is given)."""
    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    findings: str | None = None
    """The report text the model learns/generates (MAIRA-2 generates the FINDINGS section)."""
    impression: str | None = None
    labels: dict[str, int | None] = field(default_factory=dict)
    """Per-finding label: 1 positive, 0 negative, -1 uncertain, None not mentioned."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else: patient id, view positions, planted truth, masks, split, source paths."""

    @property
    def n_images(self) -> int:
        return 1 + (self.lateral is not None) + (self.prior_frontal is not None)

    @property
    def report(self) -> str:
        """The target report text (FINDINGS; IMPRESSION when there are no findings)."""
        return (self.findings or self.impression or "").strip()
