"""The ``sae-rad`` command line: :data:`app` (typer) in :mod:`sae_rad_ext.cli.app`, one module per command."""

from sae_rad_ext.cli.app import app

__all__ = ["app"]
