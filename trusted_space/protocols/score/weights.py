"""Party-held weights: a provider stores the weights of its columns under a model id.

In ``party-held`` mode each provider scores with weights it keeps (namespace ``model``), put
there with :func:`store_party_weights` after joint training; the analyst never holds them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

import numpy as np

from trusted_space.errors import NotFoundError, ValidationError
from trusted_space.events import canonical_json, record_event
from trusted_space.store import Store

__all__ = ["MODEL_NAMESPACE", "load_party_weights", "store_party_weights"]

MODEL_NAMESPACE: Final = "model"
"""Provider store namespace of party-held weights (key: the model id)."""
# ----------------------------------------------------------------------------------------------
# Party-held weights
# ----------------------------------------------------------------------------------------------


def store_party_weights(store: Store, model_id: str, weights: Mapping[str, float]) -> None:
    """Store this provider's weights of a jointly trained model.

    Namespace ``model`` (key: the model id); ledger ``model.stored`` with the columns and the
    weights' SHA-256, never the weights.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValidationError("model id must be a non-empty string")
    if not weights:
        raise ValidationError("no weights")
    clean: dict[str, float] = {}
    for column, w in weights.items():
        if not isinstance(column, str) or not column:
            raise ValidationError(f"weights: bad column name {column!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w):
            raise ValidationError(f"weights.{column}: expected a finite number")
        clean[column] = float(w)
    with store.transaction() as tx:
        tx.put(MODEL_NAMESPACE, model_id, {"weights": clean})
        record_event(
            tx,
            "model.stored",
            {
                "model": model_id,
                "columns": list(clean),
                "sha256": hashlib.sha256(canonical_json(clean)).hexdigest(),
            },
        )


def load_party_weights(store: Store, model_id: str) -> dict[str, float]:
    """The weights stored under ``model_id`` (:class:`NotFoundError` if none)."""
    with store.transaction(readonly=True) as tx:
        doc = tx.get(MODEL_NAMESPACE, model_id)
    if doc is None:
        raise NotFoundError(f"no model {model_id!r} here")
    return {str(c): float(w) for c, w in doc.body["weights"].items()}
