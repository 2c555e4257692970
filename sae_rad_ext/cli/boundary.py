"""The command line's one error boundary: :class:`ErrorBoundaryGroup`, the click group of ``sae-rad``.

What a user sees when a command fails:

- a :class:`~sae_rad_ext.errors.SaeRadError` (bad input, bad checkpoint, configuration mismatch) or a
  missing / wrong-kind path (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``):
  one line ``error: <message>`` on stderr, exit code 2;
- any other exception (a bug, or a failure nobody anticipated): one line naming the exception and the
  file the full traceback was saved to (under ``$SAE_RAD_EXT_CACHE/errors/`` or
  ``~/.cache/sae-rad-ext/errors/``; the system temp folder when that is not writable), exit code 1;
- with ``sae-rad --debug`` or ``SAE_RAD_DEBUG=1``: the full traceback on stderr instead of the saved
  file, same exit codes.

typer's (click's) own usage errors (``typer.BadParameter``, a missing option) and ``typer.Exit`` pass through
unchanged (usage box, exit code 2).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from sae_rad_ext.errors import SaeRadError

__all__ = ["DEBUG_ENV", "ErrorBoundaryGroup", "error_dir", "save_traceback"]

DEBUG_ENV = "SAE_RAD_DEBUG"
"""Environment variable: ``1`` shows full tracebacks (same as ``sae-rad --debug``)."""

_USER_ERRORS = (SaeRadError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def _pass_through() -> tuple[type[BaseException], ...]:
    """typer's own exits and usage errors (typer vendors click from 0.2x; older typer uses click)."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    if hasattr(typer, "TyperException"):
        kinds.append(typer.TyperException)
    try:
        import click

        kinds += [click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort]
    except ImportError:
        pass
    return tuple(kinds)


_PASS_THROUGH = _pass_through()


def error_dir() -> Path:
    """Where tracebacks of unexpected errors are saved: ``$SAE_RAD_EXT_CACHE/errors`` (the project's cache
    root, default ``~/.cache/sae-rad-ext``)."""
    root = os.environ.get("SAE_RAD_EXT_CACHE") or Path.home() / ".cache" / "sae-rad-ext"
    return Path(root) / "errors"


def save_traceback(exc: BaseException, command: str) -> Path:
    """Write ``exc``'s full traceback (with the command line) to a new file under :func:`error_dir`, or
    the system temp folder when that cannot be written; return the file."""
    text = f"$ {command}\n" + "".join(traceback.format_exception(exc))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in (error_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"sae-rad-{stamp}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return Path(name)
        except OSError:
            continue
    raise OSError("could not save the traceback anywhere")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _user_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, SaeRadError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return _one_line(str(exc)) or type(exc).__name__


def _debug(ctx: typer.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "").strip().lower() in (
        "1",
        "true",
        "yes",
    )


class ErrorBoundaryGroup(TyperGroup):
    """``TyperGroup`` whose :meth:`invoke` maps exceptions from the app callback and every sub-command to
    a one-line message and an exit code (see the module docstring)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["sae_rad.argv"] = list(args)  # for the saved traceback's header
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except Exception as exc:  # noqa: BLE001  (the boundary: every error ends here)
            debug = _debug(ctx)
            code = 2 if isinstance(exc, _USER_ERRORS) else 1
            if debug:
                traceback.print_exception(exc, file=sys.stderr)
            if code == 2:
                typer.echo(f"error: {_user_message(exc)}", err=True)
            elif not debug:
                command = " ".join([ctx.command_path, *ctx.meta.get("sae_rad.argv", [])])
                try:
                    where = f"traceback saved to {save_traceback(exc, command)}"
                except OSError:
                    where = "the traceback could not be saved"
                what = _one_line(str(exc))[:300]
                typer.echo(
                    f"error: unexpected {type(exc).__name__}{': ' + what if what else ''} ({where}; "
                    f"rerun with --debug or {DEBUG_ENV}=1 to print it)",
                    err=True,
                )
            ctx.exit(code)
