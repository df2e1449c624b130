"""Aggregates over a PSI cohort and over explicit ids: equal to numpy, the cohort never reaches the
provider, minCohort and the budget refuse before release, noise is plausible."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from crypto import ckks, paillier
from crypto.psi import hash_to_point
from tests._seeding import rng_for
from tests.trusted_space._joint import (
    ANALYST,
    OPERATOR,
    PURPOSE,
    Space,
    build_space,
    offer,
    provide,
)
from trusted_space.budget import set_budget, spent
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols.aggregate import (
    NOISE_TAIL,
    laplace_noise,
    register_aggregate,
    run_aggregate,
    set_column_bounds,
)
from trusted_space.protocols.align import register_align
from trusted_space.protocols.operator import register_operator
from trusted_space.queries.aggregate import AggregateQuery
from trusted_space.transport import RemoteError, Reply

PROVIDER = "tax-bureau"
ROWS = 120
LO, HI = -50.0, 100.0
BINS = (-50.0, 0.0, 25.0, 50.0, 100.0)
KEYS = [f"enterprise-{i:06d}" for i in range(ROWS)]
_queries = itertools.count()


@pytest.fixture(scope="module")
def paillier_keys() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(2048)


@pytest.fixture(scope="module")
def ckks_context() -> ckks.SecretContext:
    context = ckks.SecretContext.generate()
    context.public_context(galois_keys=True)  # rotation keys made once for the module
    return context


class RecordingData:
    """InMemoryData that remembers which columns were read."""

    def __init__(self, inner: InMemoryData) -> None:
        self.inner = inner
        self.reads: list[tuple[str, ...]] = []

    def columns(self, dataset_id: str) -> list[str]:
        return self.inner.columns(dataset_id)

    def lookup(self, dataset_id: str, entities: Sequence[str], columns: Sequence[str]) -> Any:
        self.reads.append(tuple(columns))
        return self.inner.lookup(dataset_id, entities, columns)

    def scan(
        self, dataset_id: str, columns: Sequence[str], *, chunk_rows: int = 50_000
    ) -> Iterator[Any]:
        self.reads.append(tuple(columns))
        return self.inner.scan(dataset_id, columns, chunk_rows=chunk_rows)


class Recorder:
    """Every call the provider receives, and its replies."""

    def __init__(self, node: ComputeNode) -> None:
        self.node = node
        self.calls: list[tuple[str, dict[str, Any], bytes, Reply]] = []

    def __call__(
        self, sender: str, operation: str, header: dict[str, Any], payload: bytes
    ) -> Reply:
        reply = self.node.handle(sender, operation, header, payload)
        self.calls.append((operation, header, payload, reply))
        return reply

    def received(self) -> list[bytes]:
        return [json.dumps(h).encode() + p for _, h, p, _ in self.calls]


class World:
    def __init__(self, *, min_cohort: int | None = None, budget: float | None = None) -> None:
        rng = rng_for("tests/trusted_space/test_aggregate.py::World")
        self.values = rng.uniform(LO, HI, ROWS)
        self.values[[5, 17]] = np.nan  # present in the table, no value
        self.values[3] = HI  # on the last bin edge (closed)
        self.space: Space = build_space((PROVIDER,))
        register_operator(self.space.operator.node)
        party = self.space.providers[PROVIDER]
        self.ds, ag = provide(
            self.space,
            PROVIDER,
            ["x"],
            KEYS,
            self.values.reshape(-1, 1),
            offer_doc=offer(min_cohort=min_cohort),
            impute={"x": 1.5},
        )
        assert ag is not None
        self.ag = ag
        self.node = party.node
        self.node.operator = OPERATOR
        with self.node.store.transaction() as tx:
            set_column_bounds(tx, self.ds, {"x": (LO, HI)})
            if budget is not None:
                set_budget(tx, budget, dataset_id=self.ds)
        self.data = RecordingData(party.data)
        self.node.data = self.data
        register_align(self.node)
        register_aggregate(self.node)
        self.recorder = Recorder(self.node)
        self.space.network.register(PROVIDER, self.recorder)

    def query(self, **kw: Any) -> AggregateQuery:
        args: dict[str, Any] = {
            "provider": PROVIDER,
            "agreement_id": self.ag,
            "dataset_id": self.ds,
            "column": "x",
            "purpose": PURPOSE,
            "operator": OPERATOR,
            "id": f"urn:uuid:query-{next(_queries)}",
        }
        args.update(kw)
        if "cohort" not in args and "entities" not in args:
            args["cohort"] = COHORT
        return AggregateQuery(**args)

    def run(self, query: AggregateQuery, keys: dict[str, Any]) -> Any:
        return run_aggregate(self.space.transport(ANALYST), ANALYST, query, **keys)


MATCHED = [KEYS[i] for i in range(0, ROWS, 3)]
COHORT = [f"stranger-enterprise-{i:06d}" for i in range(15)] + MATCHED[::-1]


def _expected(values: np.ndarray, statistic: str) -> tuple[float | None, list[float]]:
    present = values[~np.isnan(values)]
    clipped = np.clip(present, LO, HI)
    if statistic == "count":
        return float(present.size), []
    if statistic == "sum":
        return float(clipped.sum()), []
    if statistic == "mean":
        return float(clipped.mean()), []
    return None, [float(c) for c in np.histogram(present, bins=BINS)[0]]


def _keys(protocol: str, pk: Any, ctx: Any) -> dict[str, Any]:
    if protocol == "paillier":
        return {"paillier_keys": pk}
    if protocol == "ckks":
        return {"ckks_context": ctx}
    return {}


TOLERANCE = {"paillier": (1e-6, 1e-9), "ckks": (1e-3, 1e-3), "additive": (0.0, ROWS * 2.0**-17)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_statistic_equals_numpy_over_the_cohort(
    protocol: str, paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    world = World()
    cohort_values = world.values[[KEYS.index(k) for k in MATCHED]]
    rel, absolute = TOLERANCE[protocol]
    for statistic in ("count", "sum", "mean", "histogram"):
        bins = BINS if statistic == "histogram" else ()
        query = world.query(statistic=statistic, protocol=protocol, bins=bins)
        result = world.run(query, _keys(protocol, paillier_keys, ckks_context))
        value, counts = _expected(cohort_values, statistic)
        assert result.cohort_size == len(MATCHED)
        if value is None:
            assert result.value is None
            assert np.allclose(result.counts, counts, rtol=rel, atol=max(absolute, 1e-9))
        else:
            assert result.value == pytest.approx(value, rel=rel, abs=absolute)
        assert result.epsilon is None and all(s == 0.0 for s in result.noise_scales)
        assert len(result.receipts) == 2  # alignment and release, both verified by the driver


def test_the_provider_never_receives_the_cohort(
    paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    world = World()
    for protocol in PROTOCOLS:
        world.recorder.calls.clear()
        query = world.query(statistic="sum", protocol=protocol)
        world.run(query, _keys(protocol, paillier_keys, ckks_context))
        opened = next(r for op, _, _, r in world.recorder.calls if op == "align.open")
        session = bytes.fromhex(opened.header["session"])
        received = world.recorder.received()
        for entity in COHORT:
            assert not any(entity.encode() in blob for blob in received)
            assert not any(hash_to_point(session, entity) in blob for blob in received)
        indicator = b"".join(p for op, _, p, _ in world.recorder.calls if op == "stats.open")
        if protocol == "paillier":
            start = indicator.index(b'{"count"')
            doc = json.loads(indicator[start:].decode())
            cts = paillier.CiphertextVector.load(doc, paillier_keys[0], exponent=-32)
            assert len(cts) == ROWS and len(set(cts.values)) == ROWS
            assert min(cts.values) > 1 << 1024  # ciphertexts, not 0/1
        elif protocol == "ckks":
            size = int.from_bytes(indicator[:8], "big")
            public = ckks.PublicContext.load(indicator[8 : 8 + size])  # refuses a secret key
            vector = public.load_vector(indicator[16 + size :])
            assert vector.length == ROWS and public.has_galois_keys
        else:
            share = np.frombuffer(indicator[8:], dtype="<u8")
            assert share.size == ROWS and np.count_nonzero(share > 1) > ROWS - 3


def test_a_cohort_below_min_cohort_is_refused_with_a_trace_and_nothing_released(
    paillier_keys: Any, ckks_context: ckks.SecretContext
) -> None:
    world = World(min_cohort=5)
    small = [f"nobody-{i}" for i in range(8)] + KEYS[:3]  # 11 ids pass the PSI pre-check
    for protocol in PROTOCOLS:
        world.data.reads.clear()
        world.recorder.calls.clear()
        query = world.query(statistic="sum", protocol=protocol, cohort=small)
        with pytest.raises(RemoteError) as info:
            world.run(query, _keys(protocol, paillier_keys, ckks_context))
        assert info.value.status == 403
        trace = info.value.problem["trace"]
        assert any(s["left_operand"] == "minCohort" and s["seen"] == 3 for s in trace)
        assert ("x",) not in world.data.reads
        release = [r for op, _, _, r in world.recorder.calls if op == "stats.release"]
        assert release == []  # the refused call returned no reply at all
    big = world.run(
        world.query(statistic="count", protocol="paillier"), _keys("paillier", paillier_keys, None)
    )
    assert big.value == np.count_nonzero(~np.isnan(world.values[[KEYS.index(k) for k in MATCHED]]))


def test_noise_is_charged_and_a_query_past_the_budget_is_refused_before_reading(
    paillier_keys: Any,
) -> None:
    world = World(budget=1.0)
    query = world.query(statistic="count", protocol="paillier", epsilon=0.6)
    result = world.run(query, _keys("paillier", paillier_keys, None))
    true = float(np.count_nonzero(~np.isnan(world.values[[KEYS.index(k) for k in MATCHED]])))
    assert result.epsilon == 0.6 and result.noise_scales == (pytest.approx(1 / 0.6),)
    assert abs(result.value - true) <= NOISE_TAIL / 0.6
    with world.node.store.transaction(readonly=True) as tx:
        assert spent(tx, member=ANALYST, dataset_id=world.ds) == 0.6
    world.data.reads.clear()
    again = world.query(statistic="count", protocol="paillier", epsilon=0.6)
    with pytest.raises(RemoteError) as info:
        world.run(again, _keys("paillier", paillier_keys, None))
    assert info.value.status == 403
    assert info.value.problem["trace"][0]["left_operand"] == "epsilonTotal"
    assert world.data.reads == []  # not even the key column
    with world.node.store.transaction(readonly=True) as tx:
        assert spent(tx, member=ANALYST, dataset_id=world.ds) == 0.6


def test_explicit_entities_sum_and_the_missing_rule() -> None:
    world = World()
    entities = KEYS[10:40]
    result = world.run(world.query(statistic="sum", protocol="ckks", entities=entities), {})
    expected = np.nansum(np.clip(world.values[10:40], LO, HI))
    assert result.value == pytest.approx(expected)
    assert result.cohort_size == 30 and len(result.receipts) == 1
    with pytest.raises(RemoteError) as info:
        world.run(world.query(statistic="count", protocol="ckks", entities=[KEYS[1], "zz"]), {})
    assert info.value.status == 403
    assert info.value.problem["trace"][0]["refused_entities"] == ["zz"]
    imputed = world.run(
        world.query(statistic="sum", protocol="ckks", entities=[KEYS[1], "zz"], missing="impute"),
        {},
    )
    assert imputed.missing == ("zz",)
    assert imputed.value == pytest.approx(world.values[1] + 1.5)


def test_noise_is_statistically_plausible(rng: np.random.Generator) -> None:
    draws = laplace_noise([2.0] * 200_000, rng)
    assert abs(draws.mean()) < 0.05  # sd of the mean: 2·√2/√200000 ≈ 0.0063
    assert np.mean(np.abs(draws)) == pytest.approx(2.0, rel=0.02)  # E|X| = b
    assert np.max(np.abs(draws)) <= NOISE_TAIL * 2.0


def test_noise_through_the_protocol_has_the_calibrated_scale() -> None:
    world = World(budget=1000.0)
    entities = KEYS[20:60]
    true = float(np.count_nonzero(~np.isnan(world.values[20:60])))
    errors = []
    for _ in range(150):
        query = world.query(statistic="count", protocol="ckks", entities=entities, epsilon=2.0)
        result = world.run(query, {})
        assert result.noise_scales == (0.5,)
        errors.append(result.value - true)
    err = np.asarray(errors)
    assert abs(err.mean()) < 0.25  # sd of the mean ≈ 0.058
    assert np.mean(np.abs(err)) == pytest.approx(0.5, rel=0.35)


def test_a_release_happens_once(paillier_keys: Any) -> None:
    world = World()
    query = world.query(statistic="count", protocol="paillier")
    world.run(query, _keys("paillier", paillier_keys, None))
    transport = world.space.transport(ANALYST)
    with pytest.raises(RemoteError) as info:
        transport.call(PROVIDER, "stats.release", {"query": query.id, "dataset": world.ds})
    assert info.value.status in (404, 409)
