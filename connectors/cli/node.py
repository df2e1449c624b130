"""``trusted-space node init|serve|admit``: create a node directory, run it, admit it to a space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from connectors.cli._common import admin_client
from connectors.client.http import SERVER_KEEP_ALIVE
from connectors.common.logs import configure_logging
from connectors.common.settings import NodeLayout, OperatorAnchor, init_node, load_settings
from connectors.common.tls import server_context
from connectors.spaces.space import admit
from trusted_space.errors import NotReadyError, RemoteError, ValidationError

__all__ = ["fetch_anchor", "init", "register", "serve"]

node_app = typer.Typer(help="Create, run and admit a connector node.", no_args_is_help=True)


def fetch_anchor(operator_url: str, *, timeout: float = 10.0) -> OperatorAnchor:
    """Fetch the space's trust anchor from the operator (compare the fingerprint out of band)."""
    url = operator_url.rstrip("/") + "/operator/identity"
    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
        return OperatorAnchor.from_json(response.json())
    except (httpx.HTTPError, ValueError) as exc:
        raise ValidationError(f"cannot fetch the operator's identity from {url}: {exc}") from exc


@node_app.command("init")
def init(
    name: Annotated[str, typer.Option(help="Participant id, e.g. tax-bureau.")],
    role: Annotated[str, typer.Option(help="Roles, comma-separated: operator,provider,consumer.")],
    directory: Annotated[Path, typer.Option("--dir", help="The node directory to create.")],
    operator: Annotated[
        str | None, typer.Option(help="The operator's URL (fetches the space's trust anchor).")
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8700,
    public_url: Annotated[
        str, typer.Option(help="URL other nodes use (default http://host:port).")
    ] = "",
) -> None:
    """Create a node directory: settings, keys (mode 0600), admin token, trust anchor."""
    roles = [r.strip() for r in role.split(",") if r.strip()]
    try:
        anchor = fetch_anchor(operator) if operator and "operator" not in roles else None
        settings = init_node(
            directory,
            name=name,
            roles=roles,
            host=host,
            port=port,
            public_url=public_url,
            operator=anchor,
        )
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    layout = NodeLayout(settings.dir)
    typer.echo(f"created node {settings.name} ({', '.join(settings.roles)}) in {layout.root}")
    if layout.operator.exists():
        got = OperatorAnchor.load(layout.operator)
        typer.echo(f"operator {got.operator_id} key fingerprint {got.key.fingerprint}")
    typer.echo(f"start it with: trusted-space node serve --dir {layout.root}")


def serve(
    directory: Path,
    host: str | None = None,
    port: int | None = None,
    log_format: str | None = None,
) -> None:
    """Run the node in the foreground until interrupted."""
    import uvicorn

    from connectors.node.app import create_app

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if log_format is not None:
        overrides["log_format"] = log_format
    settings = load_settings(directory, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    tls = server_context(settings)  # checked before the app opens its store
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=settings.log_format == "text",  # JSON: the node writes its own access line
        timeout_graceful_shutdown=5,
        timeout_keep_alive=SERVER_KEEP_ALIVE,  # outlives every client's idle connection
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )


@node_app.command("serve")
def _serve(
    directory: Annotated[Path, typer.Option("--dir", help="The node directory.")],
    host: Annotated[str | None, typer.Option(help="Listen address (overrides node.toml).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides node.toml).")] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text | json (one JSON object per line; overrides node.toml)."),
    ] = None,
) -> None:
    """Run the node (FastAPI under uvicorn); OpenAPI at /docs; HTTPS when node.toml has tls_cert."""
    try:
        serve(directory, host, port, log_format)
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@node_app.command("identity")
def _identity(
    directory: Annotated[Path, typer.Option("--dir", help="The node directory.")],
) -> None:
    """Print the node's settings summary and public key (no secrets)."""
    settings = load_settings(directory)
    from trusted_space.keys import SigningKey

    key = SigningKey.load(settings.layout.node_key).verify_key
    typer.echo(
        json.dumps(
            {
                "id": settings.name,
                "roles": settings.roles,
                "url": settings.url,
                "publicKey": key.to_b64(),
                "fingerprint": key.fingerprint,
            }
        )
    )


@node_app.command("admit")
def _admit(
    operator_dir: Annotated[
        Path | None, typer.Option(help="The operator's node directory (URL and admin token).")
    ] = None,
    operator: Annotated[
        str | None, typer.Option(help="The operator's URL (with --operator-token-file).")
    ] = None,
    operator_token_file: Annotated[
        Path | None, typer.Option(help="File holding the operator's admin token.")
    ] = None,
    node: Annotated[str | None, typer.Option(help="The URL of the node to admit.")] = None,
    node_dir: Annotated[
        Path | None, typer.Option(help="The node's directory (URL and admin token).")
    ] = None,
    node_token_file: Annotated[
        Path | None, typer.Option(help="File holding the node's admin token.")
    ] = None,
) -> None:
    """Admit a node to the space: the operator issues its credential, the node installs it.

    Needs both admin tokens (the two staffs together, or the owner of a local space). Calls GET
    /identity on the node, POST /operator/participants on the operator, PUT
    /management/credential on the node; prints the admitted id, roles and credential expiry.
    """
    try:
        with (
            admin_client(operator, operator_dir, operator_token_file) as op_admin,
            admin_client(node, node_dir, node_token_file) as node_admin,
        ):
            result = admit(op_admin, node_admin)
    except (RemoteError, NotReadyError, ValidationError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    """Add ``node`` to the main app."""
    app.add_typer(node_app, name="node")
