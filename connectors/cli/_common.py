"""Options shared by commands that act as a node's staff (they need its URL and admin token)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import typer

from connectors.client import AdminClient
from connectors.settings import load_settings

__all__ = ["admin_client", "check_choices"]


def admin_client(node: str | None, node_dir: Path | None, token_file: Path | None) -> AdminClient:
    """An :class:`AdminClient` for a node given by ``--node-dir`` or ``--node`` + ``--token-file``.

    ``--node-dir`` reads the URL from ``node.toml`` and the token from ``keys/admin.token``;
    ``--node`` overrides the URL; ``--token-file`` overrides the token file.
    """
    url = node
    token_path = token_file
    if node_dir is not None:
        settings = load_settings(node_dir)
        url = url or settings.url
        token_path = token_path or settings.layout.admin_token
    if url is None or token_path is None:
        raise typer.BadParameter("give --node-dir, or --node with --token-file")
    return AdminClient(url, token_path.read_text(encoding="utf-8").strip())


def check_choices(choices: Iterable[tuple[str, Sequence[str], str]]) -> None:
    """Refuse an option value outside its allowed set: ``(value, allowed, "--option")`` triples."""
    for value, allowed, name in choices:
        if value not in allowed:
            raise typer.BadParameter(f"{name} {value!r}: one of {', '.join(allowed)}")
