"""``trusted-space query ...`` and ``trusted-space local ...``: joint queries from the command line.

- ``query score``: a bank's staff score entities with a model through their own node (the node
  holds the keys and orchestrates; :class:`connectors.analyst.AnalystClient`). Agreements and
  datasets are found among the node's agreements unless named with ``--agreement``/``--dataset``.
  A progress bar follows the query; the scores go to ``--out`` as ``id,logit,<output>``.
- ``query aggregate``: a statistic of one provider column over a cohort (PSI) or explicit ids.
- ``query status ID``: one query's state, progress and (``--json``) result.
- ``local score``: the same score over local files through a real space started for it and
  stopped after (:class:`connectors.local.LocalSpace`): first ``--party`` = the analyst.

``--json`` prints a summary (timings, counts, and per provider the receipt an auditor checks: the
signed checkpoint, the ledger vkey, the use entry's leaf index, tree size, inclusion path in hex
and entry bytes in base64). A provider's refusal is printed with its policy trace; the exit code
is then 1.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.analyst import AnalystClient, QueryFailed, QueryProgress
from connectors.commands._common import check_choices
from connectors.local import (
    LocalSpace,
    LocalSpaceError,
    load_model,
    parse_party,
    receipt_summary,
    write_scores,
)
from connectors.problems import ConnectorError, NotReady, PeerError
from connectors.settings import load_settings
from trusted_space.errors import TrustedSpaceError, ValidationError
from trusted_space.query import ID_KINDS, MISSING_RULES, MODES

__all__ = [
    "aggregate_command",
    "analyst_client",
    "local_app",
    "local_score_command",
    "query_app",
    "read_ids",
    "register",
    "score_command",
    "status_command",
]

query_app = typer.Typer(help="Run joint queries from your node (you are the analyst).")
local_app = typer.Typer(help="Try joint queries on local files through a throw-away local space.")

_PROTOCOLS = ("paillier", "ckks", "additive")

NodeOpt = Annotated[str | None, typer.Option("--node", help="The analyst node's URL.")]
NodeDirOpt = Annotated[
    Path | None, typer.Option("--node-dir", help="The analyst node's directory (URL and token).")
]
TokenOpt = Annotated[Path | None, typer.Option("--token-file", help="The admin token file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


def analyst_client(
    node: str | None, node_dir: Path | None, token_file: Path | None, **kw: Any
) -> AnalystClient:
    """An analyst client from ``--node``/``--node-dir``/``--token-file``."""
    url = node
    token_path = token_file
    if node_dir is not None:
        settings = load_settings(node_dir)
        url = url or settings.url
        token_path = token_path or settings.layout.admin_token
    if url is None or token_path is None:
        raise typer.BadParameter("give --node-dir, or --node with --token-file")
    return AnalystClient(url, token_path.read_text(encoding="utf-8").strip(), **kw)


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


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise typer.BadParameter(f"{option} {value!r}: expected NAME=ID")
        out[key] = item
    return out


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[QueryProgress], None]]:
    """A progress bar on stderr (only on a terminal); yields the callback for the client."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda _: None
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


def _fail(exc: BaseException) -> typer.Exit:
    err = Console(stderr=True)
    if isinstance(exc, QueryFailed):
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        blocking = [s for s in exc.trace if s.get("blocking")]
        for step in blocking or [s for s in exc.trace if s.get("outcome") == "violated"]:
            err.print(f"  refused by rule: {step.get('message') or step}", highlight=False)
    elif isinstance(exc, PeerError):
        detail = exc.problem.get("detail") or str(exc)
        err.print(f"[red]error:[/red] {detail}", markup=True, highlight=False)
    else:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    return typer.Exit(1)


_ERRORS = (QueryFailed, PeerError, NotReady, ConnectorError, TrustedSpaceError, ValueError, OSError)


def _receipts(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        p: receipt_summary(dict(r)) | {"verifiedByNode": True}
        for p, r in dict(result.get("receipts", {})).items()
    }


def _summary(result: Mapping[str, Any], out: Path, rows: int) -> dict[str, Any]:
    return {
        "query": result.get("query"),
        "protocol": result.get("protocol"),
        "entities": rows,
        "output": str(out),
        "missing": {p: len(m) for p, m in dict(result.get("missing", {})).items()},
        "timings": result.get("timings", {}),
        "receipts": _receipts(result),
    }


# -- query ----------------------------------------------------------------------------------------


@query_app.command("score")
def score_command(
    model: Annotated[Path, typer.Option(help="The model file (JSON).", exists=True)],
    entities: Annotated[Path, typer.Option(help="CSV of ids to score (header line).")],
    protocol: Annotated[str, typer.Option(help="paillier | ckks | additive")],
    out: Annotated[Path, typer.Option(help="Where to write id,logit,output (CSV).")],
    purpose: Annotated[str, typer.Option(help="The declared purpose.")] = "pre-loan-review",
    agreement: Annotated[
        list[str] | None, typer.Option(help="PROVIDER=AGREEMENT_ID (default: the one usable).")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="PARTY=DATASET_ID (e.g. your own dataset).")
    ] = None,
    missing: Annotated[str, typer.Option(help="fail | impute")] = "fail",
    mode: Annotated[str, typer.Option(help="analyst-held | party-held")] = "analyst-held",
    cohort: Annotated[bool, typer.Option(help="Align by PSI; score the intersection.")] = False,
    id_kind: Annotated[str, typer.Option(help="opaque | uscc")] = "opaque",
    id_column: Annotated[str | None, typer.Option(help="Id column of --entities.")] = None,
    feature_bound: Annotated[
        float | None, typer.Option(help="Declared bound of |feature| (default 64).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the result.")] = None,
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Score entities with a model, jointly with the providers, through your node."""
    check_choices(
        (
            (protocol, _PROTOCOLS, "--protocol"),
            (missing, MISSING_RULES, "--missing"),
            (mode, MODES, "--mode"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
    try:
        ids = read_ids(entities, id_column)
        parsed = load_model(model)
        extra: dict[str, Any] = {"missing": missing, "mode": mode, "cohort": cohort}
        extra["id_kind"] = id_kind
        if feature_bound is not None:
            extra["feature_bound"] = feature_bound
        with (
            analyst_client(node, node_dir, token_file) as client,
            _progress(True) as progress,
        ):
            query = client.score_query(
                parsed,
                ids,
                protocol=protocol,
                purpose=purpose,
                agreements=_pairs(agreement, "--agreement"),
                datasets=_pairs(dataset, "--dataset"),
                **extra,
            )
            result = client.score_json(query, progress=progress, timeout=timeout)
        rows = write_scores(out, result)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    summary = _summary(result, out, rows)
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{rows} scores written to {out} (query {summary['query']})")
        for p, n in summary["missing"].items():
            typer.echo(f"  {p}: {n} entities missing ({missing})")
        typer.echo(f"  receipts from {', '.join(sorted(summary['receipts'])) or 'nobody'}")


@query_app.command("aggregate")
def aggregate_command(
    provider: Annotated[str, typer.Option(help="The provider's participant id.")],
    column: Annotated[str, typer.Option(help="The provider column.")],
    statistic: Annotated[str, typer.Option(help="count | sum | mean | histogram")],
    protocol: Annotated[str, typer.Option(help="paillier | ckks | additive")],
    purpose: Annotated[str, typer.Option(help="The declared purpose.")],
    cohort: Annotated[
        Path | None, typer.Option(help="CSV of your ids, aligned by PSI (hidden from it).")
    ] = None,
    entities: Annotated[
        Path | None, typer.Option(help="CSV of explicit ids instead (the provider sees them).")
    ] = None,
    agreement: Annotated[str | None, typer.Option(help="Agreement id (default: usable).")] = None,
    bins: Annotated[str | None, typer.Option(help="Histogram edges, e.g. 0,10,100.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Laplace noise budget.")] = None,
    missing: Annotated[str, typer.Option(help="fail | impute (explicit ids).")] = "fail",
    id_column: Annotated[str | None, typer.Option(help="Id column of the CSV.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait.")] = None,
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """A statistic of one provider column over your cohort, through your node."""
    if (cohort is None) == (entities is None):
        raise typer.BadParameter("give --cohort or --entities")
    try:
        ids = read_ids(cohort or entities, id_column)  # type: ignore[arg-type]
        edges = [float(b) for b in bins.split(",")] if bins else []
        with (
            analyst_client(node, node_dir, token_file) as client,
            _progress(True) as progress,
        ):
            given = {provider: agreement} if agreement else None
            agreements, datasets = client.resolve_agreements([provider], given)
            body: dict[str, Any] = {
                "provider": provider,
                "agreement": agreements[provider],
                "dataset": datasets[provider],
                "column": column,
                "statistic": statistic,
                "protocol": protocol,
                "purpose": purpose,
                "bins": edges,
                "missing": missing,
                "cohort" if cohort is not None else "entities": ids,
            }
            if epsilon is not None:
                body["epsilon"] = epsilon
            view = client.submit_aggregate(body)
            result = client.wait(view["id"], progress=progress, timeout=timeout)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    summary = {k: v for k, v in result.items() if k != "receipts"}
    summary["receipts"] = [receipt_summary(dict(r)) for r in result.get("receipts", [])]
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    elif statistic == "histogram":
        typer.echo(f"{statistic} of {column} at {provider} (cohort {result['cohortSize']}):")
        for lo, hi, n in zip(result["bins"], result["bins"][1:], result["counts"], strict=False):
            typer.echo(f"  [{lo}, {hi}): {n}")
    else:
        typer.echo(
            f"{statistic} of {column} at {provider}: {result['value']} "
            f"(cohort {result['cohortSize']})"
        )


@query_app.command("status")
def status_command(
    query_id: Annotated[str, typer.Argument(help="The query id.")],
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """A query's state and progress (and with --json its result)."""
    try:
        with analyst_client(node, node_dir, token_file) as client:
            view = client.status(query_id)
    except _ERRORS as exc:
        raise _fail(exc) from exc
    if json_output:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"{view['id']}: {view['state']} ({view['stage']}, {view['fraction']:.0%})")
        if view.get("error"):
            typer.echo(f"  error: {view['error'].get('detail')}")


# -- local ----------------------------------------------------------------------------------------


@local_app.command("score")
def local_score_command(
    party: Annotated[
        list[str], typer.Option(help="NAME=FILE (.csv or .parquet); the first is the analyst.")
    ],
    id_column: Annotated[str, typer.Option("--id", help="The entity id column of every file.")],
    model: Annotated[Path, typer.Option(help="The model file (JSON).", exists=True)],
    protocol: Annotated[str, typer.Option(help="paillier | ckks | additive")],
    out: Annotated[Path, typer.Option(help="Where to write id,logit,output (CSV).")],
    id_kind: Annotated[str, typer.Option(help="opaque | uscc")] = "opaque",
    missing: Annotated[str, typer.Option(help="fail | impute (column means).")] = "fail",
    cohort: Annotated[bool, typer.Option(help="Align by PSI; score the intersection.")] = False,
    work_dir: Annotated[
        Path | None, typer.Option(help="Keep the node directories here (default: temporary).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Score the analyst's ids over local files through a real local space, then stop it."""
    check_choices(
        (
            (protocol, _PROTOCOLS, "--protocol"),
            (missing, MISSING_RULES, "--missing"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
    err = Console(stderr=True)
    started = time.perf_counter()
    try:
        parties = [parse_party(p) for p in party]
        local = LocalSpace(
            parties,
            load_model(model),
            id_column,
            id_kind=id_kind,
            missing=missing,
            work_dir=work_dir,
            keep=work_dir is not None,
        )
        with local:
            if json_output or not err.is_terminal:
                local.start()
            else:
                with err.status("starting the local space") as status:
                    local.start(lambda s: status.update(s))
            with _progress(True) as progress:
                result = local.score(protocol, cohort=cohort, progress=progress)
            receipts = local.verify_receipts(result)
        rows = write_scores(out, result)
    except (LocalSpaceError, *_ERRORS) as exc:
        raise _fail(exc) from exc
    query_seconds = local.timings.get(f"query.{protocol}", 0.0)
    summary = {
        "query": result.get("query"),
        "protocol": protocol,
        "analyst": parties[0].name,
        "providers": sorted(local.agreements),
        "entities": rows,
        "output": str(out),
        "missing": {p: len(m) for p, m in dict(result.get("missing", {})).items()},
        "timings": {
            "spaceUp": local.timings.get("spaceUp"),
            "negotiate": local.timings.get("negotiate"),
            "query": query_seconds,
            "phases": result.get("timings", {}),
            "total": time.perf_counter() - started,
        },
        "entitiesPerSecond": rows / query_seconds if query_seconds else None,
        "agreements": dict(local.agreements),
        "receipts": receipts,
    }
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(
            f"{rows} scores written to {out} ({protocol}, {query_seconds:.2f} s for the query)"
        )
        for p, r in receipts.items():
            typer.echo(f"  {p}: use recorded at leaf {r['leafIndex']} of {r['treeSize']}, verified")


def register(app: typer.Typer) -> None:
    """Add the ``query`` and ``local`` groups to ``app``."""
    from connectors.commands import train  # noqa: F401 - adds ``query train`` and ``local train``

    app.add_typer(query_app, name="query")
    app.add_typer(local_app, name="local")
