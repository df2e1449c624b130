"""Joint training run from the bank's node, and over local files through a throw-away space.

The core (:mod:`trusted_space.protocols.train`) trains vertical logistic regression by two-party
secure SGD; this module is what a node and the CLI add around it:

- :func:`prepare_train`: checks a training submitted to the bank's admin API
  (``POST /management/queries/train``) before it is queued: the node is a consumer, the bank in
  the query is this node, its dataset is published here with the feature and label columns.
  Without ``entities`` the node trains on every id of its own dataset.
- :func:`train_job`: what the node's query worker runs (:class:`connectors.queries.QueryRunner`):
  the driver over the node's HTTP transport, its own data and store (the model's hash goes to its
  ledger), receipts checked against the providers' ledger keys as registered at the operator,
  progress per epoch.
- :func:`local_training` / :func:`train_local`: ``trusted-space local train`` — a
  :class:`~connectors.local.LocalSpace` whose first party holds the label, every other file a
  provider; all numeric columns but the id (and the label) are features unless named. The
  result's ``model`` is a model file in :mod:`trusted_space.query` format (analyst-held), which
  ``trusted-space local score`` takes as it is.

Threats: as for scores — the bank's staff reach their node only with its admin token; the node
holds the training's secret shares and seed in the worker running it; nothing of a provider's
features or the label is in a result (only the weights the mode releases, receipts and hashes).
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from connectors.analyst import QueryProgress
from connectors.compute_wiring import compute_node
from connectors.local import LOCAL_PURPOSE, LocalParty, LocalSpace, receipt_summary
from connectors.problems import NotReady
from connectors.runtime import NodeRuntime
from connectors.sources import SourceSpec, open_source
from trusted_space.catalog import load_dataset
from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.ledger import verify_receipt
from trusted_space.protocols.train import TrainParams, TrainQuery, run_train
from trusted_space.query import Link, Model

__all__ = [
    "MAX_FEATURE_BOUND",
    "feature_bound",
    "file_features",
    "local_training",
    "prepare_train",
    "train_job",
    "train_local",
    "verify_train_receipts",
]

MAX_FEATURE_BOUND: Final = 65536.0
"""The largest ``|x|`` a training accepts (standardise features beyond it)."""
_SCAN_ROWS: Final = 100_000


def prepare_train(runtime: NodeRuntime, doc: Mapping[str, Any]) -> TrainQuery:
    """Parse and check a training before it is queued (``ValidationError`` naming the path)."""
    if "consumer" not in runtime.roles:
        raise ValidationError(f"{runtime.id} is not a consumer: it does not run joint training")
    body = dict(doc)
    datasets = body.get("datasets")
    own = datasets.get(runtime.id) if isinstance(datasets, Mapping) else None
    if not isinstance(own, str):
        raise ValidationError(f"$.datasets.{runtime.id}: name this node's dataset with the label")
    with runtime.transaction(readonly=True) as tx:
        try:
            table = load_dataset(tx, own).dataset.table
        except NotFoundError as exc:
            raise ValidationError(f"$.datasets.{runtime.id}: no dataset {own!r} here") from exc
    if "entities" not in body:
        data = compute_node(runtime).data
        if data is None:  # pragma: no cover - a consumer always has data access
            raise NotReady(f"{runtime.id} has no data access")
        body["entities"] = [
            k for keys, _ in data.scan(own, [], chunk_rows=_SCAN_ROWS) for k in keys
        ]
    query = TrainQuery.from_json(body)
    if query.bank != runtime.id:
        raise ValidationError(
            f"$.datasets: the dataset without an agreement must be {runtime.id}'s"
        )
    for column in (*query.features[runtime.id], query.label):
        try:
            table.field(column)
        except ValidationError as exc:
            raise ValidationError(f"$.features.{runtime.id}: {exc}") from exc
    return query


def train_job(
    runtime: NodeRuntime,
    query: TrainQuery,
    vkeys: Mapping[str, str],
    progress: Callable[[str, float], None],
) -> dict[str, Any]:
    """Run ``query`` from the node as the bank; the result JSON (model, losses, receipts)."""
    anchor = runtime.anchor
    if anchor is None:
        raise NotReady(f"{runtime.id} has no operator anchor")
    node = compute_node(runtime)
    if node.transport is None or node.data is None:  # pragma: no cover - set for consumers
        raise NotReady("no transport or data access")
    result = run_train(
        node.transport,
        runtime.id,
        anchor.operator_id,
        query,
        analyst_data=node.data,
        analyst_store=runtime.store,
        provider_vkeys=vkeys,
        progress=progress,
    )
    return result.to_json()


# -- local files ------------------------------------------------------------------------------


def file_features(party: LocalParty, exclude: Sequence[str]) -> tuple[str, ...]:
    """Every column of the party's file except ``exclude`` (the id, the label)."""
    names = open_source(SourceSpec(party.kind, str(party.path))).column_names()
    return tuple(c for c in names if c not in set(exclude))


def feature_bound(
    parties: Sequence[LocalParty], id_column: str, features: Mapping[str, Sequence[str]]
) -> float:
    """A power of two above every feature value of the files (the query's ``featureBound``).

    Raises:
        ValidationError: a value beyond :data:`MAX_FEATURE_BOUND` (standardise it first).
    """
    worst = 1.0
    for p in parties:
        columns = list(features.get(p.name, ()))
        if not columns:
            continue
        source = open_source(SourceSpec(p.kind, str(p.path)))
        for chunk in source.chunks(id_column, columns):
            for c in columns:
                values = chunk.columns[c]
                if len(values):
                    worst = max(worst, float(abs(values).max()))
    bound = float(2 ** math.ceil(math.log2(worst * 1.01)))
    if bound > MAX_FEATURE_BOUND:
        raise ValidationError(
            f"feature values reach {worst:g}: standardise them (at most {MAX_FEATURE_BOUND:g})"
        )
    return bound


def local_training(
    parties: Sequence[LocalParty],
    id_column: str,
    label: str,
    *,
    features: Mapping[str, Sequence[str]] | None = None,
    **kw: Any,
) -> LocalSpace:
    """A :class:`LocalSpace` set up for training: the first party holds ``label``.

    Each party publishes its feature columns (``features[name]``, default every column but the
    id and the label) and the bank also its label; offers permit ``score`` and ``train``.
    """
    if not parties:
        raise ValidationError("no parties")
    chosen: dict[str, tuple[str, ...]] = {}
    for i, p in enumerate(parties):
        given = (features or {}).get(p.name)
        cols = tuple(given) if given is not None else file_features(p, [id_column, label])
        if i == 0 and label in cols:
            raise ValidationError(f"--label {label!r} cannot also be a feature")
        chosen[p.name] = cols
    placeholder = Model(
        0.0,
        Link("logistic"),
        tuple((p, tuple((c, 0.0) for c in cols)) for p, cols in chosen.items() if cols),
    )
    return LocalSpace(parties, placeholder, id_column, label=label, kinds=("score", "train"), **kw)


def train_local(
    local: LocalSpace,
    params: TrainParams,
    *,
    mode: str = "analyst-held",
    compute_party: str | None = None,
    model_id: str | None = None,
    progress: Callable[[QueryProgress], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train from the local space's bank node; returns the result JSON."""
    if local.label is None:
        raise ValidationError("the local space was not set up for training (no label)")
    bank = local.analyst.name
    features = {p.name: list(local.model.columns(p.name)) for p in local.parties}
    doc: dict[str, Any] = {
        "id": f"urn:uuid:{uuid.uuid4()}",
        "purpose": LOCAL_PURPOSE,
        "protocol": "additive",
        "mode": mode,
        "agreements": dict(local.agreements),
        "datasets": {p.name: p.dataset_id for p in local.parties},
        "features": features,
        "label": local.label,
        "entities": local.entities(),
        "idKind": local.id_kind,
        "missing": local.missing,
        "featureBound": feature_bound(local.parties, local.id_column, features),
        "params": params.to_json(),
    }
    if compute_party is not None:
        doc["computeParty"] = compute_party
    doc["modelId"] = model_id or f"{bank}-lr-{doc['id'].rsplit(':', 1)[-1][:8]}"
    with local.client(timeout=600.0) as client:
        view = client.submit_train(doc)
        return client.wait(view["id"], progress=progress, timeout=timeout)


def verify_train_receipts(
    result: Mapping[str, Any], vkeys: Mapping[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Every receipt of a training (alignment, then one per epoch), verified against ``vkeys``.

    Returns:
        provider → receipt summaries (:func:`connectors.local.receipt_summary`), each verified.

    Raises:
        VerificationError: a receipt does not verify.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for provider, entry in dict(result.get("receipts", {})).items():
        receipts = [entry["align"], *entry.get("epochs", [])]
        summaries = []
        for receipt in receipts:
            summary = receipt_summary(dict(receipt), vkeys.get(provider))
            verify_receipt(
                summary["checkpoint"],
                summary["vkey"],
                base64.b64decode(summary["entry"]),
                summary["leafIndex"],
                [bytes.fromhex(h) for h in summary["inclusionPath"]],
            )
            summaries.append(summary | {"verified": True})
        out[provider] = summaries
    return out
