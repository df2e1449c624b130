"""``trusted-space catalog list`` and ``trusted-space negotiate``: browse, then ask for a contract.

``catalog list`` reads the operator's federated catalog (``POST /operator/catalog/request``), or
one provider's own (``POST /catalog/request`` with ``--node``). Without ``--node-dir`` it asks
anonymously and sees only open (``unconditional``) datasets; with ``--node-dir`` it signs the
request as that member (the node's key and credential are read from its directory, nothing is
sent but the signed request) and sees what the space shows that member.

``negotiate`` acts as the consumer's staff: it calls the consumer node's
``POST /management/negotiations`` with the admin token and, with ``--wait``, follows the
negotiation until it is FINALIZED or TERMINATED. The exit code is ``0`` only for a FINALIZED
negotiation (with ``--no-wait``: for an accepted request).

The functions under the commands take their HTTP clients as arguments so they can be tested
without a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from connectors.cli._common import admin_client, print_json, problem_of
from connectors.client.catalog import FINAL_STATES, catalog_rows, fetch_catalog, follow_negotiation
from connectors.client.http import SignedClient
from trusted_space.errors import NotReadyError, RemoteError, TrustedSpaceError

__all__ = [
    "list_command",
    "negotiate_command",
    "print_catalog",
    "register",
]

catalog_app = typer.Typer(help="Browse the space's catalog.", no_args_is_help=True)


def print_catalog(rows: list[dict[str, Any]], console: Console) -> None:
    """A table: provider, dataset, title, tier, max grade, offers."""
    table = Table(title=f"{len(rows)} dataset(s)")
    for column in ("provider", "dataset", "title", "tier", "max grade", "offers"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["provider"],
            row["dataset"],
            row["title"],
            str(row["tier"] or ""),
            "" if row["maxGrade"] is None else str(row["maxGrade"]),
            "\n".join(row["offers"]),
        )
    console.print(table)


def _describe(exc: Exception) -> str:
    if isinstance(exc, RemoteError):
        inner = exc.problem.get("peerProblem")
        detail = exc.problem.get("detail") or str(exc)
        if isinstance(inner, Mapping) and inner.get("detail"):
            return f"{detail} ({inner['detail']})"
        return str(detail)
    return str(exc)


@catalog_app.command("list")
def list_command(
    operator: Annotated[
        str | None, typer.Option(help="The operator's URL: its federated catalog.")
    ] = None,
    node: Annotated[
        str | None, typer.Option(help="A provider node's URL: its own catalog.")
    ] = None,
    node_dir: Annotated[
        Path | None,
        typer.Option(help="Browse as this member (signed with its key and credential)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
) -> None:
    """List the datasets of the space (or of one provider) visible to you."""
    if operator and node:
        raise typer.BadParameter("give --operator or --node, not both")
    console = Console()
    runtime = None
    try:
        signer: SignedClient | None = None
        audience: str | None = None
        if node_dir is not None:
            from connectors.common.settings import load_settings
            from connectors.node.runtime import NodeRuntime

            runtime = NodeRuntime(load_settings(node_dir))
            signer = runtime.client
            if runtime.anchor is not None and not node:
                operator = operator or runtime.anchor.url
                audience = runtime.anchor.operator_id
        url = node or operator
        if url is None:
            raise typer.BadParameter("give --operator URL, --node URL, or --node-dir")
        if signer is not None and node:
            audience = str(httpx.get(node.rstrip("/") + "/identity", timeout=10).json()["id"])
        catalog = fetch_catalog(url, federated=node is None, signer=signer, audience=audience)
    except (RemoteError, NotReadyError, TrustedSpaceError, httpx.HTTPError, OSError) as exc:
        if json_output:
            print_json({"ok": False, "problem": problem_of(exc)})
        typer.echo(f"error: {_describe(exc)}", err=True)
        raise typer.Exit(1) from exc
    finally:
        if runtime is not None:
            runtime.close()
    rows = catalog_rows(catalog)
    if json_output:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print_catalog(rows, console)


def negotiate_command(
    provider: Annotated[str, typer.Option(help="The provider's participant id.")],
    dataset: Annotated[str, typer.Option(help="The dataset id (from `catalog list`).")],
    node_dir: Annotated[
        Path | None, typer.Option(help="The consumer node's directory (URL and admin token).")
    ] = None,
    offer: Annotated[
        str | None, typer.Option(help="The offer id (needed when the dataset has several).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow until FINALIZED or TERMINATED.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.", min=0)] = 60.0,
    node: Annotated[str | None, typer.Option(help="The consumer node's URL.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="The admin token file.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Negotiate a contract for a dataset as the consumer; prints the agreement id."""
    err = Console(stderr=True)
    try:
        with (
            admin_client(node, node_dir, token_file) as client,
            err.status("requesting a contract") as status,
        ):
            view = follow_negotiation(
                client,
                provider,
                dataset,
                offer,
                wait=wait,
                timeout=timeout,
                on_state=lambda s: status.update(f"negotiation {s}"),
            )
    except (RemoteError, NotReadyError, OSError) as exc:
        if json_output:
            print_json({"ok": False, "problem": problem_of(exc)})
        typer.echo(f"error: {_describe(exc)}", err=True)
        raise typer.Exit(1) from exc
    state = view["state"]
    if json_output:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"negotiation {view['id']} with {provider} for {dataset}: {state}")
        if view.get("agreementId"):
            typer.echo(f"agreement {view['agreementId']}")
    if state == "TERMINATED" or (wait and state != "FINALIZED"):
        if wait and state not in FINAL_STATES:
            typer.echo(f"error: still {state} after {timeout} s", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``catalog`` and ``negotiate`` to the main app."""
    app.add_typer(catalog_app, name="catalog")
    app.command("negotiate")(negotiate_command)
