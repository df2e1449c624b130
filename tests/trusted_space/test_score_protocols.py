"""Joint scores end to end over an in-memory network: accuracy against float64 plaintext for every
protocol and model mode, blocks, missing entities, cohorts, receipts, the aggregator and dealer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import ckks, paillier
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.errors import ValidationError, VerificationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols import _common, register_operator, register_provider, run_score
from trusted_space.protocols.align import register_align
from trusted_space.protocols.base import ScoreProtocol
from trusted_space.protocols.operator import fetch_triple, open_aggregation, take_aggregate
from trusted_space.protocols.registry import SCORE_PROTOCOLS, get_score_protocol
from trusted_space.protocols.score import analyst as score_module
from trusted_space.protocols.score import check_use_receipt, store_party_weights
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore
from trusted_space.queries.common import MODES
from trusted_space.queries.score import Link, Model, ScoreQuery
from trusted_space.store import SQLiteStore
from trusted_space.transport import RemoteError, Reply

from ._joint import ANALYST, OPERATOR, PURPOSE, Space, build_space, provide

TOLERANCE = {"paillier": 1e-6, "ckks": 1e-3, "additive": 1e-3}


@pytest.fixture(scope="module")
def paillier_keys() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(2048)


@pytest.fixture(scope="module")
def ckks_context() -> ckks.SecretContext:
    return ckks.SecretContext.generate()


@pytest.fixture
def protocols(
    paillier_keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey],
    ckks_context: ckks.SecretContext,
) -> dict[str, ScoreProtocol]:
    return {
        "paillier": PaillierScore(paillier_keys),
        "ckks": CkksScore(ckks_context),
        "additive": AdditiveScore(),
    }


@dataclass
class Setup:
    space: Space
    keys: list[str]
    blocks: dict[str, np.ndarray[Any, Any]]
    weights: dict[str, np.ndarray[Any, Any]]
    datasets: dict[str, str]
    agreements: dict[str, str]

    def query(self, protocol: str, mode: str, **kw: Any) -> ScoreQuery:
        intercept = kw.pop("intercept", -0.75)
        link = kw.pop("link", Link("logistic"))
        own = kw.pop("own", None)
        providers = list(self.agreements)
        weights: list[tuple[str, tuple[tuple[str, float], ...]]] = []
        if mode == "analyst-held":
            weights = [(p, _named(p, self.weights[p])) for p in providers]
        if own is not None:
            weights.append((ANALYST, _named(ANALYST, own)))
        model = Model(intercept, link, tuple(weights), id="model-1")
        return ScoreQuery(
            purpose=PURPOSE,
            protocol=protocol,
            mode=mode,
            model=model,
            agreements=self.agreements,
            datasets=self.datasets,
            entities=tuple(kw.pop("entities", self.keys)),
            **kw,
        )

    def expected(self, entities: Sequence[str] | None = None) -> np.ndarray[Any, Any]:
        position = {k: i for i, k in enumerate(self.keys)}
        rows = [position[e] for e in (entities or self.keys)]
        return sum(self.blocks[p][rows] @ self.weights[p] for p in self.agreements)  # type: ignore[no-any-return]


def _named(party: str, w: np.ndarray[Any, Any]) -> tuple[tuple[str, float], ...]:
    return tuple((f"{party.replace('-', '_')}_{j}", float(v)) for j, v in enumerate(w))


def make_setup(
    n: int,
    columns: dict[str, int],
    rng: np.random.Generator,
    *,
    bound: float = 6.0,
    weight_bound: float = 1.5,
    sqlite_dir: Path | None = None,
    impute: dict[str, dict[str, float]] | None = None,
    holes: dict[str, Sequence[int]] | None = None,
) -> Setup:
    space = build_space(list(columns), sqlite_dir=sqlite_dir)
    register_operator(space.operator.node)
    keys = [f"ent-{i:05d}" for i in range(n)]
    blocks, weights, datasets, agreements = {}, {}, {}, {}
    for p, k in columns.items():
        node = space.providers[p].node
        register_provider(node)
        node.operator = OPERATOR
        x = rng.uniform(-bound, bound, (n, k))
        w = rng.uniform(-weight_bound, weight_bound, k)
        names = [name for name, _ in _named(p, w)]
        gone = set((holes or {}).get(p, ()))
        rows = [i for i in range(n) if i not in gone]
        held = [keys[i] for i in rows]
        ds, ag = provide(
            space, p, names, held, x[rows], impute=(impute or {}).get(p), ds_id=f"ds-{p}"
        )
        assert ag is not None
        store_party_weights(
            node.store, ANALYST, "model-1", dict(zip(names, w.tolist(), strict=True))
        )
        blocks[p], weights[p], datasets[p], agreements[p] = x, w, ds, ag
    return Setup(space, keys, blocks, weights, datasets, agreements)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Blocks of 7 entities and entity uploads of 8 ids: every multi-part path is exercised."""
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 7)
    monkeypatch.setattr(score_module, "ENTITY_CHUNK", 8)
    yield


def calls(space: Space, operation: str, sender: str | None = None) -> int:
    return sum(
        1 for s, _, op, _ in space.network.calls if op == operation and (sender in (None, s))
    )


# -- accuracy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_accuracy_against_plaintext(
    protocol: str,
    mode: str,
    protocols: dict[str, ScoreProtocol],
    small_blocks: None,
    rng: np.random.Generator,
) -> None:
    setup = make_setup(20, {"tax-bureau": 3, "court": 2, "social-insurance": 4}, rng)
    query = setup.query(protocol, mode)
    result = run_score(
        setup.space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=protocols[protocol]
    )
    expected = -0.75 + setup.expected()
    assert result.entities == tuple(setup.keys)
    assert float(np.max(np.abs(result.logits - expected))) <= TOLERANCE[protocol]
    assert np.allclose(result.outputs, 1 / (1 + np.exp(-result.logits)))
    assert set(result.receipts) == set(setup.agreements)
    assert result.missing == {}
    blocks = 1 if protocol == "ckks" else 3  # blocks of 7 (CKKS: of its 4096 slots)
    for p in setup.agreements:
        assert calls(setup.space, "aggregate.add", p) == blocks  # one message per block
    assert calls(setup.space, "score.entities", ANALYST) == 3 * 3  # 20 ids in parts of 8
    assert calls(setup.space, "aggregate.take", ANALYST) == blocks


@settings(max_examples=15)
@given(
    n=st.integers(1, 12),
    ks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(MODES),
)
def test_additive_accuracy_property(n: int, ks: list[int], seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    setup = make_setup(n, {f"prov-{i}": k for i, k in enumerate(ks)}, rng, bound=8.0)
    result = run_score(
        setup.space.transport(ANALYST), ANALYST, OPERATOR, setup.query("additive", mode)
    )
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-3


@settings(max_examples=6)
@given(
    n=st.integers(1, 9),
    ks=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(MODES),
)
def test_paillier_accuracy_property(
    paillier_keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey],
    n: int,
    ks: list[int],
    seed: int,
    mode: str,
) -> None:
    rng = np.random.default_rng(seed)
    setup = make_setup(n, {f"prov-{i}": k for i, k in enumerate(ks)}, rng, bound=60.0)
    result = run_score(
        setup.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        setup.query("paillier", mode),
        protocol=PaillierScore(paillier_keys),
    )
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-6


def test_ckks_many_blocks(
    ckks_context: ckks.SecretContext,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 4096)
    setup = make_setup(9000, {"tax-bureau": 3, "court": 2}, rng)
    result = run_score(
        setup.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        setup.query("ckks", "analyst-held"),
        protocol=CkksScore(ckks_context),
    )
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-3
    assert calls(setup.space, "aggregate.take") == 3  # 4096 + 4096 + 808


def test_analyst_columns_and_scorecard(
    protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(25, {"tax-bureau": 2}, rng)
    own_x = rng.uniform(-3, 3, (25, 2))
    own_w = np.array([0.3, -0.7])
    own = InMemoryData()
    own.add("ds-own", setup.keys, [name for name, _ in _named(ANALYST, own_w)], own_x)
    setup.datasets[ANALYST] = "ds-own"
    query = setup.query(
        "additive", "analyst-held", own=own_w, link=Link("scorecard", 600.0, -20.0), intercept=1.0
    )
    result = run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query, analyst_data=own)
    expected = 1.0 + setup.expected() + own_x @ own_w
    assert float(np.max(np.abs(result.logits - expected))) <= 1e-3
    assert np.allclose(result.outputs, 600.0 - 20.0 * result.logits)


def test_sqlite_stores(
    tmp_path: Path, protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(15, {"tax-bureau": 2, "court": 1}, rng, sqlite_dir=tmp_path)
    assert isinstance(setup.space.operator.node.store, SQLiteStore)
    result = run_score(
        setup.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        setup.query("paillier", "party-held"),
        protocol=protocols["paillier"],
    )
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-6


# -- missing entities, cohorts -------------------------------------------------------------------


def test_missing_fail_refuses_listing_them(rng: np.random.Generator) -> None:
    setup = make_setup(10, {"tax-bureau": 2, "court": 1}, rng, holes={"court": [3, 7]})
    with pytest.raises(RemoteError) as info:
        run_score(
            setup.space.transport(ANALYST), ANALYST, OPERATOR, setup.query("additive", "party-held")
        )
    assert info.value.status == 403 and info.value.peer == "court"
    trace = info.value.problem["trace"]
    assert trace[0]["rule"] == "missing"
    assert trace[0]["refused_entities"] == [setup.keys[3], setup.keys[7]]
    assert "2 of 10 entities are not held" in info.value.problem["detail"]


def test_missing_impute_uses_published_defaults(
    protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    names = [name for name, _ in _named("court", np.zeros(2))]
    setup = make_setup(
        10,
        {"tax-bureau": 2, "court": 2},
        rng,
        holes={"court": [0, 4]},
        impute={"court": {names[0]: 1.5, names[1]: -2.0}},
    )
    query = setup.query("paillier", "analyst-held", missing="impute")
    result = run_score(
        setup.space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=protocols["paillier"]
    )
    setup.blocks["court"][[0, 4]] = [1.5, -2.0]
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-6
    assert result.missing == {"court": (setup.keys[0], setup.keys[4])}


def test_missing_impute_without_default_refused(rng: np.random.Generator) -> None:
    setup = make_setup(6, {"court": 2}, rng, holes={"court": [1]})
    query = setup.query("additive", "party-held", missing="impute")
    with pytest.raises(RemoteError) as info:
        run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query)
    assert info.value.status == 403 and "publish no imputeDefault" in info.value.problem["detail"]


def test_cohort_scores_the_intersection(rng: np.random.Generator) -> None:
    setup = make_setup(12, {"tax-bureau": 2, "court": 1}, rng, holes={"court": [2, 5]})
    candidates = [*setup.keys, "not-anywhere"]
    aligned: list[str] = []

    def align(provider: str, agreement: str, dataset: str, ids: Sequence[str]) -> list[str]:
        # Stands in for PSI: the provider's ids among the candidates.
        aligned.append(provider)
        data = setup.space.providers[provider].data
        found, _ = data.lookup(dataset, list(ids), [])
        return [e for e, f in zip(ids, found, strict=True) if f]

    query = setup.query("additive", "analyst-held", entities=candidates, cohort=True)
    result = run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query, align=align)
    assert sorted(aligned) == ["court", "tax-bureau"]
    scored = [k for i, k in enumerate(setup.keys) if i not in (2, 5)]
    assert result.entities == tuple(scored)
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected(scored))))) <= 1e-3
    assert result.missing["court"] == (setup.keys[2], setup.keys[5], "not-anywhere")


def test_cohort_aligned_by_psi(rng: np.random.Generator) -> None:
    setup = make_setup(10, {"tax-bureau": 2, "court": 1}, rng, holes={"tax-bureau": [0]})
    for p in setup.agreements:
        register_align(setup.space.providers[p].node)
    candidates = ["unknown-1", *setup.keys[::-1]]
    query = setup.query("additive", "analyst-held", entities=candidates, cohort=True)
    result = run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query)
    scored = [k for k in setup.keys[::-1] if k != setup.keys[0]]
    assert result.entities == tuple(scored)
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected(scored))))) <= 1e-3
    assert result.missing == {
        "tax-bureau": ("unknown-1", setup.keys[0]),
        "court": ("unknown-1",),
    }
    party_held = setup.query("additive", "party-held", entities=candidates, cohort=True)
    with pytest.raises(ValidationError, match="align function"):
        run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, party_held)


# -- refusals at the edge --------------------------------------------------------------------------


def test_feature_bound_exceeded_refused(
    protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(5, {"court": 2}, rng, bound=100.0)
    query = setup.query("paillier", "analyst-held", feature_bound=10.0)
    with pytest.raises(RemoteError) as info:
        run_score(
            setup.space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=protocols["paillier"]
        )
    assert info.value.status == 400 and "declared range" in info.value.problem["detail"]


def test_unknown_party_model_is_404(rng: np.random.Generator) -> None:
    setup = make_setup(5, {"court": 2}, rng)
    query = setup.query("ckks", "party-held")
    query = ScoreQuery.from_json(
        {**query.to_json(), "model": {**query.model.to_json(), "id": "m-9"}}
    )
    with pytest.raises(RemoteError) as info:
        run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query)
    assert info.value.status == 404


def test_provider_sends_only_to_the_space_operator(rng: np.random.Generator) -> None:
    setup = make_setup(5, {"court": 2}, rng)
    setup.space.analyst.node.register("aggregate.open", lambda ctx, header, payload: Reply())
    with pytest.raises(RemoteError) as info:
        # The analyst names itself as the aggregator: the provider refuses before any data is read.
        run_score(
            setup.space.transport(ANALYST), ANALYST, ANALYST, setup.query("additive", "party-held")
        )
    assert info.value.status == 400 and "operator" in info.value.problem["detail"]
    assert calls(setup.space, "score.run") == 0


def test_session_runs_once(rng: np.random.Generator) -> None:
    setup = make_setup(4, {"court": 1}, rng)
    transport = setup.space.transport(ANALYST)
    run_score(
        transport, ANALYST, OPERATOR, setup.query("additive", "party-held", id="urn:uuid:q-x")
    )
    with pytest.raises(RemoteError) as info:
        transport.call("court", "score.run", {"query": "urn:uuid:q-x"})
    assert info.value.status == 404  # the session is gone


# -- receipts --------------------------------------------------------------------------------------


def test_receipts_verify_against_known_keys(rng: np.random.Generator) -> None:
    setup = make_setup(6, {"tax-bureau": 1, "court": 1}, rng)
    vkeys = {p: setup.space.providers[p].node.ledger.vkey for p in setup.agreements}
    query = setup.query("additive", "party-held")
    result = run_score(
        setup.space.transport(ANALYST), ANALYST, OPERATOR, query, provider_vkeys=vkeys
    )
    for p, receipt in result.receipts.items():
        body = check_use_receipt(
            receipt,
            participant=p,
            query=query.id,
            analyst=ANALYST,
            agreement=query.agreements[p],
            dataset=query.datasets[p],
            entities=query.entities,
            vkey=vkeys[p],
        )
        assert body["protocol"] == "additive" and body["kind"] == "score"
    receipt = result.receipts["court"]
    with pytest.raises(VerificationError):  # another query's receipt
        check_use_receipt(
            receipt,
            participant="court",
            query="urn:uuid:other",
            analyst=ANALYST,
            agreement=query.agreements["court"],
            dataset=query.datasets["court"],
            entities=query.entities,
        )
    with pytest.raises(VerificationError):  # signed by someone else's key
        check_use_receipt(
            receipt,
            participant="court",
            query=query.id,
            analyst=ANALYST,
            agreement=query.agreements["court"],
            dataset=query.datasets["court"],
            entities=query.entities,
            vkey=vkeys["tax-bureau"],
        )
    with pytest.raises(VerificationError):  # a forged entry
        forged = dict(receipt, entry=result.receipts["tax-bureau"]["entry"])
        check_use_receipt(
            forged,
            participant="court",
            query=query.id,
            analyst=ANALYST,
            agreement=query.agreements["court"],
            dataset=query.datasets["court"],
            entities=query.entities,
        )


# -- the operator: aggregator and dealer -----------------------------------------------------------


def test_aggregator_releases_complete_sums_once_to_the_analyst_only() -> None:
    space = build_space(["tax-bureau", "court"])
    register_operator(space.operator.node)
    analyst = space.transport(ANALYST)
    open_aggregation(
        analyst,
        OPERATOR,
        query="q",
        codec="ring64",
        contributors=["court", "tax-bureau"],
        counts=[2],
    )
    add = {
        "query": "q",
        "analyst": ANALYST,
        "contributors": ["court", "tax-bureau"],
        "block": 0,
        "count": 2,
    }
    one = np.array([1, 2], dtype=np.uint64)
    space.transport("court").call(OPERATOR, "aggregate.add", add, _common.ring_to_bytes(one))
    with pytest.raises(RemoteError) as info:  # incomplete
        take_aggregate(analyst, OPERATOR, query="q", block=0)
    assert info.value.status == 409 and "incomplete" in info.value.problem["detail"]
    with pytest.raises(RemoteError) as info:  # twice from the same provider
        space.transport("court").call(OPERATOR, "aggregate.add", add, _common.ring_to_bytes(one))
    assert info.value.status == 409
    with pytest.raises(RemoteError) as info:  # not a contributor
        space.transport(OPERATOR).call(OPERATOR, "aggregate.add", add, _common.ring_to_bytes(one))
    assert info.value.status == 409
    with pytest.raises(RemoteError) as info:  # fewer contributors than declared
        space.transport("tax-bureau").call(
            OPERATOR,
            "aggregate.add",
            {**add, "contributors": ["tax-bureau"]},
            _common.ring_to_bytes(one),
        )
    assert info.value.status == 409
    space.transport("tax-bureau").call(
        OPERATOR, "aggregate.add", add, _common.ring_to_bytes(one * 10)
    )
    with pytest.raises(RemoteError) as info:  # another participant cannot take it
        take_aggregate(space.transport("court"), OPERATOR, query="q", block=0)
    assert info.value.status == 404
    total = _common.ring_from_bytes(take_aggregate(analyst, OPERATOR, query="q", block=0), 2)
    assert total.tolist() == [11, 22]
    with pytest.raises(RemoteError) as info:
        take_aggregate(analyst, OPERATOR, query="q", block=0)
    assert info.value.status == 409 and "already released" in info.value.problem["detail"]
    with space.operator.node.store.transaction() as tx:
        kinds = [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, 100))]
    assert kinds.count("aggregate.released") == 1


def test_dealer_survives_a_restart_without_dealing_twice(tmp_path: Path) -> None:
    space = build_space(["court"], sqlite_dir=tmp_path)
    op = space.operator.node
    register_operator(op)
    spec: dict[str, Any] = {
        "session": "q",
        "batch": "court.0",
        "parties": [ANALYST, "court"],
        "left": (3, 2),
        "right": (2,),
    }
    share = fetch_triple(space.transport(ANALYST), OPERATOR, **spec)
    assert share.party == 0 and share.a.shape == (3, 2)
    # Restart: a new compute node over the same store (memory, including the undealt share, gone).
    restarted = ComputeNode(OPERATOR, op.store, op.ledger, transport=op.transport)
    register_operator(restarted)
    space.network.register(OPERATOR, restarted.handle)
    with pytest.raises(RemoteError) as info:
        fetch_triple(space.transport(ANALYST), OPERATOR, **spec)
    assert info.value.status == 409 and "already dealt" in info.value.problem["detail"]
    with pytest.raises(RemoteError) as info:
        fetch_triple(space.transport("court"), OPERATOR, **spec)
    assert info.value.status == 409 and "lost" in info.value.problem["detail"]
    with pytest.raises(RemoteError) as info:  # a party outside the batch
        fetch_triple(
            space.transport("court"),
            OPERATOR,
            **{**spec, "batch": "court.1", "parties": [ANALYST, "tax"]},
        )
    assert info.value.status == 409


def test_registry_by_name() -> None:
    assert sorted(SCORE_PROTOCOLS) == sorted(PROTOCOLS)
    for name in PROTOCOLS:
        assert get_score_protocol(name).name == name
    with pytest.raises(Exception, match="unknown score protocol"):
        get_score_protocol("rot13")


def test_mask_streams_of_different_blocks_never_overlap() -> None:
    from trusted_space.protocols._common import mask_stream

    seed = bytes(range(32))
    a, b = mask_stream(seed, 0, 64), mask_stream(seed, 1, 64)
    shared = set(a.tolist()) & set(b.tolist())
    assert not shared  # a shared counter would make b == a shifted by two words
    assert np.array_equal(mask_stream(seed, 5, 10), mask_stream(seed, 5, 10))
