"""What a provider's staff do with agreements, requests and budgets from the command line.

- ``trusted-space agreement suspend|resume|terminate AGREEMENT --reason R``: change a FINALIZED
  agreement's standing (every later use is refused until it is resumed; terminate is final).
- ``trusted-space grants mode auto|policy|staff [--offer ID]``: how requests are granted;
  ``grants pending``: the requests held for the staff; ``grants approve PID`` and
  ``grants reject PID --reason R``.
- ``trusted-space budget show|set|reset``: a member's epsilon account on a dataset.

Each calls the provider node's management API with its admin token (``--node-dir``, or
``--node`` with ``--token-file``) and prints the node's answer as JSON (a failure as ``{"ok": false,
"problem": ...}``, exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import typer

from connectors.cli._common import CLI_ERRORS, admin_client, fail

__all__ = [
    "approve_command",
    "mode_command",
    "pending_command",
    "register",
    "reject_command",
    "reset_command",
    "set_command",
    "show_command",
]

agreement_app = typer.Typer(help="Suspend, resume or terminate an agreement.", no_args_is_help=True)
grants_app = typer.Typer(help="How contract requests are granted.", no_args_is_help=True)
budget_app = typer.Typer(help="Members' privacy budgets on this node's data.", no_args_is_help=True)

NodeDir = Annotated[Path | None, typer.Option(help="The node's directory (URL and admin token).")]
NodeUrl = Annotated[str | None, typer.Option(help="The node's URL.")]
TokenFile = Annotated[Path | None, typer.Option(help="The admin token file.")]
Reason = Annotated[str, typer.Option(help="Why (kept in the ledger).")]


def _call(
    method: str,
    path: str,
    body: Any,
    node: str | None,
    node_dir: Path | None,
    token_file: Path | None,
) -> None:
    try:
        with admin_client(node, node_dir, token_file) as client:
            if method == "GET":
                result = client.get(path)
            elif method == "PUT":
                result = client.put(path, body)
            else:
                result = client.post(path, body)
    except CLI_ERRORS as exc:
        raise fail(exc, json_output=True) from exc  # the answer is JSON either way
    typer.echo(json.dumps(result, indent=2))


def _standing(action: str) -> Any:
    def command(
        agreement: Annotated[str, typer.Argument(help="The agreement id.")],
        reason: Reason,
        node_dir: NodeDir = None,
        node: NodeUrl = None,
        token_file: TokenFile = None,
    ) -> None:
        path = f"/management/agreements/{quote(agreement, safe='')}/{action}"
        _call("POST", path, {"reason": reason}, node, node_dir, token_file)

    command.__doc__ = f"{action.capitalize()} an agreement this node granted."
    return command


for _action in ("suspend", "resume", "terminate"):
    agreement_app.command(_action)(_standing(_action))


@grants_app.command("mode")
def mode_command(
    mode: Annotated[str, typer.Argument(help="auto, policy or staff.")],
    offer: Annotated[str | None, typer.Option(help="Only for this offer.")] = None,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Set how requests are granted (node-wide, or for one offer)."""
    body: dict[str, Any] = {"mode": mode} | ({"offerId": offer} if offer else {})
    _call("PUT", "/management/grants/mode", body, node, node_dir, token_file)


@grants_app.command("pending")
def pending_command(
    node_dir: NodeDir = None, node: NodeUrl = None, token_file: TokenFile = None
) -> None:
    """List the requests held for the staff."""
    _call("GET", "/management/grants/pending", None, node, node_dir, token_file)


@grants_app.command("approve")
def approve_command(
    pid: Annotated[str, typer.Argument(help="The held request's id (from `grants pending`).")],
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Approve a held request: the provider agrees and signs."""
    path = f"/management/grants/pending/{quote(pid, safe='')}/approve"
    _call("POST", path, None, node, node_dir, token_file)


@grants_app.command("reject")
def reject_command(
    pid: Annotated[str, typer.Argument(help="The held request's id (from `grants pending`).")],
    reason: Reason,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Reject a held request: the negotiation is terminated and the consumer told why."""
    path = f"/management/grants/pending/{quote(pid, safe='')}/reject"
    _call("POST", path, {"reason": reason}, node, node_dir, token_file)


Member = Annotated[str, typer.Option(help="The member's participant id.")]
Dataset = Annotated[str, typer.Option(help="The dataset id.")]


@budget_app.command("show")
def show_command(
    member: Member,
    dataset: Dataset,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """What a member has spent on a dataset and the limit that applies."""
    path = "/management/budgets?" + urlencode({"member": member, "dataset": dataset})
    _call("GET", path, None, node, node_dir, token_file)


@budget_app.command("set")
def set_command(
    dataset: Dataset,
    epsilon: Annotated[float, typer.Option(help="The total epsilon.", min=0)],
    member: Annotated[str | None, typer.Option(help="Only for this member.")] = None,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Set the total epsilon of a member (or every member) on a dataset."""
    body: dict[str, Any] = {"dataset": dataset, "epsilon": epsilon}
    if member:
        body["member"] = member
    _call("PUT", "/management/budgets", body, node, node_dir, token_file)


@budget_app.command("reset")
def reset_command(
    member: Member,
    dataset: Dataset,
    reason: Reason,
    node_dir: NodeDir = None,
    node: NodeUrl = None,
    token_file: TokenFile = None,
) -> None:
    """Start a member's account on a dataset afresh (ledgered with the reason)."""
    body = {"dataset": dataset, "member": member, "reason": reason}
    _call("POST", "/management/budgets/reset", body, node, node_dir, token_file)


def register(app: typer.Typer) -> None:
    """Add ``agreement``, ``grants`` and ``budget`` to the main app."""
    app.add_typer(agreement_app, name="agreement")
    app.add_typer(grants_app, name="grants")
    app.add_typer(budget_app, name="budget")
