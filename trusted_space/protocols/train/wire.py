"""The training messages as typed headers: ``train.deal`` (the dealer's) and ``train.*``.

Each message has ``to_header()`` (what the sender frames) beside ``from_header(header)`` (what
the receiver accepts), as in :mod:`trusted_space.protocols.score.wire`. Parsing is strict: a
missing or wrongly typed field is a :class:`~trusted_space.errors.ValidationError` naming it
(``header.<name>: ...``; a 4xx at the edge). Ranges that depend on the training the dealer
holds (its epochs, its batches) are given to ``from_header`` once the dealer found it.

Requests (a compute party → the operator): :class:`DealSeed` (``op: seed``, with the
:class:`DealerSpec` both parties declare) and :class:`DealMaterial` (``op: material``, party
1's derived material for some batches); :func:`deal_key` reads what both share. Replies
(the payload is the seed, or the packed material): :class:`SeedDealt`, :class:`MaterialDealt`.

The bank's :class:`TrainOpen` to each provider, with the replies :class:`TrainReceived` (a part
that was not the last) and :class:`TrainOpened`; then :class:`TrainEpoch` (:class:`EpochStarted`),
:class:`TrainFetch`, :class:`TrainStep` (:class:`StepDone`), :class:`TrainReveal`
(:class:`Revealed`), :class:`TrainFold` (:class:`Folded`), :class:`TrainFinish`
(:class:`ModelRecorded`) and :class:`TrainRef` (``train.intercept``, ``train.abort`` and their
replies); between parties :class:`TrainShare` (:class:`ShareReceived`), :class:`TrainWeights`
and :class:`TrainOffset` (replied with a :class:`TrainRef`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError, VerificationError
from trusted_space.protocols._common import header_float, header_int, header_str
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES
from trusted_space.queries.train import MAX_BATCH, MAX_COLUMNS, MAX_EPOCHS, MAX_ROWS, TrainParams

__all__ = [
    "DealMaterial",
    "DealSeed",
    "DealerSpec",
    "EpochStarted",
    "MaterialDealt",
    "ModelRecorded",
    "Revealed",
    "SeedDealt",
    "ShareReceived",
    "StepDone",
    "TrainEpoch",
    "TrainFetch",
    "Folded",
    "TrainFinish",
    "TrainFold",
    "TrainOffset",
    "TrainOpen",
    "TrainOpened",
    "TrainReceived",
    "TrainRef",
    "TrainReveal",
    "TrainShare",
    "TrainStep",
    "TrainWeights",
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


# ----------------------------------------------------------------------------------------------
# train.open (the bank → each provider)
# ----------------------------------------------------------------------------------------------


def _layout(header: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    value = header.get("layout")
    if not isinstance(value, list) or not 2 <= len(value) <= 257:
        raise ValidationError("header.layout: expected the column blocks of every party")
    out: list[tuple[str, int]] = []
    for item in value:
        if not isinstance(item, dict):
            raise ValidationError("header.layout: expected objects {party, columns}")
        party = check_participant_id(item.get("party"), "header.layout.party")
        out.append((party, header_int(item, "columns", 0, MAX_COLUMNS)))
    if len({p for p, _ in out}) != len(out):
        raise ValidationError("header.layout: a party appears twice")
    return tuple(out)


def _columns(header: Mapping[str, Any]) -> tuple[str, ...]:
    value = header.get("columns")
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_COLUMNS
        or not all(isinstance(c, str) and c for c in value)
        or len(set(value)) != len(value)
    ):
        raise ValidationError("header.columns: expected a list of distinct column names")
    return tuple(value)


@dataclass(frozen=True)
class TrainOpen:
    """``train.open``: the training as one provider needs it; the payload is the cohort's ids.

    The ids come in parts (the header of each is this plus the parts layer's ``part``,
    ``parts`` and ``total``); the provider reads the whole header at part 0 and only
    :meth:`key` after. ``layout`` is every party's column block, the bank first, then the
    compute party. Checks that need the provider (the space's operator, its own block, the
    sender) stay with the operation.
    """

    query: str
    protocol: str
    mode: str
    purpose: str
    agreement: str
    dataset: str
    columns: tuple[str, ...]
    id_kind: str
    missing: str
    operator: str
    compute_party: str
    layout: tuple[tuple[str, int], ...]
    params: TrainParams
    entities: int
    feature_bound: float
    model_id: str

    def to_header(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "protocol": self.protocol,
            "mode": self.mode,
            "purpose": self.purpose,
            "agreement": self.agreement,
            "dataset": self.dataset,
            "columns": list(self.columns),
            "idKind": self.id_kind,
            "missing": self.missing,
            "operator": self.operator,
            "computeParty": self.compute_party,
            "layout": [{"party": p, "columns": k} for p, k in self.layout],
            "params": self.params.to_json(),
            "entities": self.entities,
            "featureBound": self.feature_bound,
            "modelId": self.model_id,
        }

    @staticmethod
    def key(header: Mapping[str, Any]) -> str:
        """The query a part is for (checked)."""
        return header_str(header, "query")

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        query = cls.key(header)
        protocol = header_str(header, "protocol")
        if protocol != "additive":
            raise ValidationError("header.protocol: training runs on 'additive'")
        operator = header_str(header, "operator")
        mode = header_str(header, "mode")
        if mode not in MODES:
            raise ValidationError(f"header.mode: one of {list(MODES)}")
        id_kind = header_str(header, "idKind")
        missing = header_str(header, "missing")
        if id_kind not in ID_KINDS or missing not in MISSING_RULES:
            raise ValidationError("header.idKind / header.missing: unknown value")
        layout = _layout(header)
        compute = header_str(header, "computeParty")
        columns = _columns(header)
        params = TrainParams.from_json(header.get("params"))
        return cls(
            query=query,
            protocol=protocol,
            mode=mode,
            purpose=header_str(header, "purpose"),
            agreement=header_str(header, "agreement"),
            dataset=header_str(header, "dataset"),
            columns=columns,
            id_kind=id_kind,
            missing=missing,
            operator=operator,
            compute_party=compute,
            layout=layout,
            params=params,
            entities=header_int(header, "entities", 2, MAX_ROWS),
            feature_bound=header_float(header, "featureBound"),
            model_id=header_str(header, "modelId"),
        )


@dataclass(frozen=True)
class TrainReceived:
    """The reply to a ``train.open`` part that was not the last: parts received so far."""

    received: int

    def to_header(self) -> dict[str, Any]:
        return {"received": self.received}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "received", 1, 1 << 16))


@dataclass(frozen=True)
class TrainOpened:
    """The ``train.open`` reply: the training is open over ``entities`` ids."""

    query: str
    entities: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "entities": self.entities}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_int(header, "entities", 2, MAX_ROWS))


# ----------------------------------------------------------------------------------------------
# The rest of train.* (the bank → the providers and the compute party; between parties)
# ----------------------------------------------------------------------------------------------

_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class TrainRef:
    """Which training a message is for: ``train.abort`` and its reply."""

    query: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"))


@dataclass(frozen=True)
class TrainEpoch:
    """``train.epoch``: authorise and start epoch ``epoch`` (compute party: the schedule)."""

    query: str
    epoch: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "epoch": self.epoch}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], epochs: int) -> Self:
        """The message, for a training of at most ``epochs`` epochs."""
        return cls(header_str(header, "query"), header_int(header, "epoch", 1, epochs))


@dataclass(frozen=True)
class EpochStarted:
    """The ``train.epoch`` reply: the epoch's ``query.use`` receipt.

    At epoch 1 a sharing provider's reply is also the first part of its masked features (the
    parts layer's ``total`` and ``offset`` beside these keys; the rest by ``train.fetch``).
    """

    query: str
    epoch: int
    receipt: Mapping[str, Any]

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "epoch": self.epoch, "receipt": dict(self.receipt)}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str, epoch: int) -> Self:
        """The reply of ``provider`` for ``epoch`` (named in the errors).

        Raises:
            VerificationError: no receipt.
        """
        receipt = header.get("receipt")
        if not isinstance(receipt, dict):
            raise VerificationError(f"{provider} returned no receipt for epoch {epoch}")
        return cls(header_str(header, "query"), header_int(header, "epoch", 1, MAX_EPOCHS), receipt)


@dataclass(frozen=True)
class TrainShare:
    """``train.share`` (a provider → the compute party): the seed of its ``rows x columns`` mask.

    For ``analyst``'s training; the payload is the seed.
    """

    query: str
    analyst: str
    rows: int
    columns: int

    def to_header(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "analyst": self.analyst,
            "rows": self.rows,
            "columns": self.columns,
        }

    @staticmethod
    def key(header: Mapping[str, Any]) -> tuple[str, str]:
        """``(analyst, query)``: whose training the message is for (checked, in this order)."""
        analyst = check_participant_id(header.get("analyst"), "header.analyst")
        return analyst, header_str(header, "query")

    @classmethod
    def from_header(cls, header: Mapping[str, Any], rows: int, columns: int) -> Self:
        """The message of a provider whose block is ``rows x columns`` (exactly)."""
        analyst, query = cls.key(header)
        return cls(
            query,
            analyst,
            header_int(header, "rows", rows, rows),
            header_int(header, "columns", columns, columns),
        )


@dataclass(frozen=True)
class ShareReceived:
    """The ``train.share`` reply: providers that shared so far."""

    query: str
    received: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "received": self.received}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_int(header, "received", 1, 256))


@dataclass(frozen=True)
class TrainFetch:
    """``train.fetch``: the provider's masked features from ``offset`` (no payload)."""

    query: str
    offset: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "offset": self.offset}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], size: int) -> Self:
        """The message, for ``size`` bytes waiting to be fetched."""
        return cls(header_str(header, "query"), header_int(header, "offset", 0, size))


@dataclass(frozen=True)
class TrainStep:
    """``train.step`` (the bank → the compute party): step ``seq`` of ``epoch``'s rounds.

    The payload is the bank's packed messages; the reply's, the compute party's.
    """

    query: str
    epoch: int
    seq: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "epoch": self.epoch, "seq": self.seq}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_str(header, "query"),
            header_int(header, "epoch", 1, MAX_EPOCHS),
            header_int(header, "seq", 0, 1 << 40),
        )


@dataclass(frozen=True)
class StepDone:
    """The ``train.step`` reply: whether the compute party finished the epoch."""

    query: str
    done: bool

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "done": self.done}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        done = header.get("done")
        if not isinstance(done, bool):
            raise ValidationError("header.done: expected true or false")
        return cls(header_str(header, "query"), done)


@dataclass(frozen=True)
class TrainReveal:
    """``train.reveal`` (the bank → the compute party): its share of ``epoch``'s weights.

    Party-held, the payload is the bank's share of the compute party's own weights.
    """

    query: str
    epoch: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "epoch": self.epoch}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], epochs: int) -> Self:
        """The message, for a training that ran ``epochs`` epochs."""
        return cls(header_str(header, "query"), header_int(header, "epoch", 1, epochs))


@dataclass(frozen=True)
class Revealed:
    """The ``train.reveal`` reply (the payload is the share)."""

    query: str
    epoch: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "epoch": self.epoch}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_int(header, "epoch", 1, MAX_EPOCHS))


@dataclass(frozen=True)
class TrainWeights:
    """``train.weights`` (the compute party → a sharing provider, at the release).

    For ``analyst``'s training; the payload is the compute party's share of its weights.
    """

    query: str
    analyst: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "analyst": self.analyst}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        analyst = check_participant_id(header.get("analyst"), "header.analyst")
        return cls(header_str(header, "query"), analyst)


def _held_header(query: str, objects: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """``{"query": ...}`` plus the JSON objects that are set (analyst-held only)."""
    header: dict[str, Any] = {"query": query}
    header.update({name: dict(value) for name, value in objects.items() if value is not None})
    return header


def _held_objects(header: Mapping[str, Any], mode: str, *names: str) -> list[Any]:
    """The JSON objects ``names`` of an analyst-held message (``None`` in party-held mode)."""
    if mode != "analyst-held":
        return [None] * len(names)
    values = [header.get(name) for name in names]
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, dict):
            raise ValidationError(f"header.{name}: expected an object")
    return values


@dataclass(frozen=True)
class TrainFold:
    """``train.fold`` (the bank → each provider): fold its weights back to the raw scale.

    Sent to every provider, the compute party included (:mod:`trusted_space.protocols.train.fold`).
    The payload is the bank's share of the provider's weights (party-held) or that share masked
    (analyst-held); analyst-held, ``key`` is the bank's Paillier public key (JWK) and ``masks``
    the encrypted masks (a ``paillier.ciphertexts`` document).
    """

    query: str
    key: Mapping[str, Any] | None = None
    masks: Mapping[str, Any] | None = None

    def to_header(self) -> dict[str, Any]:
        return _held_header(self.query, {"key": self.key, "masks": self.masks})

    @classmethod
    def from_header(cls, header: Mapping[str, Any], mode: str) -> Self:
        """The message, for a training in ``mode`` (only analyst-held carries key and masks)."""
        return cls(header_str(header, "query"), *_held_objects(header, mode, "key", "masks"))


@dataclass(frozen=True)
class Folded:
    """The ``train.fold`` reply.

    Analyst-held, ``folded`` (the folded weights and the masked correction, encrypted under the
    bank's key); party-held, the payload is the bank's share of the provider's correction.
    """

    query: str
    folded: Mapping[str, Any] | None = None

    def to_header(self) -> dict[str, Any]:
        return _held_header(self.query, {"folded": self.folded})

    @classmethod
    def from_header(cls, header: Mapping[str, Any], mode: str) -> Self:
        return cls(header_str(header, "query"), *_held_objects(header, mode, "folded"))


@dataclass(frozen=True)
class TrainOffset(TrainWeights):
    """``train.offset`` (a provider → the compute party): a share of its correction.

    The compute party adds it (the payload) to its share of the intercept. For ``analyst``'s
    training; the same fields as :class:`TrainWeights`.
    """


@dataclass(frozen=True)
class TrainFinish:
    """``train.finish``: record the model; analyst-held, by the digest of its model file.

    Party-held there is no ``modelSha256`` (the payload is the bank's share of the weights).
    """

    query: str
    model_sha256: str | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"query": self.query}
        if self.model_sha256 is not None:
            header["modelSha256"] = self.model_sha256
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], mode: str) -> Self:
        """The message, for a training in ``mode`` (only analyst-held reads the digest)."""
        query = header_str(header, "query")
        if mode != "analyst-held":
            return cls(query)
        digest = header_str(header, "modelSha256")
        if len(digest) != 64 or not set(digest) <= _HEX:
            raise ValidationError("header.modelSha256: 64 lower-case hex digits")
        return cls(query, digest)


@dataclass(frozen=True)
class ModelRecorded:
    """The ``train.finish`` reply: the provider's ledger entry of the model (or its weights)."""

    query: str
    sha256: str
    ledger_index: int
    of: str

    def to_header(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "sha256": self.sha256,
            "ledgerIndex": self.ledger_index,
            "of": self.of,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the error)."""
        sha = header.get("sha256")
        index = header.get("ledgerIndex")
        of = header.get("of")
        if (
            not isinstance(sha, str)
            or isinstance(index, bool)
            or not isinstance(index, int)
            or of not in ("model", "weights")
        ):
            raise ValidationError(f"{provider} did not record the model")
        return cls(header_str(header, "query"), sha, index, str(of))
