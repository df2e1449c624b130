"""``trusted-space query train`` and ``trusted-space local train``: joint model training.

- ``query train``: the bank's staff train a logistic regression with the providers through their
  own node (:meth:`connectors.client.analyst.AnalystClient.submit_train`): ``--features
  PARTY=c1,c2``
  per party (the bank's own included), ``--label``, hyper-parameters, the model mode. Agreements
  and datasets are found among the node's agreements unless named. A progress bar follows the
  epochs (each with its held-out loss when ``--validation`` is set); the model file goes to
  ``--out`` (:mod:`trusted_space.queries.score` format).
- ``local train``: the same over local files through a throw-away real space
  (:func:`connectors.node.training.local_training`); the first ``--party`` holds the label; every
  other
  column but the id is a feature unless ``--features`` names them. The model file it writes is
  what ``local score --model`` takes.

``--json`` prints a summary: epochs, held-out losses, time per epoch, the model's SHA-256 and
where each node recorded it, and per provider its receipts (alignment and one per epoch), each
verified. A provider's refusal is printed with its policy trace; the exit code is then 1.
"""

from __future__ import annotations

import json
import time
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
from connectors.client.results import verify_train_receipts
from connectors.spaces.local import LocalSpaceError, parse_party
from connectors.spaces.local_train import local_training, train_local
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES
from trusted_space.queries.train import TrainParams

__all__ = ["local_train_command", "train_command"]

Epochs = Annotated[int, typer.Option(help="Epochs (at most; early stopping with --validation).")]
BatchSize = Annotated[int, typer.Option(help="Rows per mini-batch.")]
LearningRate = Annotated[float, typer.Option(help="Learning rate.")]
L2 = Annotated[float, typer.Option(help="L2 penalty (not on the intercept).")]
Validation = Annotated[
    float, typer.Option(help="Fraction the bank holds out for early stopping (0: none).")
]
Patience = Annotated[int, typer.Option(help="Epochs without improvement before stopping.")]
Seed = Annotated[int, typer.Option(help="Seed of the held-out split and the epoch orders.")]
Mode = Annotated[str, typer.Option(help="analyst-held | party-held")]
Out = Annotated[Path, typer.Option(help="Where to write the model file (JSON).")]


def _params(
    epochs: int,
    batch_size: int,
    learning_rate: float,
    l2: float,
    validation: float,
    patience: int,
    seed: int,
) -> TrainParams:
    return TrainParams(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        l2=l2,
        validation=validation,
        patience=patience,
        seed=seed,
    )


def _features(values: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for party, columns in pairs(values, "--features").items():
        out[party] = [c.strip() for c in columns.split(",") if c.strip()]
    return out


def _write_model(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result["model"], indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)


def _summary(result: dict[str, Any], out: Path) -> dict[str, Any]:
    epochs = result.get("timings", {}).get("epochs", [])
    seconds = [float(e["seconds"]) for e in epochs]
    return {
        "query": result.get("query"),
        "mode": result.get("mode"),
        "output": str(out),
        "cohort": result.get("cohort"),
        "trainRows": result.get("trainRows"),
        "validRows": result.get("validRows"),
        "epochsRun": result.get("epochsRun"),
        "bestEpoch": result.get("bestEpoch"),
        "losses": result.get("losses"),
        "secondsPerEpoch": sum(seconds) / len(seconds) if seconds else None,
        "modelSha256": result.get("modelSha256"),
        "records": result.get("records"),
        "timings": result.get("timings"),
    }


def _print(summary: dict[str, Any]) -> None:
    typer.echo(
        f"model written to {summary['output']} ({summary['mode']}, {summary['epochsRun']} epochs "
        f"over {summary['trainRows']} rows, {summary['secondsPerEpoch'] or 0:.2f} s per epoch)"
    )
    if summary["losses"]:
        typer.echo(f"  held-out loss per epoch: {[round(v, 4) for v in summary['losses']]}")
    typer.echo(f"  model sha256 {summary['modelSha256']}")
    for party, record in dict(summary.get("records") or {}).items():
        typer.echo(f"  {party}: recorded at ledger index {record['ledgerIndex']}")


@query_app.command("train")
def train_command(
    label: Annotated[str, typer.Option(help="Your label column (0/1).")],
    features: Annotated[
        list[str], typer.Option(help="PARTY=COL1,COL2 for every party, yours included.")
    ],
    out: Out,
    purpose: Annotated[str, typer.Option(help="The declared purpose.")] = "pre-loan-review",
    entities: Annotated[
        Path | None, typer.Option(help="CSV of your ids to align (default: all of your dataset).")
    ] = None,
    agreement: Annotated[
        list[str] | None, typer.Option(help="PROVIDER=AGREEMENT_ID (default: the one usable).")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="PARTY=DATASET_ID (e.g. your own dataset).")
    ] = None,
    mode: Mode = "analyst-held",
    compute_party: Annotated[
        str | None, typer.Option(help="The provider computing with you (default: the first).")
    ] = None,
    model_id: Annotated[str | None, typer.Option(help="The model's id.")] = None,
    missing: Annotated[str, typer.Option(help="fail | impute")] = "fail",
    id_kind: IdKindOpt = "opaque",
    id_column: Annotated[str | None, typer.Option(help="Id column of --entities.")] = None,
    epochs: Epochs = 10,
    batch_size: BatchSize = 256,
    learning_rate: LearningRate = 0.1,
    l2: L2 = 1e-3,
    validation: Validation = 0.0,
    patience: Patience = 2,
    seed: Seed = 0,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the result.")] = None,
    node: NodeOpt = None,
    node_dir: NodeDirOpt = None,
    token_file: TokenOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Train a logistic regression jointly with the providers, through your node."""
    check_choices(
        (
            (mode, MODES, "--mode"),
            (missing, MISSING_RULES, "--missing"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
    try:
        params = _params(epochs, batch_size, learning_rate, l2, validation, patience, seed)
        chosen = _features(features)
        with (
            analyst_client(node, node_dir, token_file) as client,
            progress_bar(True) as progress,
        ):
            me = client.participant_id
            providers = [p for p in chosen if p != me]
            found_agreements, found_datasets = client.resolve_agreements(
                providers, pairs(agreement, "--agreement")
            )
            datasets = {**found_datasets, **pairs(dataset, "--dataset")}
            if me not in datasets:
                datasets[me] = client.own_dataset([*chosen.get(me, []), label])
            doc: dict[str, Any] = {
                "purpose": purpose,
                "protocol": "additive",
                "mode": mode,
                "agreements": found_agreements,
                "datasets": datasets,
                "features": {p: chosen.get(p, []) for p in datasets},
                "label": label,
                "idKind": id_kind,
                "missing": missing,
                "params": params.to_json(),
            }
            if entities is not None:
                doc["entities"] = read_ids(entities, id_column)
            if compute_party is not None:
                doc["computeParty"] = compute_party
            if model_id is not None:
                doc["modelId"] = model_id
            view = client.submit_train(doc)
            result = follow_query(client, view, progress, timeout=timeout, json_output=json_output)
        _write_model(out, result)
    except CLI_ERRORS as exc:
        raise fail(exc, json_output) from exc
    summary = _summary(result, out)
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print(summary)


@local_app.command("train")
def local_train_command(
    party: Annotated[
        list[str], typer.Option(help="NAME=FILE (.csv or .parquet); the first holds the label.")
    ],
    id_column: IdColumnOpt,
    label: Annotated[str, typer.Option(help="The label column (0/1) of the first file.")],
    out: Out,
    features: Annotated[
        list[str] | None,
        typer.Option(help="NAME=COL1,COL2 (default: every column but the id and the label)."),
    ] = None,
    mode: Mode = "analyst-held",
    epochs: Epochs = 10,
    batch_size: BatchSize = 256,
    learning_rate: LearningRate = 0.1,
    l2: L2 = 1e-3,
    validation: Validation = 0.0,
    patience: Patience = 2,
    seed: Seed = 0,
    id_kind: IdKindOpt = "opaque",
    missing: MissingOpt = "fail",
    work_dir: WorkDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Train over local files through a real local space (first party = the bank), then stop."""
    check_choices(
        (
            (mode, MODES, "--mode"),
            (missing, MISSING_RULES, "--missing"),
            (id_kind, ID_KINDS, "--id-kind"),
        )
    )
    started = time.perf_counter()
    try:
        params = _params(epochs, batch_size, learning_rate, l2, validation, patience, seed)
        parties = [parse_party(p) for p in party]
        local = local_training(
            parties,
            id_column,
            label,
            features=_features(features) or None,
            id_kind=id_kind,
            missing=missing,
            work_dir=work_dir,
            keep=work_dir is not None,
        )
        with local:
            start_local(local, quiet=json_output)
            mark = time.perf_counter()
            with progress_bar(True) as progress:
                result = train_local(local, params, mode=mode, progress=progress)
            train_seconds = time.perf_counter() - mark
            receipts = verify_train_receipts(result, local.ledger_vkeys())
        _write_model(out, result)
    except (LocalSpaceError, *CLI_ERRORS) as exc:
        raise fail(exc, json_output) from exc
    summary = _summary(result, out)
    summary |= {
        "bank": parties[0].name,
        "providers": sorted(local.agreements),
        "agreements": dict(local.agreements),
        "receipts": receipts,
    }
    summary["timings"] = {
        "spaceUp": local.timings.get("spaceUp"),
        "negotiate": local.timings.get("negotiate"),
        "train": train_seconds,
        "phases": result.get("timings", {}),
        "total": time.perf_counter() - started,
    }
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print(summary)
        for p, rs in receipts.items():
            typer.echo(f"  {p}: {len(rs)} uses recorded (alignment and one per epoch), verified")
