"""Party-held weights: a provider keeps the weights of its columns, owned by one member.

In ``party-held`` mode each provider scores with weights it keeps (namespace ``model``), put
there with :func:`store_party_weights` after a joint training it took part in; the analyst never
holds them.

Why owned: a model id is the analyst's choice, so weights keyed by the id alone let a second
member score with the first member's model (and recover its weights by least squares from a few
scores), or train under the same id and silently replace them. Weights are therefore keyed by
(owner, model id): the owner is the member that trained them, only it can load them (another
member's id simply does not exist for it), and a stored model is never replaced — storing other
weights under the same (owner, id) is a :class:`ConflictError`.

With the weights the provider keeps what it measured of them on its own rows
(:func:`weight_stats`), which the policy's model rules (``modelMinColumns``, ``modelMaxWeight``,
``modelMaxShare``) are checked against at every use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from trusted_space.errors import ConflictError, NotFoundError, ValidationError
from trusted_space.events import canonical_json, record_event
from trusted_space.protocols.base import FloatArray
from trusted_space.store import Store

__all__ = [
    "MODEL_NAMESPACE",
    "PartyModel",
    "clean_weights",
    "load_party_weights",
    "model_key",
    "party_models",
    "store_party_weights",
    "weight_stats",
    "weights_digest",
]

MODEL_NAMESPACE: Final = "model"
"""Provider store namespace of party-held weights (key: :func:`model_key` of owner and id)."""

ModelSource = Literal["trained", "approved"]


def model_key(owner: str, model_id: str) -> str:
    """The store key of ``owner``'s model ``model_id`` (two members' ids never collide)."""
    return json.dumps([owner, model_id], separators=(",", ":"))


def weights_digest(weights: Mapping[str, float]) -> str:
    """SHA-256 (hex) of the canonical JSON of the weights (what ledgers record, never weights)."""
    return hashlib.sha256(canonical_json(dict(weights))).hexdigest()


@dataclass(frozen=True)
class PartyModel:
    """One member's party-held weights at this provider, and what the provider measured.

    Attributes:
        owner: the member that trained (or submitted) them; the only one that may use them.
        model_id: the owner's id for the model.
        weights: column -> weight, in the column order scores use.
        sha256: :func:`weights_digest` of the weights.
        source: ``trained`` (joint training) or ``approved`` (submitted, approved by staff).
        stats: :func:`weight_stats` on the provider's rows (``columns``, ``maxWeight``,
            ``maxShare``).
    """

    owner: str
    model_id: str
    weights: dict[str, float]
    sha256: str
    source: ModelSource
    stats: dict[str, float] = field(default_factory=dict)


def weight_stats(weights: Mapping[str, float], rows: Iterable[FloatArray]) -> dict[str, float]:
    """What the model rules are checked against, measured on the provider's own rows.

    ``columns``: how many columns carry a non-zero weight; ``maxWeight``: the largest |w_j|;
    ``maxShare``: the largest Var(w_j x_j) / Var(sum_j w_j x_j) over the rows (rows with a
    missing value are skipped). A partial with no variance counts as share 1.0 (it says nothing
    the rule could bound), and so does a column whose share exceeds the whole (correlated
    columns cancelling each other is how several columns are packed into one logit).

    Args:
        weights: column -> weight.
        rows: chunks of the dataset's values in the weights' column order (``n by k``).
    """
    w = np.array([float(v) for v in weights.values()], dtype=np.float64)
    k = w.size
    n = 0
    total = np.zeros(k)
    outer = np.zeros((k, k))
    for chunk in rows:
        x = np.asarray(chunk, dtype=np.float64).reshape(-1, k)
        x = x[~np.isnan(x).any(axis=1)]
        n += x.shape[0]
        total += x.sum(axis=0)
        outer += x.T @ x
    share = 1.0
    if n > 1:
        mean = total / n
        cov = (outer - n * np.outer(mean, mean)) / (n - 1)
        var_z = float(w @ cov @ w)
        if var_z > 1e-12 * max(1.0, float(np.max(np.abs(cov))) * float(w @ w)):
            per = (w**2) * np.clip(np.diag(cov), 0.0, None) / var_z
            share = min(1.0, float(np.max(per)))
    return {
        "columns": float(np.count_nonzero(w)),
        "maxWeight": float(np.max(np.abs(w))) if k else 0.0,
        "maxShare": share,
    }


def clean_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The weights as ``{column: float}``, checked (names non-empty, values finite)."""
    if not weights:
        raise ValidationError("no weights")
    clean: dict[str, float] = {}
    for column, w in weights.items():
        if not isinstance(column, str) or not column:
            raise ValidationError(f"weights: bad column name {column!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w):
            raise ValidationError(f"weights.{column}: expected a finite number")
        clean[column] = float(w)
    return clean


def store_party_weights(
    store: Store,
    owner: str,
    model_id: str,
    weights: Mapping[str, float],
    *,
    source: ModelSource = "trained",
    dataset: str | None = None,
    stats: Mapping[str, float] | None = None,
) -> PartyModel:
    """Store ``owner``'s weights of this provider's columns under ``model_id``, once.

    Namespace ``model`` (key: :func:`model_key`); ledger ``model.stored`` with the owner, the
    columns, the source and the weights' SHA-256, never the weights. Storing the same weights
    again is a no-op; other weights under the same (owner, id) are a :class:`ConflictError`
    (a model id names one set of weights for good: receipts and approvals refer to it).
    """
    for name, value in (("owner", owner), ("model id", model_id)):
        if not isinstance(value, str) or not value:
            raise ValidationError(f"{name} must be a non-empty string")
    if source not in ("trained", "approved"):
        raise ValidationError(f"model source must be 'trained' or 'approved', not {source!r}")
    clean = clean_weights(weights)
    digest = weights_digest(clean)
    model = PartyModel(owner, model_id, clean, digest, source, dict(stats or {}))
    with store.transaction() as tx:
        key = model_key(owner, model_id)
        prior = tx.get(MODEL_NAMESPACE, key)
        if prior is not None:
            if prior.body.get("sha256") == digest:
                return model
            raise ConflictError(
                f"model {model_id!r} of {owner!r} is already stored here with other weights; "
                "a model id names one set of weights (choose a new id)"
            )
        tx.put(
            MODEL_NAMESPACE,
            key,
            {
                "owner": owner,
                "model": model_id,
                "weights": clean,
                "sha256": digest,
                "source": source,
                "dataset": dataset,
                "stats": model.stats,
            },
        )
        record_event(
            tx,
            "model.stored",
            {
                "owner": owner,
                "model": model_id,
                "source": source,
                "dataset": dataset,
                "columns": list(clean),
                "sha256": digest,
            },
        )
    return model


def party_models(store: Store) -> list[PartyModel]:
    """Every party-held model stored here, by owner and id (for the provider's own staff)."""
    with store.transaction(readonly=True) as tx:
        docs = [doc.body for doc in tx.scan(MODEL_NAMESPACE)]
    return [_model_of(body) for body in docs if "owner" in body]


def load_party_weights(store: Store, owner: str, model_id: str) -> PartyModel:
    """``owner``'s model ``model_id`` (:class:`NotFoundError` if ``owner`` has none by that id).

    Another member's model of the same id is not found either: the answer never says whether
    someone else holds one.
    """
    with store.transaction(readonly=True) as tx:
        doc = tx.get(MODEL_NAMESPACE, model_key(owner, model_id))
    if doc is None:
        raise NotFoundError(f"no model {model_id!r} of yours here")
    return _model_of(doc.body)


def _model_of(body: Mapping[str, Any]) -> PartyModel:
    return PartyModel(
        owner=str(body["owner"]),
        model_id=str(body["model"]),
        weights={str(c): float(w) for c, w in body["weights"].items()},
        sha256=str(body["sha256"]),
        source="approved" if body.get("source") == "approved" else "trained",
        stats={str(k): float(v) for k, v in dict(body.get("stats") or {}).items()},
    )
