"""`edgelearn` command line (Typer): one module per area, registered in :mod:`edgelearn.cli.app`."""

from edgelearn.cli.app import app

__all__ = ["app"]
