"""The ``trusted-space`` command line.

Commands are grouped by what a person is doing: running a node (``node``), a local space
(``space``), browsing and negotiating (``catalog``, ``negotiate``), querying (``query``, ``local``),
checking the ledger (``ledger``), measuring (``bench``) and seeing it all work (``demo``).
"""

from __future__ import annotations

import typer

from connectors.commands import catalog, ledger, node, query, space
from connectors.demo import run as run_demo

__all__ = ["app", "main"]

app = typer.Typer(
    name="trusted-space",
    help="A privacy-preserving trusted data space: data usable but not visible.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("demo")
def _demo(
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    entities: int = typer.Option(1000, min=10, max=1_000_000, help="Applicants to score."),
) -> None:
    """Run the demonstration and print what ran, how fast, and how exact it was."""
    ok = run_demo(entities=entities, json_output=json_output)
    raise typer.Exit(code=0 if ok else 1)


@app.command("version")
def _version_command() -> None:
    """Print the version."""
    from importlib.metadata import version

    typer.echo(version("trusted-space"))


for _group in (node, space, catalog, ledger, query):
    _group.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
