"""What the bank's driver and the parties' operations share: digests, dealer shapes, checks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

import numpy as np

from trusted_space.errors import ConflictError
from trusted_space.events import canonical_json
from trusted_space.protocols.train.reference import FloatArray, Ring
from trusted_space.protocols.train.wire import DealerSpec
from trusted_space.queries.score import Model
from trusted_space.queries.train import TrainParams

__all__ = ["check_weights", "dealer_spec", "model_sha256", "weight_block", "weights_sha256"]

_MAX_WEIGHT: Final = 1e6


def model_sha256(model: Model) -> str:
    """SHA-256 (hex) of the canonical JSON of a model file (what the ledgers record)."""
    return hashlib.sha256(canonical_json(model.to_json())).hexdigest()


def weights_sha256(weights: Mapping[str, float]) -> str:
    """The digest :func:`~trusted_space.protocols.score.store_party_weights` records."""
    return hashlib.sha256(canonical_json({c: float(w) for c, w in weights.items()})).hexdigest()


def dealer_spec(n_train: int, n_valid: int, params: TrainParams, columns: int) -> DealerSpec:
    """The shapes both compute parties declare to the dealer (it checks they agree)."""
    return DealerSpec(
        n_train=n_train,
        n_valid=n_valid,
        batch=params.batch_size,
        columns=columns,
        knots=len(params.knots),
        epochs=params.epochs,
    )


def check_weights(values: FloatArray) -> FloatArray:
    """Refuse to release weights a failed truncation made absurd (``ConflictError``)."""
    if not np.all(np.isfinite(values)) or (
        values.size and float(np.max(np.abs(values))) > _MAX_WEIGHT
    ):
        raise ConflictError(
            "the trained weights are out of range (a fixed-point truncation failed, probability "
            "about 1e-3 per training); nothing was released: rerun"
        )
    return values


def weight_block(w: Ring, bounds: tuple[int, int]) -> Ring:
    """The shares of the weights ``bounds`` (``[start, end)``), contiguous for packing."""
    return np.ascontiguousarray(w[bounds[0] : bounds[1]])
