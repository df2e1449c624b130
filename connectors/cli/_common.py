"""What the command groups share: the ``query``/``local`` groups, options, progress and errors.

Commands that act as a node's staff need its URL and admin token (``--node-dir``, or ``--node``
with ``--token-file``): :func:`admin_client` and :func:`analyst_client` build the clients.

**Exit codes**, the same for every command: :data:`EXIT_OK` 0 done; :data:`EXIT_FAILED` 1
refused or failed (a policy refusal, a peer or node error, a check that did not hold);
:data:`EXIT_USAGE` 2 the command line or a config file is wrong (nothing was done);
:data:`EXIT_INTERRUPTED` 130 interrupted (Ctrl-C). With ``--json`` a command prints one JSON
document on stdout whether it succeeds or fails (:func:`fail`: ``{"ok": false, "problem":
{...}}``); messages for people go to stderr.
"""

from __future__ import annotations

import csv
import json
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.client.analyst import AnalystClient, QueryFailed, QueryProgress
from connectors.client.http import AdminClient
from connectors.common.errors import ConnectorError
from connectors.common.settings import load_settings
from connectors.common.tls import client_context
from connectors.spaces.local import LocalSpace
from trusted_space.errors import NotReadyError, RemoteError, TrustedSpaceError, ValidationError


def staff_address(
    node: str | None, node_dir: Path | None, token_file: Path | None
) -> tuple[str, str]:
    """The node's URL and admin token from ``--node-dir``, or ``--node`` + ``--token-file``.

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
    return url, token_path.read_text(encoding="utf-8").strip()


def staff_tls(node_dir: Path | None) -> ssl.SSLContext | bool:
    """How the staff's client checks an ``https`` node.

    With ``--node-dir``, the node's own TLS settings (its CA bundle; its certificate for a node
    that requires client certificates); else httpx's defaults (which honour ``SSL_CERT_FILE``).
    """
    return client_context(load_settings(node_dir)) if node_dir is not None else True


def admin_client(node: str | None, node_dir: Path | None, token_file: Path | None) -> AdminClient:
    """An :class:`AdminClient` for the node (see :func:`staff_address`)."""
    return AdminClient(*staff_address(node, node_dir, token_file), verify=staff_tls(node_dir))


def check_choices(choices: Iterable[tuple[str, Sequence[str], str]]) -> None:
    """Refuse an option value outside its allowed set: ``(value, allowed, "--option")`` triples."""
    for value, allowed, name in choices:
        if value not in allowed:
            raise typer.BadParameter(f"{name} {value!r}: one of {', '.join(allowed)}")


query_app = typer.Typer(help="Run joint queries from your node (you are the analyst).")


local_app = typer.Typer(help="Try joint queries on local files through a throw-away local space.")


NodeOpt = Annotated[str | None, typer.Option("--node", help="The analyst node's URL.")]


NodeDirOpt = Annotated[
    Path | None, typer.Option("--node-dir", help="The analyst node's directory (URL and token).")
]


TokenOpt = Annotated[Path | None, typer.Option("--token-file", help="The admin token file.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
IdColumnOpt = Annotated[str, typer.Option("--id", help="The entity id column of every file.")]
IdKindOpt = Annotated[str, typer.Option(help="opaque | uscc")]
MissingOpt = Annotated[str, typer.Option(help="fail | impute (column means).")]
WorkDirOpt = Annotated[
    Path | None, typer.Option(help="Keep the node directories here (default: temporary).")
]


def analyst_client(
    node: str | None, node_dir: Path | None, token_file: Path | None, **kw: Any
) -> AnalystClient:
    """An :class:`AnalystClient` for the node (see :func:`staff_address`)."""
    return AnalystClient(
        *staff_address(node, node_dir, token_file), verify=staff_tls(node_dir), **kw
    )


def read_ids(path: Path, column: str | None = None) -> list[str]:
    """Ids from a CSV file with a header line: ``column``, or the first column."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise ValidationError(f"{path}: empty file (expected a header line)")
            names = [h.strip() for h in header]
            if column is not None and column not in names:
                raise ValidationError(f"{path}: no column {column!r} in the header {names}")
            at = names.index(column) if column is not None else 0
            ids = [row[at].strip() for row in reader if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValidationError(f"{path}: cannot read ids ({exc})") from exc
    if not ids:
        raise ValidationError(f"{path}: no ids")
    return ids


def pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise typer.BadParameter(f"{option} {value!r}: expected NAME=ID")
        out[key] = item
    return out


PROGRESS_LINE_SECONDS = 5.0
"""When stderr is not a terminal: a progress line at each new stage, else at most this often."""


def progress_lines(
    write: Callable[[str], None], *, every: float = PROGRESS_LINE_SECONDS
) -> Callable[[QueryProgress], None]:
    """A progress callback that writes one plain line per stage change (or every ``every`` s).

    For pipes, CI logs and files: a bar redraws in place, which a log cannot show, so a long
    query would print nothing for minutes.
    """
    last: dict[str, Any] = {"stage": None, "at": 0.0}

    def update(p: QueryProgress) -> None:
        now = time.monotonic()
        if p.stage == last["stage"] and now - last["at"] < every:
            return
        last.update(stage=p.stage, at=now)
        write(f"[{p.fraction:4.0%}] {p.stage}")

    return update


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[QueryProgress], None]]:
    """Progress on stderr: a bar on a terminal, plain lines otherwise; yields the callback."""
    console = Console(stderr=True)
    if not enabled:
        yield lambda _: None
        return
    if not console.is_terminal:
        yield progress_lines(lambda line: print(line, file=sys.stderr, flush=True))
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("submitting", total=1.0)

        def update(p: QueryProgress) -> None:
            bar.update(task, completed=p.fraction, description=p.stage)

        yield update


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def follow_query(
    client: AnalystClient,
    view: dict[str, Any],
    progress: Callable[[QueryProgress], None],
    *,
    timeout: float | None,
    json_output: bool = False,
) -> dict[str, Any]:
    """Print a submitted query's id at once, follow it to its result; Ctrl-C offers to cancel.

    On a terminal the user is asked whether to cancel the query at every party (the default);
    otherwise it is cancelled and the line says so. Either way the command then exits 130
    (with ``json_output``, after an ``interrupted`` problem document on stdout).
    """
    query_id = str(view["id"])
    err = Console(stderr=True)
    err.print(f"query {query_id} submitted", highlight=False)
    try:
        return client.wait(query_id, progress=progress, timeout=timeout)
    except KeyboardInterrupt:
        cancel = True
        if sys.stdin.isatty() and err.is_terminal:
            try:
                cancel = typer.confirm(f"\ncancel query {query_id} at every party?", default=True)
            except (KeyboardInterrupt, typer.Abort):
                cancel = True
        if cancel:
            try:
                ended = client.cancel(query_id, by="cli")
                err.print(f"query {query_id} {ended['state']} at every party", highlight=False)
            except CLI_ERRORS as exc:
                err.print(f"query {query_id} could not be cancelled: {exc}", highlight=False)
        else:
            err.print(f"query {query_id} runs on (see: query status {query_id})", highlight=False)
        if json_output:
            state = "cancelled" if cancel else "left running"
            print_json(
                {
                    "ok": False,
                    "problem": {
                        "title": "Interrupted",
                        "detail": f"interrupted; query {query_id} {state}",
                        "query": query_id,
                    },
                }
            )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def problem_of(exc: BaseException) -> dict[str, Any]:
    """An error as a problem document (RFC 9457 fields) for ``--json`` output."""
    if isinstance(exc, QueryFailed):
        return {**exc.problem, "query": exc.query_id}
    if isinstance(exc, RemoteError):
        return {**exc.problem, "peer": exc.peer, "status": exc.status}
    return {"title": type(exc).__name__, "detail": str(exc)}


def print_json(doc: Any) -> None:
    """One JSON document on stdout (indented)."""
    typer.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


def fail(exc: BaseException, json_output: bool = False, code: int = EXIT_FAILED) -> typer.Exit:
    """Report ``exc`` (stderr; with ``json_output`` also a JSON document on stdout); the exit."""
    if json_output:
        print_json({"ok": False, "problem": problem_of(exc)})
    err = Console(stderr=True)
    if isinstance(exc, QueryFailed):
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        blocking = [s for s in exc.trace if s.get("blocking")]
        for step in blocking or [s for s in exc.trace if s.get("outcome") == "violated"]:
            err.print(f"  refused by rule: {step.get('message') or step}", highlight=False)
    elif isinstance(exc, RemoteError):
        detail = exc.problem.get("detail") or str(exc)
        err.print(f"[red]error:[/red] {detail}", markup=True, highlight=False)
    else:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    return typer.Exit(code)


CLI_ERRORS = (
    QueryFailed,
    RemoteError,
    NotReadyError,
    ConnectorError,
    TrustedSpaceError,
    ValueError,
    OSError,
)


def start_local(local: LocalSpace, quiet: bool) -> None:
    """Start a local space, showing its steps on stderr.

    A spinner on a terminal unless ``quiet`` (``--json``); off a terminal a line per step, so a
    log shows what a minute of starting was spent on.
    """
    err = Console(stderr=True)
    if not err.is_terminal:
        local.start(lambda step: print(f"space: {step}", file=sys.stderr, flush=True))
        return
    if quiet:
        local.start()
        return
    with err.status("starting the local space") as status:
        local.start(lambda s: status.update(s))
