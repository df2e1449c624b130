"""``trusted-space local train``: joint training over local files, through a throw-away space.

A :class:`~connectors.spaces.local.LocalSpace` whose first party holds the label, every other
file a provider; all numeric columns but the id (and the label) are features unless named. The
result's ``model`` is a model file in :mod:`trusted_space.queries.score` format (analyst-held),
which ``trusted-space local score`` takes as it is.

Raw magnitudes need nothing from the user: each party's node standardises its own columns over
the cohort and the released model comes back on the raw scale, in both modes
(:mod:`trusted_space.protocols.train.fold`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.client.analyst import QueryProgress
from connectors.node.sources import SourceSpec, open_source
from connectors.spaces.local import LOCAL_PURPOSE, LocalParty, LocalSpace
from trusted_space.errors import ValidationError
from trusted_space.queries.score import Link, Model
from trusted_space.queries.train import TrainParams

__all__ = [
    "file_features",
    "local_training",
    "train_local",
]


def file_features(party: LocalParty, exclude: Sequence[str]) -> tuple[str, ...]:
    """Every column of the party's file except ``exclude`` (the id, the label)."""
    names = open_source(SourceSpec(party.kind, str(party.path))).column_names()
    return tuple(c for c in names if c not in set(exclude))


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
    local = LocalSpace(parties, placeholder, id_column, label=label, kinds=("score", "train"), **kw)
    return local


def train_local(
    local: LocalSpace,
    params: TrainParams,
    *,
    mode: str = "analyst-held",
    compute_party: str | None = None,
    model_id: str | None = None,
    entities: Sequence[str] | None = None,
    progress: Callable[[QueryProgress], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Train from the local space's bank node; returns the result JSON.

    ``entities``: the bank's ids to train on (default: every id of its file).
    """
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
        "entities": list(entities) if entities is not None else local.entities(),
        "idKind": local.id_kind,
        "missing": local.missing,
        "params": params.to_json(),
    }
    if compute_party is not None:
        doc["computeParty"] = compute_party
    doc["modelId"] = model_id or f"{bank}-lr-{doc['id'].rsplit(':', 1)[-1][:8]}"
    with local.client(timeout=600.0) as client:
        view = client.submit_train(doc)
        result = client.wait(view["id"], progress=progress, timeout=timeout)
    return result
