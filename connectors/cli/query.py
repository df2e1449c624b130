"""``trusted-space query ...`` and ``trusted-space local ...``: joint queries from the command line.

- ``query score``: a bank's staff score entities with a model through their own node (the node
  holds the keys and orchestrates; :class:`connectors.client.analyst.AnalystClient`). Agreements and
  datasets are found among the node's agreements unless named with ``--agreement``/``--dataset``.
  A progress bar follows the query; the scores go to ``--out`` as ``id,logit,<output>``.
- ``query aggregate``: a statistic of one provider column over a cohort (PSI) or explicit ids.
- ``query score-now``: one or a few entities (``--entity``, repeated) scored at once through the
  node's standing sessions (``POST /management/score``): the scores and the receipts in one round
  trip, printed (``--json``: the whole answer).
- ``query lookup``: one or a few entities' columns of a provider's conditional dataset under an
  agreement (``POST /management/lookup``): one row per entity as CSV (``--json``: the answer
  with its receipt).
- ``query status ID``: one query's state, progress and (``--json``) result.
- ``query cancel ID``: stop a queued or running query at every party. ``query score``,
  ``aggregate`` and ``train`` print the query's id as soon as the node accepts it; Ctrl-C then
  offers to cancel it (on a terminal; otherwise it is cancelled, and the message says so).
- ``local score``: the same score over local files through a real space started for it and
  stopped after (:class:`connectors.spaces.local.LocalSpace`): first ``--party`` = the analyst.

``--json`` prints a summary (timings, counts, and per provider the receipt an auditor checks: the
signed checkpoint, the ledger vkey, the use entry's leaf index, tree size, inclusion path in hex
and entry bytes in base64). A provider's refusal is printed with its policy trace; the exit code
is then 1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from connectors.cli._common import (
    CLI_ERRORS,
    IdColumnOpt,
    IdKindOpt,
    JsonOpt,
    MissingOpt,
    NodeDirOpt,
    NodeOpt,
    TokenOpt,
    WorkDirOpt,
    analyst_client,
    check_choices,
    fail,
    follow_query,
    local_app,
    pairs,
    progress_bar,
    query_app,
    read_ids,
    start_local,
)
from connectors.client.results import load_model, receipt_summary, write_scores
from connectors.spaces.local import LocalSpace, LocalSpaceError, parse_party
from trusted_space.policy import PROTOCOLS
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES

__all__ = [
    "aggregate_command",
    "cancel_command",
    "local_score_command",
    "lookup_command",
    "score_command",
    "score_now_command",
    "status_command",
]


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
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="A provider holding its part of a party-held model (repeat; the model file "
            "names only your own part).",
        ),
    ] = None,
    cohort: Annotated[bool, typer.Option(help="Align by PSI; score the intersection.")] = False,
    id_kind: IdKindOpt = "opaque",
    id_column: Annotated[str | None, typer.Option(help="Id column of --entities.")] = None,
    band_edge: Annotated[
        list[float] | None,
        typer.Option(
            "--band-edge",
            help="An edge on the logit (repeat, increasing; additive only): only the band of "
            "each logit is released, never the logit (writes id,band).",
        ),
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
            (protocol, PROTOCOLS, "--protocol"),
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
        if band_edge:
            extra["band_edges"] = tuple(band_edge)
        with (
            analyst_client(node, node_dir, token_file) as client,
            progress_bar(True) as progress,
        ):
            query = client.score_query(
                parsed,
                ids,
                protocol=protocol,
                purpose=purpose,
                agreements=pairs(agreement, "--agreement"),
                datasets=pairs(dataset, "--dataset"),
                providers=provider or (),
                **extra,
            )
            view = client.submit_score(query)
            result = follow_query(client, view, progress, timeout=timeout, json_output=json_output)
        rows = write_scores(out, result)
    except CLI_ERRORS as exc:
        raise fail(exc, json_output) from exc
    summary = _summary(result, out, rows)
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{rows} scores written to {out} (query {summary['query']})")
        for p, n in summary["missing"].items():
            typer.echo(f"  {p}: {n} entities missing ({missing})")
        typer.echo(f"  receipts from {', '.join(sorted(summary['receipts'])) or 'nobody'}")


@query_app.command("score-now")
def score_now_command(
    model: Annotated[Path, typer.Option(help="The model file (JSON).", exists=True)],
    entity: Annotated[list[str], typer.Option(help="An id to score (repeat, at most 64).")],
    protocol: Annotated[str, typer.Option(help="paillier | ckks | additive")],
    purpose: Annotated[str, typer.Option(help="The declared purpose.")] = "pre-loan-review",
    agreement: Annotated[
        list[str] | None, typer.Option(help="PROVIDER=AGREEMENT_ID (default: the one usable).")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="PARTY=DATASET_ID (e.g. your own dataset).")
    ] = None,
    missing: MissingOpt = "fail",
    mode: Annotated[str, typer.Option(help="analyst-held | party-held")] = "analyst-held",
    provider: Annotated[
        list[str] | None,
        typer.Option("--provider", help="A provider holding its part of a party-held model."),
    ] = None,
    id_kind: IdKindOpt = "opaque",
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Score one or a few entities now (a loan officer waits): scores and receipts at once."""
    check_choices(
        (
            (protocol, PROTOCOLS, "--protocol"),
            (missing, MISSING_RULES, "--missing"),
            (mode, MODES, "--mode"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
    try:
        with analyst_client(node, node_dir, token_file) as client:
            query = client.score_query(
                load_model(model),
                entity,
                protocol=protocol,
                purpose=purpose,
                agreements=pairs(agreement, "--agreement"),
                datasets=pairs(dataset, "--dataset"),
                providers=provider or (),
                missing=missing,
                mode=mode,
                id_kind=id_kind,
            )
            result = client.score_now(query)
    except CLI_ERRORS as exc:
        raise fail(exc) from exc
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    for e, logit, output in zip(
        result["entities"], result["logits"], result["outputs"], strict=True
    ):
        typer.echo(f"{e},{logit:.6f},{output:.6f}")
    typer.echo(
        f"  query {result['query']}: receipts from {', '.join(sorted(result['receipts']))}"
        f" (run of {result['run']})",
        err=True,
    )


@query_app.command("lookup")
def lookup_command(
    provider: Annotated[str, typer.Option(help="The provider's participant id.")],
    agreement: Annotated[str, typer.Option(help="The agreement id.")],
    dataset: Annotated[str, typer.Option(help="The provider's dataset id.")],
    entity: Annotated[list[str], typer.Option(help="An id to look up (repeat, at most 16).")],
    column: Annotated[list[str], typer.Option(help="A column to read (repeat).")],
    purpose: Annotated[str, typer.Option(help="The declared purpose.")] = "pre-loan-review",
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """One or a few entities' columns of a conditional dataset, with the provider's receipt."""
    try:
        with analyst_client(node, node_dir, token_file) as client:
            result = client.lookup(provider, agreement, dataset, entity, column, purpose=purpose)
    except CLI_ERRORS as exc:
        raise fail(exc) from exc
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(",".join(["entity", *result["columns"]]))
    for row in result["rows"]:
        values = row["values"] or {}
        cells = ["" if values.get(c) is None else str(values[c]) for c in result["columns"]]
        typer.echo(",".join([row["entity"], *cells]))
    missing = sum(1 for row in result["rows"] if not row["found"])
    typer.echo(
        f"  query {result['queryId']}: receipt from {result['provider']}"
        + (f"; {missing} not held" if missing else ""),
        err=True,
    )


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
            progress_bar(True) as progress,
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
            result = follow_query(client, view, progress, timeout=timeout, json_output=json_output)
    except CLI_ERRORS as exc:
        raise fail(exc, json_output) from exc
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
    except CLI_ERRORS as exc:
        raise fail(exc, json_output) from exc
    if json_output:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"{view['id']}: {view['state']} ({view['stage']}, {view['fraction']:.0%})")
        if view.get("error"):
            typer.echo(f"  error: {view['error'].get('detail')}")


@query_app.command("cancel")
def cancel_command(
    query_id: Annotated[str, typer.Argument(help="The query id.")],
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Cancel a queued or running query at every party taking part."""
    try:
        with analyst_client(node, node_dir, token_file) as client:
            view = client.cancel(query_id, by="cli")
    except CLI_ERRORS as exc:
        raise fail(exc, json_output) from exc
    if json_output:
        typer.echo(json.dumps(view, indent=2))
    else:
        typer.echo(f"{view['id']}: {view['state']}")
        for party, answer in sorted(dict(view.get("parties") or {}).items()):
            typer.echo(f"  {party}: {answer}")


# -- local ----------------------------------------------------------------------------------------


@local_app.command("score")
def local_score_command(
    party: Annotated[
        list[str], typer.Option(help="NAME=FILE (.csv or .parquet); the first is the analyst.")
    ],
    id_column: IdColumnOpt,
    model: Annotated[Path, typer.Option(help="The model file (JSON).", exists=True)],
    protocol: Annotated[str, typer.Option(help="paillier | ckks | additive")],
    out: Annotated[Path, typer.Option(help="Where to write id,logit,output (CSV).")],
    id_kind: IdKindOpt = "opaque",
    missing: MissingOpt = "fail",
    cohort: Annotated[bool, typer.Option(help="Align by PSI; score the intersection.")] = False,
    work_dir: WorkDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Score the analyst's ids over local files through a real local space, then stop it."""
    check_choices(
        (
            (protocol, PROTOCOLS, "--protocol"),
            (missing, MISSING_RULES, "--missing"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
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
            start_local(local, quiet=json_output)
            with progress_bar(True) as progress:
                result = local.score(protocol, cohort=cohort, progress=progress)
            receipts = local.verify_receipts(result)
        rows = write_scores(out, result)
    except (LocalSpaceError, *CLI_ERRORS) as exc:
        raise fail(exc, json_output) from exc
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
