"""Model parts from the command line: an analyst submits, a provider's staff decide.

- ``trusted-space model submit --provider P --agreement A --dataset D --model ID --weights F``
  (the analyst's node): send the model part in ``F`` (a JSON object ``{"column": weight}``) for
  approval; a rule it breaks is refused with the provider's trace.
- ``trusted-space model status --provider P --model ID`` (the analyst's node): how it stands
  (a decision is recorded once in the analyst's ledger).
- ``trusted-space model submissions [--state pending]`` (the provider's node): what members
  submitted; ``model approve|reject --owner M --model ID --reason R``: decide one.

Each calls the node's management API with its admin token (``--node-dir``, or ``--node`` with
``--token-file``) and prints the node's answer as JSON (a failure as ``{"ok": false,
"problem": ...}``, exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from connectors.cli._common import CLI_ERRORS, admin_client, fail

__all__ = ["register", "status_command", "submissions_command", "submit_command"]

model_app = typer.Typer(help="Submit model parts and decide them.", no_args_is_help=True)

NodeDir = Annotated[Path | None, typer.Option(help="The node's directory (URL and admin token).")]
NodeUrl = Annotated[str | None, typer.Option(help="The node's URL.")]
TokenFile = Annotated[Path | None, typer.Option(help="The admin token file.")]
ModelId = Annotated[str, typer.Option("--model", help="The model id.")]


def _call(
    method: str, path: str, body: Any, node: str | None, node_dir: Path | None, token: Path | None
) -> None:
    try:
        with admin_client(node, node_dir, token) as client:
            result = client.get(path) if method == "GET" else client.post(path, body)
    except CLI_ERRORS as exc:
        raise fail(exc, json_output=True) from exc  # the answer is JSON either way
    typer.echo(json.dumps(result, indent=2))


@model_app.command("submit")
def submit_command(
    provider: Annotated[str, typer.Option(help="The provider whose columns it weighs.")],
    agreement: Annotated[str, typer.Option(help="Your agreement with the provider.")],
    dataset: Annotated[str, typer.Option(help="The provider's dataset.")],
    model: ModelId,
    weights: Annotated[Path, typer.Option(help='JSON file {"column": weight, ...}.')],
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Submit a model part for the provider's approval (pending until its staff decide)."""
    try:
        doc = json.loads(weights.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{weights}: not a JSON file ({exc})") from exc
    if not isinstance(doc, dict):
        raise typer.BadParameter(f'{weights}: expected a JSON object {{"column": weight}}')
    body = {
        "provider": provider,
        "agreement": agreement,
        "dataset": dataset,
        "model": model,
        "weights": doc,
    }
    _call("POST", "/management/models/submit", body, node, node_dir, token_file)


@model_app.command("status")
def status_command(
    provider: Annotated[str, typer.Option(help="The provider it was submitted to.")],
    model: ModelId,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """How a submitted model part stands at the provider."""
    body = {"provider": provider, "model": model}
    _call("POST", "/management/models/status", body, node, node_dir, token_file)


@model_app.command("submissions")
def submissions_command(
    state: Annotated[str | None, typer.Option(help="pending, approved or rejected.")] = None,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Model parts members submitted to this provider."""
    path = "/management/models/submissions" + (f"?{urlencode({'state': state})}" if state else "")
    _call("GET", path, None, node, node_dir, token_file)


def _decide(action: str) -> Any:
    def command(
        owner: Annotated[str, typer.Option(help="The member that submitted it.")],
        model: ModelId,
        reason: Annotated[str, typer.Option(help="Why (kept in the ledger).")],
        node_dir: NodeDir = None,
        node: NodeUrl = None,
        token_file: TokenFile = None,
    ) -> None:
        body = {"owner": owner, "model": model, "reason": reason}
        _call("POST", f"/management/models/submissions/{action}", body, node, node_dir, token_file)

    command.__doc__ = (
        "Approve a pending model part (stored as the owner's party-held model)."
        if action == "approve"
        else "Reject a pending model part."
    )
    return command


model_app.command("approve")(_decide("approve"))
model_app.command("reject")(_decide("reject"))


def register(app: typer.Typer) -> None:
    """Add ``model`` to the main app."""
    app.add_typer(model_app, name="model")
