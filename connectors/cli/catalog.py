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
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from connectors.client import AdminClient, SignedClient, raise_for_problem
from connectors.commands._common import admin_client
from connectors.problems import NotReady, PeerError
from trusted_space.catalog import TS_NAMESPACE
from trusted_space.errors import TrustedSpaceError

__all__ = [
    "CATALOG_REQUEST",
    "FINAL_STATES",
    "catalog_rows",
    "fetch_catalog",
    "follow_negotiation",
    "list_command",
    "negotiate_command",
    "print_catalog",
    "register",
]

catalog_app = typer.Typer(help="Browse the space's catalog.", no_args_is_help=True)

CATALOG_REQUEST: dict[str, Any] = {
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
    "@type": "CatalogRequestMessage",
    "filter": [],
}
FINAL_STATES = frozenset({"FINALIZED", "TERMINATED"})


def fetch_catalog(
    base_url: str,
    *,
    federated: bool,
    signer: SignedClient | None = None,
    audience: str | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Ask ``base_url`` for its catalog: the operator's federated one, or a node's own.

    Args:
        base_url: the operator's or the node's URL.
        federated: ``True`` for ``/operator/catalog/request``, ``False`` for ``/catalog/request``.
        signer: sign the request as this member (``audience`` is then the receiver's id);
            ``None`` asks anonymously.
        audience: the receiving participant's id (with ``signer``).
        transport: an httpx transport (tests).
        timeout: seconds.

    Raises:
        PeerError: the node refused; NotReady: it cannot be reached.
    """
    url = base_url.rstrip("/") + ("/operator/catalog/request" if federated else "/catalog/request")
    if signer is not None:
        if audience is None:
            raise ValueError("a signed catalog request needs the receiver's participant id")
        response = signer.request("POST", url, audience=audience, json_body=CATALOG_REQUEST)
    else:
        try:
            with httpx.Client(timeout=timeout, transport=transport) as http:
                response = http.post(url, json=CATALOG_REQUEST)
        except httpx.TransportError as exc:
            raise NotReady(f"cannot reach {url}: {exc}") from exc
        raise_for_problem(response, base_url)
    doc = response.json()
    if not isinstance(doc, dict):
        raise PeerError(base_url, response.status_code, {"detail": "the catalog is not an object"})
    return doc


def _as_list(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def catalog_rows(catalog: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per dataset of a catalog (nested provider catalogs included), sorted."""
    rows: list[dict[str, Any]] = []
    for sub in [catalog, *_as_list(catalog.get("catalog"))]:
        provider = str(sub.get("participantId", ""))
        for ds in _as_list(sub.get("dataset")):
            rows.append(
                {
                    "provider": str(ds.get(TS_NAMESPACE + "owner", provider)),
                    "dataset": str(ds.get("@id", "")),
                    "title": str(ds.get("dct:title", "")),
                    "tier": ds.get(TS_NAMESPACE + "tier"),
                    "maxGrade": ds.get(TS_NAMESPACE + "maxGrade"),
                    "offers": [str(o.get("@id")) for o in _as_list(ds.get("hasPolicy"))],
                }
            )
    return sorted(rows, key=lambda r: (r["provider"], r["dataset"]))


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


def follow_negotiation(
    client: AdminClient,
    provider: str,
    dataset: str,
    offer: str | None = None,
    *,
    wait: bool = True,
    timeout: float = 60.0,
    poll: float = 0.25,
    on_state: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Start a negotiation at the consumer node and (with ``wait``) follow it to its end.

    Returns:
        The last view of the negotiation (``state``, ``agreementId``, ...). After ``timeout``
        seconds it is returned as it is, not final.

    Raises:
        PeerError: the consumer node refused (a provider's refusal is inside ``problem``).
        NotReady: the consumer node cannot be reached.
    """
    body: dict[str, Any] = {"provider": provider, "datasetId": dataset}
    if offer is not None:
        body["offerId"] = offer
    view: dict[str, Any] = client.post("/management/negotiations", body)
    if on_state is not None:
        on_state(view["state"])
    deadline = time.monotonic() + timeout
    while wait and view["state"] not in FINAL_STATES and time.monotonic() < deadline:
        sleep(poll)
        view = client.get(f"/management/negotiations/{view['id']}")
        if on_state is not None:
            on_state(view["state"])
    return view


def _describe(exc: Exception) -> str:
    if isinstance(exc, PeerError):
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
            from connectors.runtime import NodeRuntime
            from connectors.settings import load_settings

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
    except (PeerError, NotReady, TrustedSpaceError, httpx.HTTPError, OSError) as exc:
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
    except (PeerError, NotReady, OSError) as exc:
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
