"""The operator's part in joint computations: a key-less aggregator and the Beaver-triple dealer.

**Aggregator** (DESIGN §8, docs/protocols.md). Each provider sends its encrypted (Paillier, CKKS) or
secret-shared (additive) partial *directly* to the operator, never to the analyst; the operator
sums them per block and releases only the complete sum, only to the analyst that opened the
aggregation, only once. It holds no decryption key, so it learns ciphertexts or uniformly random
ring elements only. Operations:

- ``aggregate.open`` (analyst): header ``{query, codec, contributors, counts, params}``, payload
  the public material the codec needs (a Paillier public key, a CKKS public context). Keyed by
  ``(analyst, query)``: nobody else can open, feed or take that aggregation by guessing its id.
- ``aggregate.add`` (provider): header ``{query, analyst, contributors, block, count}``, payload one
  block of the provider's partial. Refused unless the sender is one of the declared contributors,
  the contributor list it was told equals the declared one (so an analyst cannot give a provider
  an aggregation with fewer contributors than it claimed), the block and count match, and the
  sender has not contributed this block yet.
- ``aggregate.take`` (analyst): header ``{query, block}``; returns the block's sum once every
  contributor added it. The release is recorded in the operator's store (and ledger,
  ``aggregate.released``) before the sum is returned, so it happens at most once, even across
  restarts; sums themselves live in memory (a restart loses an unfinished aggregation; it is
  never released partially).

Codecs (how a block is parsed, added and written back) are registered by name in
:data:`AGGREGATE_CODECS`: ``paillier.packed``, ``paillier.vector``, ``ckks.vector``, ``ring64``.

**Dealer** (``dealer.triple``): header ``{session, batch, parties, left, right}``. The first call
for ``(session, batch)`` makes a matrix Beaver triple for ``parties`` (2 or more participant ids;
a party's index is its position) with :class:`crypto.sharing.TripleDealer`; every party gets its
own share at most once. The dealt record (who received which batch) is written to the operator's
store *before* a share is returned, so a restart cannot deal the same batch again; undealt shares
live in memory only, so after a restart the remaining party is refused and must use a new batch.
The dealer sees only its own randomness, never data or openings (it must not collude with a
party: DESIGN §10).

Every header above is a typed message of :mod:`trusted_space.protocols.operator_wire`
(``to_header`` at the sender, ``from_header`` here).
"""

from __future__ import annotations

import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np

from crypto import ckks, paillier, sharing
from crypto.errors import TripleReuseError
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.errors import ConflictError, NotFoundError, ValidationError
from trusted_space.events import record_event
from trusted_space.protocols._common import (
    crypto_errors,
    header_int,
    loaded_ckks_context,
    ring_from_bytes,
    ring_to_bytes,
)
from trusted_space.protocols.compare import AND_WORDS, deal_and_triples
from trusted_space.protocols.operator_wire import (
    AggregateAdd,
    AggregateAdded,
    AggregateOpen,
    AggregateOpened,
    AggregateTake,
    AggregateTaken,
    BitsDealt,
    DealerBits,
    DealerTriple,
    TripleDealt,
)
from trusted_space.transport import Reply, Transport

__all__ = [
    "AGGREGATE_BLOCK_NAMESPACE",
    "AGGREGATE_CODECS",
    "AGGREGATE_NAMESPACE",
    "DEALER_NAMESPACE",
    "AggregateCodec",
    "CkksVectorCodec",
    "PaillierPackedCodec",
    "PaillierVectorCodec",
    "Ring64Codec",
    "add_to_aggregate",
    "fetch_and_triples",
    "fetch_triple",
    "open_aggregation",
    "register_operator",
    "take_aggregate",
]

AGGREGATE_NAMESPACE: Final = "aggregate"
AGGREGATE_BLOCK_NAMESPACE: Final = "aggregate.block"
DEALER_NAMESPACE: Final = "dealer.batch"
_AGG_SESSION: Final = "#aggregate"  # not a participant id: no caller can collide with it
_DEALER_SESSION: Final = "#dealer"


# ----------------------------------------------------------------------------------------------
# Codecs
# ----------------------------------------------------------------------------------------------


class AggregateCodec(ABC):
    """How one kind of block is loaded, summed and written back at the aggregator."""

    @abstractmethod
    def load(self, payload: bytes, count: int) -> Any:
        """Parse and validate one contribution of ``count`` values."""

    @abstractmethod
    def add(self, a: Any, b: Any) -> Any:
        """The sum of two loaded contributions."""

    @abstractmethod
    def dump(self, value: Any) -> bytes:
        """The wire form of a sum."""


class PaillierPackedCodec(AggregateCodec):
    """Packed Paillier ciphertexts.

    Params ``{"layout": PackingLayout.to_json()}``; material the analyst's public key (JWK).
    """

    def __init__(self, params: Mapping[str, Any], material: bytes) -> None:
        with crypto_errors("paillier aggregation parameters"):
            self.public_key = paillier.PaillierPublicKey.from_jwk(material)
            layout = params.get("layout")
            if not isinstance(layout, dict):
                raise ValidationError("params.layout: expected an object")
            try:
                self.layout = paillier.PackingLayout(**layout)
            except TypeError as exc:
                raise ValidationError(f"params.layout: {exc}") from exc
            self._engine = paillier.PaillierEngine(self.public_key, workers=0)

    def load(self, payload: bytes, count: int) -> paillier.PackedCiphertexts:
        with crypto_errors("packed paillier contribution"):
            packed = paillier.PackedCiphertexts.load(payload, self.public_key, self.layout)
        if packed.count != count:
            raise ValidationError(f"contribution holds {packed.count} values, not {count}")
        return packed

    def add(self, a: Any, b: Any) -> paillier.PackedCiphertexts:
        with crypto_errors("packed paillier sum"):
            return self._engine.add_packed(a, b)

    def dump(self, value: Any) -> bytes:
        return bytes(value.serialize())


class PaillierVectorCodec(AggregateCodec):
    """Unpacked Paillier ciphertexts; params ``{"exponent": e}``, material the public key."""

    def __init__(self, params: Mapping[str, Any], material: bytes) -> None:
        with crypto_errors("paillier aggregation parameters"):
            self.public_key = paillier.PaillierPublicKey.from_jwk(material)
        self.exponent = header_int(params, "exponent", -1024, 0)
        self._engine = paillier.PaillierEngine(self.public_key, workers=0)

    def load(self, payload: bytes, count: int) -> paillier.CiphertextVector:
        with crypto_errors("paillier contribution"):
            ct = paillier.CiphertextVector.load(payload, self.public_key, exponent=self.exponent)
        if len(ct) != count:
            raise ValidationError(f"contribution holds {len(ct)} values, not {count}")
        return ct

    def add(self, a: Any, b: Any) -> paillier.CiphertextVector:
        with crypto_errors("paillier sum"):
            return self._engine.add(a, b)

    def dump(self, value: Any) -> bytes:
        return bytes(value.serialize())


class CkksVectorCodec(AggregateCodec):
    """CKKS vectors; material the analyst's *public* context (a secret one is refused)."""

    def __init__(self, params: Mapping[str, Any], material: bytes) -> None:
        # A standing session sends the same context with every run: loaded once per process.
        loaded = loaded_ckks_context(material)
        self.context, self._lock = loaded.context, loaded.lock
        preset = params.get("preset")
        if preset is not None and preset != self.context.preset.name:
            raise ValidationError(f"params.preset {preset!r} is not the context's")

    def load(self, payload: bytes, count: int) -> ckks.EncryptedVector:
        with crypto_errors("ckks contribution"), self._lock:
            vector = self.context.load_vector(payload)
        if vector.length != count or vector.replicated:
            raise ValidationError(f"contribution is not a vector of {count} values")
        return vector

    def add(self, a: Any, b: Any) -> ckks.EncryptedVector:
        with crypto_errors("ckks sum"), self._lock:
            return ckks.add(a, b)

    def dump(self, value: Any) -> bytes:
        with self._lock:
            return bytes(value.serialize())


class Ring64Codec(AggregateCodec):
    """Additive shares: little-endian u64 vectors summed mod 2^64; no params, no material."""

    def __init__(self, params: Mapping[str, Any], material: bytes) -> None:
        if material:
            raise ValidationError("ring64 aggregation takes no material")

    def load(self, payload: bytes, count: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
        return ring_from_bytes(payload, count)

    def add(self, a: Any, b: Any) -> np.ndarray[Any, np.dtype[np.uint64]]:
        return np.asarray(np.add(a, b, dtype=np.uint64), dtype=np.uint64)

    def dump(self, value: Any) -> bytes:
        return ring_to_bytes(value)


AGGREGATE_CODECS: Final[Mapping[str, Callable[[Mapping[str, Any], bytes], AggregateCodec]]] = {
    "paillier.packed": PaillierPackedCodec,
    "paillier.vector": PaillierVectorCodec,
    "ckks.vector": CkksVectorCodec,
    "ring64": Ring64Codec,
}
"""Aggregation codecs by name (the ``codec`` of ``aggregate.open``)."""


# ----------------------------------------------------------------------------------------------
# Aggregator operations
# ----------------------------------------------------------------------------------------------


def _agg_key(analyst: str, query: str) -> str:
    return f"{analyst}/{query}"


def _block_key(analyst: str, query: str, block: int) -> str:
    return f"{analyst}/{query}/{block:06d}"


def _aggregate_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    message = AggregateOpen.from_header(header)
    query, codec_name, contributors = message.query, message.codec, message.contributors
    counts, params = list(message.counts), dict(message.params)
    factory = AGGREGATE_CODECS.get(codec_name)
    if factory is None:
        raise ValidationError(f"header.codec: unknown codec {codec_name!r}")
    codec = factory(params, payload)
    key = _agg_key(ctx.sender, query)
    with node.store.transaction() as tx:
        tx.insert(
            AGGREGATE_NAMESPACE,
            key,
            {
                "analyst": ctx.sender,
                "query": query,
                "codec": codec_name,
                "contributors": list(contributors),
                "counts": counts,
                "params": params,
                "recipient": message.recipient,
                "material_sha256": hashlib.sha256(payload).hexdigest(),
            },
        )
        record_event(
            tx,
            "aggregate.opened",
            {
                "analyst": ctx.sender,
                "query": query,
                "codec": codec_name,
                "contributors": list(contributors),
                "blocks": len(counts),
            },
        )
    state = node.sessions.open(_AGG_SESSION, key)
    state.update({"codec": codec, "sums": {}, "lock": threading.Lock()})
    return Reply(AggregateOpened(len(counts)).to_header())


def _load_aggregation(ctx: CallContext, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with ctx.node.store.transaction(readonly=True) as tx:
        doc = tx.get(AGGREGATE_NAMESPACE, key)
    if doc is None:
        raise NotFoundError("no such aggregation")
    try:
        state = ctx.node.sessions.get(_AGG_SESSION, key)
    except NotFoundError as exc:
        raise ConflictError("the aggregation's sums were lost (operator restart); rerun") from exc
    return doc.body, state


def _aggregate_add(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query, analyst = AggregateAdd.key(header)
    key = _agg_key(analyst, query)
    record, state = _load_aggregation(ctx, key)
    if ctx.sender not in record["contributors"]:
        raise ConflictError(f"{ctx.sender} is not a contributor of this aggregation")
    counts: list[int] = record["counts"]
    message = AggregateAdd.from_header(header, counts)
    if list(message.contributors) != record["contributors"]:
        raise ConflictError("the contributors named by the provider differ from the aggregation's")
    if message.recipient != record.get("recipient"):
        raise ConflictError("the recipient named by the provider differs from the aggregation's")
    block, count = message.block, message.count
    codec: AggregateCodec = state["codec"]
    value = codec.load(payload, count)
    with state["lock"]:
        bkey = _block_key(analyst, query, block)
        with ctx.node.store.transaction() as tx:
            doc = tx.get(AGGREGATE_BLOCK_NAMESPACE, bkey)
            contributed: list[str] = list(doc.body["contributed"]) if doc else []
            if ctx.sender in contributed:
                raise ConflictError(f"{ctx.sender} already contributed block {block}")
            if doc is not None and doc.body["released"]:
                raise ConflictError(f"block {block} was already released")
            current = state["sums"].get(block)
            total = value if current is None else codec.add(current, value)
            contributed = sorted([*contributed, ctx.sender])
            tx.put(
                AGGREGATE_BLOCK_NAMESPACE,
                bkey,
                {"contributed": contributed, "released": False},
                expect_version=doc.version if doc else 0,
            )
        state["sums"][block] = total
    return Reply(AggregateAdded(block, len(contributed)).to_header())


def _aggregate_take(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query, named = AggregateTake.key(header)
    analyst = named or ctx.sender  # only the analyst that opened it finds it unless named
    key = _agg_key(analyst, query)
    record, state = _load_aggregation(ctx, key)
    if record.get("recipient", None) != (None if named is None else ctx.sender):
        # A band release's sums go to its recipient only; an ordinary one's to the analyst.
        raise NotFoundError("no such aggregation")
    counts: list[int] = record["counts"]
    block = AggregateTake.from_header(header, len(counts)).block
    bkey = _block_key(analyst, query, block)
    with state["lock"]:
        with ctx.node.store.transaction() as tx:
            doc = tx.get(AGGREGATE_BLOCK_NAMESPACE, bkey)
            contributed = doc.body["contributed"] if doc else []
            if doc is not None and doc.body["released"]:
                raise ConflictError(f"block {block} of this aggregation was already released")
            if contributed != record["contributors"]:
                raise ConflictError(
                    f"block {block} is incomplete: {len(contributed)} of "
                    f"{len(record['contributors'])} contributors"
                )
            total = state["sums"].get(block)
            if total is None:
                raise ConflictError("the block's sum was lost (operator restart); rerun")
            tx.put(
                AGGREGATE_BLOCK_NAMESPACE,
                bkey,
                {"contributed": contributed, "released": True},
                expect_version=doc.version if doc else 0,
            )
            record_event(
                tx,
                "aggregate.released",
                {
                    "analyst": analyst,
                    "query": query,
                    "block": block,
                    "contributors": contributed,
                    "to": ctx.sender,
                },
            )
        del state["sums"][block]
    codec: AggregateCodec = state["codec"]
    return Reply(AggregateTaken(block, counts[block]).to_header(), codec.dump(total))


# ----------------------------------------------------------------------------------------------
# Dealer
# ----------------------------------------------------------------------------------------------


def _dealer_triple(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    message = DealerTriple.from_header(header)
    left, right = message.left, message.right
    spec: dict[str, Any] = {"left": list(left), "right": list(right)}

    def make(key: str, parties: list[str]) -> Any:
        dealer = sharing.TripleDealer(len(parties))
        with crypto_errors("triple"):
            return dealer.matmul_triple(left, right, triple_id=_triple_id(key))

    party, triple = _deal(ctx, message.session, message.batch, list(message.parties), spec, make)
    return Reply(TripleDealt(party, triple.triple_id).to_header(), triple.to_bytes())


def _dealer_bits(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """``dealer.bits``: a party's share of the XOR triples of ``values`` comparisons, once."""
    message = DealerBits.from_header(header)

    def make(key: str, parties: list[str]) -> Any:
        return _BitBatch(deal_and_triples(message.values))

    party, share = _deal(
        ctx, message.session, message.batch, list(message.parties), {"values": message.values}, make
    )
    return Reply(BitsDealt(party, message.values).to_header(), ring_to_bytes(share))


class _BitBatch:
    """Both parties' shares of one batch of XOR triples; each taken once."""

    def __init__(self, shares: tuple[Any, Any]) -> None:
        self._shares: dict[int, Any] = dict(enumerate(shares))

    def take(self, party: int) -> Any:
        share = self._shares.pop(party, None)
        if share is None:  # pragma: no cover - the store record refuses first
            raise TripleReuseError(f"party {party}'s share was already taken")
        return share


def _deal(
    ctx: CallContext,
    session: str,
    batch: str,
    parties: list[str],
    shape: Mapping[str, Any],
    make: Callable[[str, list[str]], Any],
) -> tuple[int, Any]:
    """Deal the caller its share of batch ``(session, batch)``, at most once.

    The first call makes the batch (``make(key, parties)``, an object with ``take(party)``);
    the dealt record is written before a share leaves, so a restart never deals it again.
    """
    if ctx.sender not in parties:
        raise ConflictError(f"{ctx.sender} is not a party of this batch")
    party = parties.index(ctx.sender)
    key = f"{session}/{batch}"
    spec: dict[str, Any] = {"parties": parties, **shape}
    node = ctx.node
    with node.store.transaction() as tx:
        doc = tx.get(DEALER_NAMESPACE, key)
        if doc is None:
            state = node.sessions.open(_DEALER_SESSION, key)
            state["batch"] = make(key, parties)
            body: dict[str, Any] = {**spec, "dealt": []}
        else:
            body = dict(doc.body)
            if {k: body.get(k) for k in spec} != spec:
                raise ConflictError("batch exists with other parties or shapes")
        dealt: list[str] = list(body["dealt"])
        if ctx.sender in dealt:
            raise ConflictError(f"batch {batch!r} was already dealt to {ctx.sender}")
        try:
            state = node.sessions.get(_DEALER_SESSION, key)
            share = state["batch"].take(party)
        except NotFoundError as exc:
            raise ConflictError("batch was lost (dealer restart); use a new batch") from exc
        except TripleReuseError as exc:  # pragma: no cover - the store record refuses first
            raise ConflictError(str(exc)) from exc
        dealt.append(ctx.sender)
        body["dealt"] = dealt
        tx.put(DEALER_NAMESPACE, key, body, expect_version=doc.version if doc else 0)
        record_event(
            tx,
            "triple.dealt",
            {"session": session, "batch": batch, "party": ctx.sender, "index": party},
        )
    if len(dealt) == len(parties):
        node.sessions.close(_DEALER_SESSION, key)
    return party, share


def _triple_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def register_operator(node: ComputeNode) -> None:
    """Register ``aggregate.open|add|take`` and ``dealer.triple|bits`` on the operator's node."""
    node.register("aggregate.open", _aggregate_open)
    node.register("aggregate.add", _aggregate_add)
    node.register("aggregate.take", _aggregate_take)
    node.register("dealer.triple", _dealer_triple)
    node.register("dealer.bits", _dealer_bits)


# ----------------------------------------------------------------------------------------------
# Client helpers (run at the analyst / provider)
# ----------------------------------------------------------------------------------------------


def open_aggregation(
    transport: Transport,
    operator: str,
    *,
    query: str,
    codec: str,
    contributors: list[str],
    counts: list[int],
    params: Mapping[str, Any] | None = None,
    material: bytes = b"",
    recipient: str | None = None,
) -> None:
    """As the analyst: open an aggregation of ``contributors``' blocks of ``counts`` values.

    ``recipient``: the contributor that takes the sums instead of the analyst (band release).
    """
    message = AggregateOpen(
        query, codec, tuple(sorted(contributors)), tuple(counts), params or {}, recipient
    )
    transport.call(operator, "aggregate.open", message.to_header(), material)


def add_to_aggregate(
    transport: Transport,
    operator: str,
    *,
    query: str,
    analyst: str,
    contributors: list[str],
    block: int,
    count: int,
    payload: bytes,
    recipient: str | None = None,
) -> None:
    """As a provider: add one block of its partial to the analyst's aggregation."""
    message = AggregateAdd(query, analyst, tuple(sorted(contributors)), block, count, recipient)
    transport.call(operator, "aggregate.add", message.to_header(), payload)


def take_aggregate(
    transport: Transport, operator: str, *, query: str, block: int, analyst: str | None = None
) -> bytes:
    """As the analyst (or, naming the ``analyst``, its declared recipient): take one block's sum."""
    return transport.call(
        operator, "aggregate.take", AggregateTake(query, block, analyst).to_header()
    ).payload


def fetch_triple(
    transport: Transport,
    operator: str,
    *,
    session: str,
    batch: str,
    parties: list[str],
    left: tuple[int, int],
    right: tuple[int, ...],
) -> sharing.TripleShare:
    """As a party: fetch its own share of a matrix triple batch from the dealer."""
    message = DealerTriple(session, batch, tuple(parties), left, tuple(right))
    reply = transport.call(operator, "dealer.triple", message.to_header())
    with crypto_errors("triple share from the dealer"):
        share = sharing.TripleShare.from_bytes(reply.payload)
    if share.a.shape != tuple(left) or share.b.shape != tuple(right):
        raise ValidationError("the dealer's triple share has other shapes than requested")
    return share


def fetch_and_triples(
    transport: Transport,
    operator: str,
    *,
    session: str,
    batch: str,
    parties: tuple[str, str],
    values: int,
) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """As a party: its share of the XOR triples for ``values`` comparisons (``dealer.bits``)."""
    message = DealerBits(session, batch, parties, values)
    reply = transport.call(operator, "dealer.bits", message.to_header())
    dealt = BitsDealt.from_header(reply.header)
    if dealt.values != values:
        raise ValidationError("the dealer's triples are not the ones requested")
    return ring_from_bytes(reply.payload, 3 * AND_WORDS * values)
