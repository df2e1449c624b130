"""The serving path in process: several requests in one run, each its own use and result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trusted_space.errors import ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.metering import usage
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols import register_operator, register_provider, run_score
from trusted_space.protocols._common import Memo, loaded_ckks_context
from trusted_space.protocols.base import ScoreProtocol
from trusted_space.protocols.operator import CkksVectorCodec
from trusted_space.protocols.score import (
    MAX_SERVED_ENTITIES,
    ServedRequest,
    StandingKeys,
    check_use_receipt,
    serve_batch,
)
from trusted_space.protocols.score_ckks import CkksProvider
from trusted_space.queries.common import MODES
from trusted_space.queries.score import Link, Model, ScoreQuery

from . import test_score_protocols as joint
from ._joint import ANALYST, OPERATOR, PURPOSE, build_space, grant_consent, offer, provide
from .test_score_protocols import TOLERANCE, make_setup

# The module-scoped keys and the protocol objects holding them, shared with the batch tests.
paillier_keys = joint.paillier_keys
ckks_context = joint.ckks_context
protocols = joint.protocols


def _uses(store: Any) -> list[dict[str, Any]]:
    with store.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        events = [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]
    return [e.body for e in events if e.kind == "query.use"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_request_gets_its_own_scores_and_receipts(
    protocol: str, mode: str, protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(6, {"tax-bureau": 3, "court": 2}, rng)
    query = setup.query(protocol, mode)
    requests = [
        ServedRequest("urn:uuid:r1", (setup.keys[4],)),
        ServedRequest("urn:uuid:r2", (setup.keys[0], setup.keys[2])),
        ServedRequest("urn:uuid:r3", (setup.keys[5],)),
    ]

    outcomes = serve_batch(
        setup.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        query,
        requests,
        protocol=protocols[protocol],
    )
    batch = run_score(
        setup.space.transport(ANALYST),
        ANALYST,
        OPERATOR,
        setup.query(protocol, mode, entities=[e for r in requests for e in r.entities]),
        protocol=protocols[protocol],
    )

    assert [o.id for o in outcomes] == [r.id for r in requests]
    start = 0
    for request, outcome in zip(requests, outcomes, strict=True):
        assert outcome.scored and outcome.entities == request.entities
        expected = -0.75 + setup.expected(list(request.entities))
        assert outcome.logits is not None
        assert float(np.max(np.abs(outcome.logits - expected))) <= TOLERANCE[protocol]
        stop = start + len(request.entities)
        same = batch.logits[start:stop]
        assert float(np.max(np.abs(outcome.logits - same))) <= 2 * TOLERANCE[protocol]
        start = stop
        assert set(outcome.receipts) == set(setup.agreements)
        for p, receipt in outcome.receipts.items():
            body = check_use_receipt(
                receipt,
                participant=p,
                query=request.id,
                analyst=ANALYST,
                agreement=setup.agreements[p],
                dataset=setup.datasets[p],
                entities=request.entities,
            )
            assert body["entities"] == len(request.entities)
    for p in setup.agreements:  # one use per request (and one for the batch run)
        served = [
            u for u in _uses(setup.space.providers[p].node.store) if u["query"] != batch.query_id
        ]
        assert [u["query"] for u in served] == [r.id for r in requests]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_request_refused_by_one_provider_is_answered_alone(
    protocol: str, protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    space = build_space(["tax-bureau", "court"])
    register_operator(space.operator.node)
    keys = [f"ent-{i:05d}" for i in range(4)]
    x = {p: rng.uniform(-2, 2, (4, 2)) for p in ("tax-bureau", "court")}
    w = {p: rng.uniform(-1, 1, 2) for p in x}
    agreements, datasets = {}, {}
    for p in x:
        node = space.providers[p].node
        register_provider(node)
        node.operator = OPERATOR
        names = [f"{p.replace('-', '_')}_{j}" for j in range(2)]
        ds, ag = provide(
            space, p, names, keys, x[p], ds_id=f"ds-{p}", offer_doc=offer(consent=p == "court")
        )
        assert ag is not None
        agreements[p], datasets[p] = ag, ds
    grant_consent(space, "court", [keys[0], keys[2]])  # keys[1] has no consent at the court
    weights = tuple(
        (p, tuple((f"{p.replace('-', '_')}_{j}", float(v)) for j, v in enumerate(w[p]))) for p in x
    )
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol=protocol,
        mode="analyst-held",
        model=Model(0.5, Link("logistic"), weights),
        agreements=agreements,
        datasets=datasets,
        entities=(keys[0],),
    )
    requests = [
        ServedRequest("urn:uuid:a", (keys[0],)),
        ServedRequest("urn:uuid:b", (keys[1],)),
        ServedRequest("urn:uuid:c", (keys[2],)),
    ]

    outcomes = serve_batch(
        space.transport(ANALYST), ANALYST, OPERATOR, query, requests, protocol=protocols[protocol]
    )

    a, b, c = outcomes
    assert a.scored and c.scored and not b.scored
    assert b.logits is None and b.outputs is None
    assert set(b.refusals) == {"court"}
    refusal = b.refusals["court"]
    assert refusal["status"] == 403 and any(
        s["left_operand"] == "consent" for s in refusal["trace"]
    )
    named = {e for s in refusal["trace"] for e in s.get("refused_entities") or ()}
    assert named <= set(b.entities)  # a refusal speaks of its own request's entities only
    assert set(b.receipts) == {"tax-bureau"}  # the tax bureau recorded its use and says so
    for outcome, row in ((a, 0), (c, 2)):
        expected = 0.5 + sum(x[p][row] @ w[p] for p in x)
        assert outcome.logits is not None
        assert abs(float(outcome.logits[0]) - expected) <= TOLERANCE[protocol]
    court_uses = [u["query"] for u in _uses(space.providers["court"].node.store)]
    assert court_uses == ["urn:uuid:a", "urn:uuid:c"]
    for p, metered in (("court", 2), ("tax-bureau", 3)):  # every allowed use counted once
        with space.providers[p].node.store.transaction(readonly=True) as tx:
            assert usage(tx, agreement_id=agreements[p]).total == metered


def test_served_runs_refuse_what_they_cannot_carry(
    protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(3, {"tax-bureau": 2}, rng)
    query = setup.query("additive", "analyst-held")
    transport = setup.space.transport(ANALYST)
    too_many = ServedRequest("r", tuple(f"e{i}" for i in range(MAX_SERVED_ENTITIES + 1)))
    with pytest.raises(Exception, match="at most"):
        serve_batch(transport, ANALYST, OPERATOR, query, [too_many])
    with pytest.raises(Exception, match="no requests"):
        serve_batch(transport, ANALYST, OPERATOR, query, [])
    overlapping = [ServedRequest("r1", (setup.keys[0],)), ServedRequest("r2", (setup.keys[0],))]
    with pytest.raises(Exception, match=r"\$\.entities"):
        serve_batch(transport, ANALYST, OPERATOR, query, overlapping)


def test_standing_keys_are_kept_then_rotated_on_schedule_and_on_demand() -> None:
    now = [0.0]
    keys = StandingKeys("ckks", rotate_after=60.0, clock=lambda: now[0])
    first = keys.protocol()
    now[0] = 59.0
    assert keys.protocol() is first and keys.generation == 1
    now[0] = 60.0
    second = keys.protocol()
    assert second is not first and keys.generation == 2
    keys.rotate()
    assert keys.protocol() is not second and keys.generation == 3
    assert keys.age == 0.0
    with pytest.raises(Exception, match="positive"):
        StandingKeys("additive", rotate_after=0)


@pytest.mark.parametrize("protocol", ["ckks", "paillier"])
def test_a_held_key_encrypts_the_same_weights_once(
    protocol: str, protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(4, {"tax-bureau": 3}, rng)
    query = setup.query(protocol, "analyst-held")
    weights = query.model.weights_of("tax-bureau")
    held = protocols[protocol]  # holds its key, as a standing session's does
    first = held.analyst(query, ["tax-bureau"], {"tax-bureau": 3})
    again = held.analyst(query, ["tax-bureau"], {"tax-bureau": 3})
    payload = first.weights_payload("tax-bureau", weights)

    assert again.weights_payload("tax-bureau", weights) == payload  # made once, sent again
    assert first.weights_payload("tax-bureau", weights + 0.5) != payload
    # Without a held key every query encrypts afresh (its own key, its own ciphertext).
    fresh = type(held)()
    made = [fresh.analyst(query, ["tax-bureau"], {"tax-bureau": 3}) for _ in range(2)]
    assert made[0].weights_payload("tax-bureau", weights) != made[1].weights_payload(
        "tax-bureau", weights
    )


def test_a_memo_keeps_the_last_values_made_and_the_first_of_each_key() -> None:
    memo: Memo[str, object] = Memo(2)
    a, b, c = object(), object(), object()
    assert memo.get("a", lambda: a) is a
    assert memo.get("a", lambda: b) is a  # kept: not made again
    memo.get("b", lambda: b)
    memo.get("a", lambda: c)  # "a" used last: "b" leaves first
    memo.get("c", lambda: c)
    assert len(memo) == 2
    assert memo.get("a", object) is a
    assert memo.get("b", lambda: c) is c  # "b" had left: made again
    with pytest.raises(ValueError):
        Memo(0)


def test_a_ckks_context_is_loaded_once_and_shared_by_provider_and_aggregator(
    protocols: dict[str, ScoreProtocol], rng: np.random.Generator
) -> None:
    setup = make_setup(4, {"tax-bureau": 3}, rng)
    query = setup.query("ckks", "analyst-held")
    side = protocols["ckks"].analyst(query, ["tax-bureau"], {"tax-bureau": 3})
    material, params = side.material(), side.params()
    first = CkksProvider("analyst-held", params, material)
    again = CkksProvider("analyst-held", params, bytes(material))  # equal bytes, another object
    codec = CkksVectorCodec(params, material)
    assert first.context is again.context is codec.context
    assert loaded_ckks_context(material).lock is loaded_ckks_context(bytes(material)).lock
    # Bytes that do not load are refused (a failed load keeps nothing to hand out).
    with pytest.raises(ValidationError, match="ckks context"):
        loaded_ckks_context(material[: len(material) // 2])

    payload = side.weights_payload("tax-bureau", query.model.weights_of("tax-bureau"))
    weights = first.load_weights(payload, 3)
    assert again.load_weights(bytes(payload), 3) is weights  # loaded once per context and bytes
    with pytest.raises(ValidationError, match="expected 4 replicated"):
        first.load_weights(payload, 4)  # a kept vector is still checked against its use
    # The products of a kept vector equal those of a freshly loaded one.
    x = rng.uniform(-1, 1, (5, 3))
    kept = side.decode(0, 5, first.weighted_partial(None, 0, x, weights))  # type: ignore[arg-type]
    fresh = first.context.load_vector(payload)
    direct = side.decode(0, 5, first.weighted_partial(None, 0, x, fresh))  # type: ignore[arg-type]
    expected = x @ query.model.weights_of("tax-bureau")
    assert np.max(np.abs(kept - expected)) <= TOLERANCE["ckks"]
    assert np.max(np.abs(direct - expected)) <= TOLERANCE["ckks"]
