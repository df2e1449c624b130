"""The training dealer's message ``train.deal`` as typed headers: paired serde.

Each message has ``to_header()`` (what the sender frames) beside ``from_header(header)`` (what
the receiver accepts), as in :mod:`trusted_space.protocols.score.wire`. Parsing is strict: a
missing or wrongly typed field is a :class:`~trusted_space.errors.ValidationError` naming it
(``header.<name>: ...``; a 4xx at the edge). Ranges that depend on the training the dealer
holds (its epochs, its batches) are given to ``from_header`` once the dealer found it.

Requests (a compute party → the operator): :class:`DealSeed` (``op: seed``, with the
:class:`DealerSpec` both parties declare) and :class:`DealMaterial` (``op: material``, party
1's derived material for some batches); :func:`deal_key` reads what both share. Replies
(the payload is the seed, or the packed material): :class:`SeedDealt`, :class:`MaterialDealt`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import header_int, header_str
from trusted_space.queries.train import MAX_BATCH, MAX_COLUMNS, MAX_EPOCHS, MAX_ROWS

__all__ = [
    "DealMaterial",
    "DealSeed",
    "DealerSpec",
    "MaterialDealt",
    "SeedDealt",
    "deal_key",
]

_MAX_BATCHES: Final = 2 * MAX_ROWS
"""More batches than any training has (a bound for reading a reply)."""


def deal_key(header: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(session, analyst, op)`` of a ``train.deal`` message (checked)."""
    return header_str(header, "session"), header_str(header, "analyst"), header_str(header, "op")


@dataclass(frozen=True)
class DealerSpec:
    """The shapes both compute parties declare to the dealer (it checks they agree)."""

    n_train: int
    n_valid: int
    batch: int
    columns: int
    knots: int
    epochs: int

    def to_json(self) -> dict[str, int]:
        return {
            "nTrain": self.n_train,
            "nValid": self.n_valid,
            "batch": self.batch,
            "columns": self.columns,
            "knots": self.knots,
            "epochs": self.epochs,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        """The ``spec`` object of ``header``."""
        spec = header.get("spec")
        if not isinstance(spec, dict):
            raise ValidationError("header.spec: expected an object")
        return cls(
            n_train=header_int(spec, "nTrain", 1, MAX_ROWS),
            n_valid=header_int(spec, "nValid", 0, MAX_ROWS),
            batch=header_int(spec, "batch", 1, MAX_BATCH),
            columns=header_int(spec, "columns", 2, MAX_COLUMNS),
            knots=header_int(spec, "knots", 2, 16),
            epochs=header_int(spec, "epochs", 1, MAX_EPOCHS),
        )


@dataclass(frozen=True)
class DealSeed:
    """``train.deal`` with ``op: seed``: the sender's seed, for the training of ``parties``.

    ``parties`` are the analyst (party 0) and the compute party (party 1). No payload.
    """

    session: str
    analyst: str
    parties: tuple[str, str]
    spec: DealerSpec

    def to_header(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "analyst": self.analyst,
            "op": "seed",
            "parties": list(self.parties),
            "spec": self.spec.to_json(),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        session, analyst, op = deal_key(header)
        if op != "seed":
            raise ValidationError("header.op: 'seed' or 'material'")
        value = header.get("parties")
        if not isinstance(value, list) or len(value) != 2 or value[0] != analyst:
            raise ValidationError("header.parties: [analyst, compute party]")
        first, second = (check_participant_id(p, "header.parties") for p in value)
        if first == second:
            raise ValidationError("header.parties: two distinct parties")
        return cls(session, analyst, (first, second), DealerSpec.from_header(header))


@dataclass(frozen=True)
class DealMaterial:
    """``train.deal`` with ``op: material``: ``count`` batches from ``first`` of ``epoch``."""

    session: str
    analyst: str
    epoch: int
    first: int
    count: int

    def to_header(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "analyst": self.analyst,
            "op": "material",
            "epoch": self.epoch,
            "first": self.first,
            "count": self.count,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], epochs: int, batches: int) -> Self:
        """The message, for a training of ``epochs`` epochs of ``batches`` batches each."""
        session, analyst, op = deal_key(header)
        if op != "material":
            raise ValidationError("header.op: 'seed' or 'material'")
        epoch = header_int(header, "epoch", 1, epochs)
        first = header_int(header, "first", 0, batches - 1)
        count = header_int(header, "count", 1, batches - first)
        return cls(session, analyst, epoch, first, count)


@dataclass(frozen=True)
class SeedDealt:
    """The reply to :class:`DealSeed`: the receiver's party index (the payload is its seed)."""

    party: int

    def to_header(self) -> dict[str, Any]:
        return {"party": self.party}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], party: int) -> Self:
        """The reply to party ``party`` (refused, naming it, if it is another's)."""
        if header.get("party") != party or isinstance(header.get("party"), bool):
            raise ValidationError(f"the dealer sent no seed for party {party}")
        return cls(party)


@dataclass(frozen=True)
class MaterialDealt:
    """The reply to :class:`DealMaterial`: which batches the payload's material is for."""

    epoch: int
    first: int
    count: int

    def to_header(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "first": self.first, "count": self.count}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_int(header, "epoch", 1, MAX_EPOCHS),
            header_int(header, "first", 0, _MAX_BATCHES),
            header_int(header, "count", 1, _MAX_BATCHES),
        )
