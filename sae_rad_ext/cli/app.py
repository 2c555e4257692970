"""The ``sae-rad`` command line. Each sub-command lives in ``sae_rad_ext/cli/<name>.py`` and
registers itself on :data:`app`; add a module's name to ``_COMMAND_MODULES`` to include it.

Errors from every command pass one boundary (:class:`sae_rad_ext.cli.boundary.ErrorBoundaryGroup`): a
:class:`sae_rad_ext.errors.SaeRadError` prints ``error: <message>`` and exits 2; anything else prints one
line with the path of the saved traceback and exits 1; ``--debug`` (or ``SAE_RAD_DEBUG=1``) prints the
traceback."""

from __future__ import annotations

import importlib

import typer

from sae_rad_ext import __version__
from sae_rad_ext.cli.boundary import DEBUG_ENV, ErrorBoundaryGroup

app = typer.Typer(
    name="sae-rad",
    help="Sparse autoencoders for radiology multimodal LLMs (MAIRA-2, LLaVA) on SAELens.",
    cls=ErrorBoundaryGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sae-rad {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help="On an error, print the full traceback (default: one line; unexpected errors save it to a file).",
    ),
) -> None:
    """Sparse autoencoders for radiology multimodal LLMs (MAIRA-2, LLaVA) on SAELens."""


_COMMAND_MODULES: list[str] = ["export", "cache_train", "demo", "steer", "interpret", "map"]

for _name in _COMMAND_MODULES:
    importlib.import_module(f"sae_rad_ext.cli.{_name}")
