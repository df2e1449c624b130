"""The ``trusted-space`` command line.

Commands are grouped by what a person is doing: running a node (``node``), a local space
(``space``), browsing and negotiating (``catalog``, ``negotiate``), querying (``query``, ``local``),
checking the ledger (``ledger``), measuring (``bench``) and seeing it all work (``demo``).
"""

from __future__ import annotations

import typer

from connectors.cli import catalog, contracts, demo, ledger, models, node, query, space, train
from connectors.cli._common import local_app, query_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="trusted-space",
    help="A privacy-preserving trusted data space: data usable but not visible.",
    no_args_is_help=True,
    add_completion=False,
)


def _version() -> str:
    from importlib.metadata import version

    return version("trusted-space")


@app.command("version")
def _version_command() -> None:
    """Print the version."""
    typer.echo(_version())


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_version())
        raise typer.Exit


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """A privacy-preserving trusted data space: data usable but not visible."""


for _group in (node, space, catalog, contracts, models, ledger, demo):
    _group.register(app)

# ``query`` and ``train`` add their commands to the two shared groups.
_COMMAND_MODULES = (query, train)
app.add_typer(query_app, name="query")
app.add_typer(local_app, name="local")


def main() -> None:
    """Console-script entry point."""
    app()
