"""Joint training run from the bank's node, and over local files through a throw-away space.

The core (:mod:`trusted_space.protocols.train`) trains vertical logistic regression by two-party
secure SGD; this module is what a node and the CLI add around it:

- :func:`prepare_train`: checks a training submitted to the bank's admin API
  (``POST /management/queries/train``) before it is queued: the node is a consumer, the bank in
  the query is this node, its dataset is published here with the feature and label columns.
  Without ``entities`` the node trains on every id of its own dataset.
- :func:`train_job`: what the node's query worker runs
(:class:`connectors.node.queries.QueryRunner`):
  the driver over the node's HTTP transport, its own data and store (the model's hash goes to its
  ledger), receipts checked against the providers' ledger keys as registered at the operator,
  progress per epoch.
- :func:`local_training` / :func:`train_local`: ``trusted-space local train`` — a
  :class:`~connectors.spaces.local.LocalSpace` whose first party holds the label, every other file a
  provider; all numeric columns but the id (and the label) are features unless named. The
  result's ``model`` is a model file in :mod:`trusted_space.queries.score` format (analyst-held),
  which
  ``trusted-space local score`` takes as it is.

Threats: as for scores — the bank's staff reach their node only with its admin token; the node
holds the training's secret shares and seed in the worker running it; nothing of a provider's
features or the label is in a result (only the weights the mode releases, receipts and hashes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from connectors.node.compute import compute_node
from connectors.node.runtime import NodeRuntime
from trusted_space.catalog import load_dataset
from trusted_space.errors import NotFoundError, NotReadyError, ValidationError
from trusted_space.protocols.train import run_train
from trusted_space.queries.train import TrainQuery

__all__ = [
    "prepare_train",
    "train_job",
]


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
            raise NotReadyError(f"{runtime.id} has no data access")
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
        raise NotReadyError(f"{runtime.id} has no operator anchor")
    node = compute_node(runtime)
    if node.transport is None or node.data is None:  # pragma: no cover - set for consumers
        raise NotReadyError("no transport or data access")
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
