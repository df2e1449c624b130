"""``trusted-space space up|down``: a local space of real node processes from one config file.

The logic lives in :mod:`connectors.spaces.space`; these commands parse options, show progress and
print the result (a table for people, one JSON line with ``--json`` for scripts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connectors.spaces.space import (
    SPACE_FILE,
    SpaceConfigError,
    SpaceError,
    count_steps,
    down,
    load_config,
    read_space_file,
    up,
)

__all__ = ["register"]

space_app = typer.Typer(
    help="Run a local space (operator and members as real processes) from one config file.",
    no_args_is_help=True,
)


def _fail(exc: Exception, code: int, json_output: bool = False) -> typer.Exit:
    if json_output:
        problem = {"title": type(exc).__name__, "detail": str(exc)}
        if getattr(exc, "node", None):
            problem["node"] = str(getattr(exc, "node"))  # noqa: B009 - not every error has it
        typer.echo(json.dumps({"ok": False, "problem": problem}, separators=(",", ":")))
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    err.print(f"error: {exc}", style="bold red", markup=False)
    tail = getattr(exc, "log_tail", "")
    if tail:
        err.print(f"--- last lines of {getattr(exc, 'node', 'the node')}'s log ---", markup=False)
        err.print(tail, markup=False)
    return typer.Exit(code)


@space_app.command("up")
def _up(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.toml", help="The space config.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON line (nodes, URLs, pids).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the nodes to come up and be ready.")
    ] = 60.0,
) -> None:
    """Create (or reuse) the node directories, start every node, admit them, publish datasets.

    The nodes keep running after this command returns; stop them with 'space down'.
    """
    try:
        config = load_config(config_path)
    except SpaceConfigError as exc:
        raise _fail(exc, 2, json_output) from exc
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task(f"space {config.name}", total=count_steps(config))
        try:
            space = up(
                config,
                timeout=timeout,
                progress=lambda what: bar.update(task, advance=1, description=what),
            )
        except SpaceConfigError as exc:
            raise _fail(exc, 2, json_output) from exc
        except SpaceError as exc:
            raise _fail(exc, 1, json_output) from exc
    summary = space.to_json()
    if json_output:
        typer.echo(json.dumps(summary, separators=(",", ":")))
        return
    table = Table(title=f"space {config.name} ({space.dir})")
    for column in ("node", "roles", "url", "pid", "datasets"):
        table.add_column(column)
    for node in space.nodes.values():
        table.add_row(
            node.name,
            ",".join(node.config.roles),
            node.url,
            str(node.pid),
            str(len(node.config.datasets)),
        )
    out = Console()
    out.print(table)
    out.print(f"logs:  {space.dir}/<node>/logs/node.log", highlight=False)
    out.print(f"state: {space.dir / SPACE_FILE}", highlight=False)
    out.print(f"stop with: trusted-space space down {config_path}", highlight=False)


@space_app.command("down")
def _down(
    config_path: Annotated[
        Path | None, typer.Argument(metavar="[CONFIG.toml]", help="The space config.")
    ] = None,
    space_dir: Annotated[
        Path | None, typer.Option("--space-dir", help="The space directory (holds space.json).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL.")
    ] = 10.0,
) -> None:
    """Stop the nodes of a space started with 'space up' (SIGTERM, then SIGKILL)."""
    try:
        if config_path is not None and space_dir is None:
            directory = load_config(config_path).dir
        elif space_dir is not None and config_path is None:
            directory = space_dir
        else:
            raise typer.BadParameter("give the space config or --space-dir (one of them)")
        doc = read_space_file(directory)
        stopped = down(directory, timeout=timeout)
    except SpaceConfigError as exc:
        raise _fail(exc, 2) from exc
    except SpaceError as exc:
        raise _fail(exc, 1) from exc
    name = doc.get("name", directory)
    if stopped:
        typer.echo(f"space {name}: stopped {', '.join(stopped)}")
    else:
        typer.echo(f"space {name}: no node was running")


def register(app: typer.Typer) -> None:
    """Add ``space`` to the main app."""
    app.add_typer(space_app, name="space")
