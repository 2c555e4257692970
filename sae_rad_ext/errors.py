"""The project's exception types: one base, :class:`SaeRadError`, and a few kinds under it.

Library code raises these for problems a user can fix (a bad option, a bad file, a mismatch); the
``sae-rad`` command line turns any of them into one ``error: <message>`` line and exit code 2
(:mod:`sae_rad_ext.cli.boundary`). Each message says what was expected, what came, and what to do.

- :class:`BadInputError`: bad user input, data or option (also a :class:`ValueError`, so code that
  catches ``ValueError`` keeps working). The study readers' ``SourceError`` and ``StudyReadError``
  (:mod:`sae_rad_ext.data.read_stats`) are kinds of it.
- :class:`CheckpointError`: a model, SAE or checkpoint file or folder that is missing, truncated or
  invalid; the message names the file.
- :class:`ConfigMismatchError`: two configurations that must agree do not (an SAE's ``d_in`` and the
  hooked width, a cache's settings and a rerun's).

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BadInputError", "CheckpointError", "ConfigMismatchError", "SaeRadError"]


class SaeRadError(Exception):
    """Base of every error sae-rad-ext raises on purpose for a problem the user can fix."""


class BadInputError(SaeRadError, ValueError):
    """Bad user input, data or option: the message names the input, what was expected and what came."""


class CheckpointError(SaeRadError):
    """A model, SAE or checkpoint file/folder is missing, truncated or invalid.

    ``path`` (when given) is the offending file or folder; the message starts with it.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        text = message if path is None or str(path) in message else f"{path}: {message}"
        super().__init__(text)


class ConfigMismatchError(SaeRadError):
    """Two configurations that must agree do not (e.g. an SAE's ``d_in`` and the model's hook width)."""
