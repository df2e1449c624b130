"""What each party must not receive, checked on every byte that crosses the network.

A wrapping handler records every call (header and payload) and every reply between the nodes of
an in-memory space; each test names one thing a party must never get and searches the recorded
traffic of that party for it, in every encoding it could travel in.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from crypto import ckks, paillier
from crypto.errors import DecryptionError, SerializationError
from crypto.fixedpoint import FixedPoint
from crypto.sharing import BeaverMessage, TripleShare, beaver_finish, beaver_open
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.protocols import register_operator, register_provider, run_score
from trusted_space.protocols._common import ring_from_bytes
from trusted_space.protocols.operator import fetch_triple
from trusted_space.protocols.score import store_party_weights
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore
from trusted_space.query import Link, Model, ScoreQuery
from trusted_space.transport import Handler, RemoteError, Reply

from ._joint import ANALYST, OPERATOR, PURPOSE, Space, build_space, offer, provide

PROVIDERS = ("tax-bureau", "court")
N = 24
K = {"tax-bureau": 3, "court": 2}


@dataclass(frozen=True)
class Message:
    sender: str
    receiver: str
    operation: str
    reply: bool
    header: dict[str, Any]
    payload: bytes

    @property
    def text(self) -> bytes:
        return json.dumps(self.header, sort_keys=True).encode() + b"\0" + self.payload


class SpyData:
    """A DataAccess that records every read."""

    def __init__(self, inner: InMemoryData) -> None:
        self.inner = inner
        self.reads: list[tuple[str, str]] = []

    def columns(self, dataset_id: str) -> list[str]:
        self.reads.append(("columns", dataset_id))
        return self.inner.columns(dataset_id)

    def lookup(self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]) -> Any:
        self.reads.append(("lookup", dataset_id))
        return self.inner.lookup(dataset_id, entities, columns)

    def scan(self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000) -> Any:
        self.reads.append(("scan", dataset_id))
        return self.inner.scan(dataset_id, columns, chunk_rows=chunk_rows)


@dataclass
class Recorded:
    space: Space
    log: list[Message]
    x: dict[str, npt.NDArray[np.float64]]
    w: dict[str, npt.NDArray[np.float64]]
    agreements: dict[str, str]
    datasets: dict[str, str]
    spies: dict[str, SpyData]

    def to(self, receiver: str) -> list[Message]:
        return [m for m in self.log if m.receiver == receiver]

    def query(self, protocol: str, mode: str, **kw: Any) -> ScoreQuery:
        weights = (
            tuple(
                (p, tuple((f"c{j}", float(v)) for j, v in enumerate(self.w[p]))) for p in PROVIDERS
            )
            if mode == "analyst-held"
            else ()
        )
        return ScoreQuery(
            purpose=kw.pop("purpose", PURPOSE),
            protocol=protocol,
            mode=mode,
            model=Model(0.25, Link("logistic"), weights, id="model-1"),
            agreements=self.agreements,
            datasets=self.datasets,
            entities=tuple(f"ent-{i}" for i in range(N)),
            **kw,
        )

    def partial(self, provider: str) -> npt.NDArray[np.float64]:
        return self.x[provider] @ self.w[provider]


def _record(log: list[Message], receiver: str, handler: Handler) -> Handler:
    def wrapped(sender: str, operation: str, header: dict[str, Any], payload: bytes) -> Reply:
        log.append(Message(sender, receiver, operation, False, dict(header), bytes(payload)))
        reply = handler(sender, operation, header, payload)
        log.append(Message(receiver, sender, operation, True, dict(reply.header), reply.payload))
        return reply

    return wrapped


def recorded_space(
    *, refuse: str | None = None, seed: int = 11, k: dict[str, int] | None = None
) -> Recorded:
    """Two providers with data and party-held weights; ``refuse``: that provider's offer is for
    another purpose than the query's."""
    rng = np.random.default_rng(seed)
    space = build_space(list(PROVIDERS))
    register_operator(space.operator.node)
    x, w, agreements, datasets, spies = {}, {}, {}, {}, {}
    for p in PROVIDERS:
        node = space.providers[p].node
        register_provider(node)
        node.extras["operator"] = OPERATOR
        spy = SpyData(space.providers[p].data)
        node.data = spy
        spies[p] = spy
        cols = (k or K)[p]
        x[p] = rng.uniform(-4, 4, (N, cols))
        # Weights with many significant digits: an accidental match in other bytes is hopeless.
        w[p] = rng.uniform(-1.5, 1.5, cols) + 1e-7 * rng.random(cols)
        the_offer = offer(purpose="risk-monitoring" if p == refuse else PURPOSE)
        ds, ag = provide(
            space,
            p,
            [f"c{j}" for j in range(cols)],
            [f"ent-{i}" for i in range(N)],
            x[p],
            offer_doc=the_offer,
            ds_id=f"ds-{p}",
        )
        assert ag is not None
        store_party_weights(node.store, "model-1", {f"c{j}": float(v) for j, v in enumerate(w[p])})
        agreements[p], datasets[p] = ag, ds
    log: list[Message] = []
    nodes: list[ComputeNode] = [space.operator.node, space.analyst.node] + [
        space.providers[p].node for p in PROVIDERS
    ]
    for node in nodes:
        space.network.register(node.participant_id, _record(log, node.participant_id, node.handle))
    return Recorded(space, log, x, w, agreements, datasets, spies)


def encodings(values: Iterable[float]) -> list[bytes]:
    """Every plain form a real could travel in: text, float64, and fixed point at 16/32/64 bits."""
    out: list[bytes] = []
    for v in values:
        out += [repr(float(v)).encode(), json.dumps(float(v)).encode(), f"{v:.12g}".encode()]
        out += [struct.pack("<d", v), struct.pack(">d", v)]
        for f in (16, 32, 64):
            i = round(v * 2**f)
            out.append(str(i).encode())
            if abs(i) < 2**63:
                out += [struct.pack("<q", i), struct.pack(">q", i)]
    return out


def leaked(values: Iterable[float], messages: Iterable[Message]) -> list[tuple[str, str]]:
    needles = encodings(values)
    return [(m.operation, m.sender) for m in messages for needle in needles if needle in m.text]


def test_the_search_finds_plain_values() -> None:
    w = [0.123456789, -1.5]
    msg = Message("a", "b", "op", False, {"w": w}, struct.pack("<q", round(-1.5 * 2**16)))
    assert leaked(w[:1], [msg]) and leaked(w[1:], [msg])
    assert not leaked([0.987654321], [msg])


@pytest.fixture(scope="module")
def paillier_keys() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(2048)


@pytest.fixture(scope="module")
def ckks_context() -> ckks.SecretContext:
    return ckks.SecretContext.generate()


def protocol_object(name: str, keys: Any, context: ckks.SecretContext) -> Any:
    return {
        "paillier": PaillierScore(keys),
        "ckks": CkksScore(context),
        "additive": AdditiveScore(),
    }[name]


@pytest.mark.parametrize("protocol", ["paillier", "ckks", "additive"])
def test_providers_never_see_the_weights_in_clear(
    protocol: str, paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    rec = recorded_space()
    query = rec.query(protocol, "analyst-held")
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        query,
        protocol=protocol_object(protocol, paillier_keys, ckks_context),
    )
    for p in PROVIDERS:
        received = rec.to(p)
        assert received, "the provider took part"
        everything = [v for q in PROVIDERS for v in rec.w[q]]
        assert leaked(everything, received) == []
    # The operator, too, never sees a weight.
    assert leaked([v for q in PROVIDERS for v in rec.w[q]], rec.to(OPERATOR)) == []


@pytest.mark.parametrize("mode", ["analyst-held", "party-held"])
@pytest.mark.parametrize("protocol", ["paillier", "ckks", "additive"])
def test_the_analyst_never_receives_a_providers_partial(
    protocol: str, mode: str, paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    rec = recorded_space()
    result = run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query(protocol, mode),
        protocol=protocol_object(protocol, paillier_keys, ckks_context),
    )
    to_analyst = rec.to(ANALYST)
    for p in PROVIDERS:
        run_replies = [m for m in to_analyst if m.sender == p and m.operation == "score.run"]
        assert len(run_replies) == 1
        reply = run_replies[0]
        assert reply.payload == bytes(-(-N // 8))  # the missing-entity bitmap, all clear
        assert set(reply.header) <= {"query", "receipt", "rows", "missing", "maskSeed"}
        assert reply.header["missing"] == 0
        # No reply to the analyst, from anyone, carries a provider's partial in any plain form.
        assert leaked(rec.partial(p), to_analyst) == []
        # Every contribution went to the operator, never to the analyst.
        adds = [m for m in rec.log if m.operation == "aggregate.add" and m.sender == p]
        assert adds and all(m.receiver == OPERATOR for m in adds)
        # The operator sees ciphertexts or uniform shares, never a partial in the clear.
        assert leaked(rec.partial(p), rec.to(OPERATOR)) == []
    # Per-entity payloads reach the analyst only as the aggregator's sums, the missing bitmaps
    # checked above (and, additive analyst-held, the Beaver openings and its own triple shares).
    allowed = {"aggregate.take", "score.run"} | (
        {"score.beaver", "dealer.triple"}
        if (protocol, mode) == ("additive", "analyst-held")
        else set()
    )
    assert {m.operation for m in to_analyst if m.reply and m.payload} <= allowed
    assert len(result.logits) == N


def test_ckks_contexts_sent_hold_no_secret_key(ckks_context: ckks.SecretContext) -> None:
    rec = recorded_space()
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query("ckks", "analyst-held"),
        protocol=CkksScore(ckks_context),
    )
    contexts = [
        m.payload
        for m in rec.log
        if m.operation in ("score.open", "aggregate.open") and not m.reply
    ]
    assert len(contexts) == len(PROVIDERS) + 1
    probe = ckks_context.encrypt([1.0, 2.0])
    for raw in contexts:
        public = ckks.PublicContext.load(raw)
        with pytest.raises(DecryptionError):
            public.decrypt(public.load_vector(probe.serialize()))
        with pytest.raises(SerializationError):
            ckks.SecretContext.load(raw)
        assert not public.tenseal_context.is_private()


@pytest.mark.parametrize("mode", ["analyst-held", "party-held"])
def test_every_paillier_ciphertext_carries_the_protocol_exponent(
    mode: str, paillier_keys: Any
) -> None:
    rec = recorded_space()
    run_score(
        rec.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        rec.query("paillier", mode),
        protocol=PaillierScore(paillier_keys),
    )
    f = paillier.DEFAULT_FRAC_BITS
    partial_exponent = -2 * f if mode == "analyst-held" else -f
    seen: dict[str, set[int]] = {"weights": set(), "partials": set()}
    for m in rec.log:
        if not m.payload.startswith(b"{"):
            continue
        doc = json.loads(m.payload)
        if doc.get("type") == "paillier.ciphertexts":
            seen["weights"].add(doc["e"])
        elif doc.get("type") == "paillier.packed":
            assert doc["ciphertexts"]["e"] == partial_exponent, m.operation
            seen["partials"].add(doc["ciphertexts"]["e"])
    assert seen["partials"] == {partial_exponent}
    assert seen["weights"] == ({-f} if mode == "analyst-held" else set())


def test_no_beaver_triple_is_used_twice() -> None:
    rec = recorded_space()
    query = rec.query("additive", "analyst-held")
    run_score(rec.space.transport(ANALYST), ANALYST, OPERATOR, query)
    fetches = [m for m in rec.log if m.operation == "dealer.triple" and not m.reply]
    keys = [(m.header["session"], m.header["batch"], m.sender) for m in fetches]
    assert len(keys) == len(set(keys)) == 2 * len(PROVIDERS)  # one block each, both parties
    dealt = [m.header["triple"] for m in rec.log if m.operation == "dealer.triple" and m.reply]
    assert all(dealt.count(t) == 2 for t in dealt)  # each triple: one share to each party
    first = fetches[0]
    spec = {k: first.header[k] for k in ("session", "batch", "parties")}
    with pytest.raises(RemoteError) as info:  # the dealer refuses a second fetch
        fetch_triple(
            rec.space.transport(first.sender),
            OPERATOR,
            **spec,
            left=tuple(first.header["left"]),
            right=tuple(first.header["right"]),
        )
    assert info.value.status == 409 and "already dealt" in info.value.problem["detail"]
    with pytest.raises(RemoteError):  # and a provider will not run a Beaver round twice
        beaver = next(m for m in rec.log if m.operation == "score.beaver" and not m.reply)
        rec.space.transport(ANALYST).call(
            beaver.receiver, "score.beaver", beaver.header, beaver.payload
        )


@pytest.mark.parametrize("protocol", ["paillier", "additive"])
def test_a_policy_refusal_stops_the_query_before_any_data_is_used(
    protocol: str, paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    rec = recorded_space(refuse="tax-bureau")
    with pytest.raises(RemoteError) as info:
        run_score(
            rec.space.transport(ANALYST),
            ANALYST,
            OPERATOR,
            rec.query(protocol, "analyst-held"),
            protocol=protocol_object(protocol, paillier_keys, ckks_context),
        )
    err = info.value
    assert err.status == 403 and err.peer == "tax-bureau"
    trace = err.problem["trace"]
    blocking = [s for s in trace if s["blocking"]]
    assert blocking and blocking[0]["left_operand"] == "purpose"
    assert blocking[0]["seen"] == PURPOSE and blocking[0]["right_operand"] == "risk-monitoring"
    assert rec.spies["tax-bureau"].reads == []  # not one read of the refusing provider's data
    assert not [m for m in rec.log if m.operation == "aggregate.add" and m.sender == "tax-bureau"]
    # Nothing was released to the analyst: the aggregation can never complete.
    assert not [m for m in rec.log if m.operation == "aggregate.take" and m.reply]


def _dealer_attack(
    y: npt.NDArray[np.uint64],
    a: npt.NDArray[np.uint64],
    b: int,
    a1: npt.NDArray[np.uint64],
    b1: int,
    c1: npt.NDArray[np.uint64],
) -> list[tuple[int, npt.NDArray[np.int64]]]:
    """What an operator that deals the triple *and* receives the provider's share can solve.

    With one column, the provider's bare share is ``C1 + (X - A)·B1 + A1·(w - B)``, so
    ``y' = y - C1 + A·B1 + A1·B = X·B1 + A1·w``: guess the fixed-point weight, solve each feature,
    keep the guesses under which every feature is small. Returns (weight, features) solutions.
    """
    u = np.uint64
    known = np.subtract(y, c1, dtype=u)
    known = np.add(known, np.multiply(a, u(b1), dtype=u), dtype=u)
    known = np.add(known, np.multiply(a1, u(b), dtype=u), dtype=u)
    shift = (b1 & -b1).bit_length() - 1  # B1 = 2^shift * odd
    inverse = u(pow(b1 >> shift, -1, 2**64))
    low = u((1 << shift) - 1)

    def solve(i: int, w: npt.NDArray[np.uint64]) -> tuple[Any, Any]:
        t = np.subtract(known[i], np.multiply(a1[i], w, dtype=u), dtype=u)
        x = np.multiply(np.right_shift(t, u(shift)), inverse, dtype=u)
        signed = np.right_shift(np.left_shift(x, u(shift)).view(np.int64), shift)
        return (np.bitwise_and(t, low) == 0) & (np.abs(signed) < 2**20), signed

    guesses = np.arange(-(2**18), 2**18, dtype=np.int64).view(u)
    first, _ = solve(0, guesses)
    found = []
    for w in guesses[first]:
        features = []
        for i in range(len(known)):
            fits, x = solve(i, np.array([w], dtype=u))
            if not fits[0]:
                break
            features.append(int(x[0]))
        else:
            found.append((int(np.array([w], dtype=u).view(np.int64)[0]), np.array(features)))
    return found


def test_the_dealer_aggregator_cannot_unmask_a_providers_beaver_share() -> None:
    """The operator deals the triples and sums the shares: the share it gets must be masked."""
    rec = recorded_space(k={"tax-bureau": 3, "court": 1})
    run_score(
        rec.space.transport(ANALYST), ANALYST, OPERATOR, rec.query("additive", "analyst-held")
    )
    dealt = {}
    for i, m in enumerate(rec.log):
        if m.operation == "dealer.triple" and not m.reply and m.header["batch"] == "court.0":
            dealt[m.sender] = TripleShare.from_bytes(rec.log[i + 1].payload)
    t0, t1 = dealt[ANALYST], dealt["court"]
    a = np.add(t0.a, t1.a, dtype=np.uint64)[:, 0]
    b = int(np.add(t0.b, t1.b, dtype=np.uint64)[0])
    add = next(
        m for m in rec.to(OPERATOR) if m.operation == "aggregate.add" and m.sender == "court"
    )
    received = ring_from_bytes(add.payload, N)
    # The provider's bare Beaver share, recomputed from the recorded round.
    beaver = [
        m for m in rec.log if m.operation == "score.beaver" and "court" in (m.sender, m.receiver)
    ]
    opening = beaver_open([BeaverMessage.from_bytes(m.payload) for m in beaver])
    bare = beaver_finish(t1, opening)
    args = (a, b, t1.a[:, 0], int(t1.b[0]), t1.c)
    # Unmasked, the operator would recover the analyst's weight and every feature ...
    solutions = _dealer_attack(bare, *args)
    fixed = FixedPoint(16)
    assert [w for w, _ in solutions] == fixed.encode(rec.w["court"]).view(np.int64).tolist()
    assert solutions[0][1].tolist() == fixed.encode(rec.x["court"][:, 0]).view(np.int64).tolist()
    # ... but what it actually receives is masked: the same attack finds nothing.
    assert not np.array_equal(received, bare)
    assert _dealer_attack(received, *args) == []
