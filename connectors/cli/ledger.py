"""``trusted-space ledger verify|checkpoint``: check a node's ledger from outside; witness it now.

``verify --operator URL`` needs nothing but the operator's public URL (and the node's URL or id):
the node's ledger key comes from the operator's registry and the node must prove that its log
extends the newest checkpoint the operator's witness cosigned, so a rewritten, re-signed or rolled
back log fails and the report says which. ``--receipts FILE`` checks instead that each receipt's
entry is still in its node's current log. Without ``--operator`` the node's own ``/identity``
supplies the key (trust on first use, reported). It prints a table of checks, or JSON with
``--json``, and exits 1 if any check fails. The work is in :mod:`connectors.client.verify`.

``checkpoint`` is for the node's own staff: sign a checkpoint now and submit it to the operator's
witness (``POST /management/ledger/checkpoint`` with the admin token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from connectors.cli._common import admin_client
from connectors.client.verify import Report, verify_node, verify_receipts_file
from trusted_space.errors import NotReadyError, RemoteError

__all__ = ["print_report", "register"]

ledger_app = typer.Typer(help="Verify a node's tamper-evident ledger.", no_args_is_help=True)


def print_report(report: Report, console: Console) -> None:
    """The report as a table of checks, then the event kinds counted."""
    table = Table(title=f"ledger of {report.node}", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        mark = "[green]ok[/]" if check.ok else "[bold red]FAILED[/]"
        table.add_row(escape(check.name), mark, escape(check.detail))
    console.print(table)
    if report.kinds:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
        console.print(f"events: {escape(kinds)}", highlight=False)
    verdict = "[green]verified[/]" if report.ok else "[bold red]NOT verified[/]"
    size = "size unknown" if report.size is None else f"{report.size} entries"
    console.print(f"{verdict}: {size}", highlight=False)


@ledger_app.command("verify")
def _verify(
    node: Annotated[
        str | None,
        typer.Option(help="The node's URL (default: the URL registered at --operator)."),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            help="The operator's URL: the node's registered ledger key, the witness key and "
            "the witness's latest cosigned checkpoint (the anchor) come from there."
        ),
    ] = None,
    participant: Annotated[
        str | None,
        typer.Option(help="The member's id at the operator (default: the id the node gives)."),
    ] = None,
    receipts: Annotated[
        Path | None,
        typer.Option(
            help="A JSON file holding receipts (one, a list, a result, any nesting): check "
            "each entry is still in its node's current log."
        ),
    ] = None,
    vkey: Annotated[
        str | None,
        typer.Option(help="The node's ledger verifier key (default: the operator's registry)."),
    ] = None,
    witness_vkey: Annotated[
        list[str] | None,
        typer.Option("--witness-vkey", help="A witness cosigner key (repeatable)."),
    ] = None,
    samples: Annotated[
        int, typer.Option(min=0, max=10_000, help="Random entries to check inclusion proofs for.")
    ] = 16,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per HTTP call.")] = 60.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Download the whole log, recompute its root, check proofs and the witness's anchor."""
    if node is None and operator is None:
        typer.echo("error: give --node, --operator, or both", err=True)
        raise typer.Exit(2)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        if receipts is not None:
            try:
                docs = _load_receipts(receipts)
            except (OSError, ValueError) as exc:
                typer.echo(f"error: {receipts}: {exc}", err=True)
                raise typer.Exit(2) from exc
            report = verify_receipts_file(client, docs, operator=operator, node=node, vkey=vkey)
        else:
            report = verify_node(
                client,
                node,
                vkey=vkey,
                witness_vkeys=witness_vkey or [],
                operator=operator,
                participant=participant,
                samples=samples,
            )
    if json_output:
        typer.echo(json.dumps(report.to_json()))
    else:
        print_report(report, Console())
    raise typer.Exit(0 if report.ok else 1)


def _load_receipts(path: Path) -> list[Any]:
    """Every receipt in a JSON file: one, a list, a result, or results nested in any shape.

    A receipt is any object with ``checkpoint``, ``index`` and ``entry``; everything else is
    searched (a score result's ``receipts`` by provider, a training's per round, ...).
    """
    found: list[Any] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if {"checkpoint", "index", "entry"} <= value.keys():
                found.append(value)
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(path.read_text(encoding="utf-8")))
    return found


@ledger_app.command("checkpoint")
def _checkpoint(
    node_dir: Annotated[
        Path | None, typer.Option("--node-dir", help="The node directory (URL and admin token).")
    ] = None,
    node: Annotated[str | None, typer.Option(help="The node's URL.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding the admin token.")] = None,
) -> None:
    """Sign a checkpoint now and have the operator's witness cosign it."""
    try:
        with admin_client(node, node_dir, token_file) as client:
            result = client.post("/management/ledger/checkpoint")
    except (RemoteError, NotReadyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(result["note"], nl=False)
    if not result["cosigned"]:
        typer.echo("not cosigned: the operator's witness was unreachable or refused", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ledger`` to the main app."""
    app.add_typer(ledger_app, name="ledger")
