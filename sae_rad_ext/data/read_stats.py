"""What a reader did: studies read, skipped (and why), filtered out; the error a bad study raises."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sae_rad_ext.errors import BadInputError

OnError = Literal["raise", "skip"]

ERROR_KINDS: dict[str, str] = {
    "missing_image": "an image file the study lists does not exist",
    "corrupt_image": "an image file exists but cannot be decoded (truncated/corrupt JPEG, PNG or DICOM)",
    "missing_report": "the study's report file (or text column) is missing",
    "no_findings": "the report has no FINDINGS section and findings are required",
    "bad_row": "a manifest / sidecar / dataset row is malformed (e.g. empty image path)",
}
"""Kinds of per-study errors. ``on_error="skip"`` counts them in :attr:`ReadStats.reasons`."""


class StudyReadError(BadInputError):
    """One study could not be read. Names the study, the file and what was wrong with it.

    With ``on_error="raise"`` readers raise it; with ``on_error="skip"`` they count it in
    :class:`ReadStats` and go on.
    """

    def __init__(self, kind: str, message: str, *, path: str | Path | None = None, study_id: str | None = None):
        self.kind = kind
        self.path = None if path is None else str(path)
        self.study_id = study_id
        self.message = message
        super().__init__(self._text())

    def _text(self) -> str:
        where = " ".join(p for p in (f"study {self.study_id}" if self.study_id else "", self.path or "") if p)
        return f"[{self.kind}] {where}: {self.message}" if where else f"[{self.kind}] {self.message}"

    def with_study(self, study_id: str) -> StudyReadError:
        if self.study_id is None:
            self.study_id = study_id
            self.args = (self._text(),)
        return self


class SourceError(BadInputError):
    """The source as a whole is unusable (unknown layout, missing columns, no metadata CSV).

    Raised whatever ``on_error`` says: skipping cannot help when every study would fail.
    """


@dataclass
class SkipExample:
    """One skipped study, kept for the first few skips of each reader."""

    study_id: str | None
    kind: str
    path: str | None
    message: str


@dataclass
class ReadStats:
    """Counters a reader keeps while it streams (``reader.stats``)."""

    n_read: int = 0
    """Studies yielded."""
    n_skipped: int = 0
    """Studies dropped because of an error (``on_error="skip"``)."""
    reasons: Counter = field(default_factory=Counter)
    """Skipped studies by error kind (see :data:`ERROR_KINDS`)."""
    examples: list[SkipExample] = field(default_factory=list)
    """The first :attr:`max_examples` skipped studies, with the file and message."""
    n_filtered: int = 0
    """Studies left out by a filter (split, required views, no frontal image) — not errors."""
    filtered: Counter = field(default_factory=Counter)
    """Filtered studies by reason."""
    max_examples: int = 5

    def skip(self, err: StudyReadError) -> None:
        self.n_skipped += 1
        self.reasons[err.kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(SkipExample(err.study_id, err.kind, err.path, err.message))

    def filter(self, reason: str) -> None:
        self.n_filtered += 1
        self.filtered[reason] += 1

    def summary(self) -> str:
        """One line per fact, for logs and the CLI."""
        lines = [f"read {self.n_read} studies, skipped {self.n_skipped}, filtered out {self.n_filtered}"]
        for kind, n in self.reasons.most_common():
            lines.append(f"  skipped {n} × {kind}")
        for reason, n in self.filtered.most_common():
            lines.append(f"  filtered {n} × {reason}")
        for ex in self.examples:
            lines.append(f"  e.g. study {ex.study_id} [{ex.kind}] {ex.path or ''}: {ex.message}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "n_read": self.n_read,
            "n_skipped": self.n_skipped,
            "reasons": dict(self.reasons),
            "n_filtered": self.n_filtered,
            "filtered": dict(self.filtered),
            "examples": [vars(e) for e in self.examples],
        }


class StudyFiltered(Exception):
    """Internal: a study builder's way to say "left out by a filter" (counted, never raised out)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error  # type: ignore[return-value]
