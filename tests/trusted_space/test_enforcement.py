"""The provider's enforcement point: every refusal is ledgered with its trace; uses get receipts."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest

from trusted_space.catalog import Field, FieldType
from trusted_space.commitments import verify_opening
from trusted_space.contracts import deliver, load_negotiation, offer_for
from trusted_space.enforcement import UseRequest, authorize_use, entities_digest
from trusted_space.errors import RefusedError, ValidationError
from trusted_space.events import EVENT_LOG, Event, decode_event
from trusted_space.ledger import Receipt, verify_receipt
from trusted_space.metering import usage

from ._joint import ANALYST, PURPOSE, Space, build_space, grant_consent, offer, provide

PROVIDER = "tax-bureau"
ENTITIES = ("91350100M000100Y43", "e-2", "e-3")


def events(space: Space, provider: str = PROVIDER) -> list[Event]:
    with space.providers[provider].node.store.transaction() as tx:
        size = tx.log_size(EVENT_LOG)
        return [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]


def request(ds: str, ag: str, **kw: Any) -> UseRequest:
    fields: dict[str, Any] = {
        "query_id": "urn:uuid:q-1",
        "analyst": ANALYST,
        "agreement_id": ag,
        "dataset_id": ds,
        "columns": ("tax_paid", "employees"),
        "kind": "score",
        "purpose": PURPOSE,
        "protocol": "paillier",
        "entities": ENTITIES,
        "model": "analyst-held",
    } | kw
    return UseRequest(**fields)


def setup(**offer_kw: Any) -> tuple[Space, str, str]:
    space = build_space([PROVIDER])
    ds, ag = provide(
        space,
        PROVIDER,
        ["tax_paid", "employees"],
        list(ENTITIES),
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        offer_doc=offer(**offer_kw),
        extra_fields=[Field("region", FieldType.STRING, 1)],
    )
    assert ag is not None
    return space, ds, ag


def _named(entity: str, text: str) -> bool:
    """``entity`` appears in ``text`` as an id of its own, not inside another token."""
    return re.search(rf"(?<![\w-]){re.escape(entity)}(?![\w-])", text) is not None


def refused(space: Space, req: UseRequest) -> RefusedError:
    """Assert a refusal with a trace whose decision is on the ledger (committed), and no use."""
    before = len(events(space))
    with pytest.raises(RefusedError) as info:
        authorize_use(space.providers[PROVIDER].node, req)
    err = info.value
    after = events(space)
    new = after[before:]
    assert [e.kind for e in new if e.kind in ("policy.decision", "query.use")] == [
        "policy.decision"
    ]
    decision = after[err.decision_index] if err.decision_index is not None else None
    assert decision is not None and decision.kind == "policy.decision"
    assert decision.body["allowed"] is False
    # The ledger's copy names no entity; the refused analyst's does. Only the entities the reason
    # names are redacted: an agreement id such as "…-4b9e-2c1f-…" holds "e-2" by chance, and the
    # node leaves a reason that names no entity as it is.
    public_reason = err.reason
    for entity in ENTITIES:
        if _named(entity, err.reason):
            public_reason = public_reason.replace(entity, "[entity]")
    assert decision.body["reason"] == public_reason
    public = json.dumps(decision.body)
    assert not any(_named(e, public) for e in ENTITIES)
    assert err.trace and any(step["blocking"] for step in err.trace)
    assert err.participant == PROVIDER
    assert err.problem["trace"] == err.trace
    return err


def test_allowed_use_is_recorded_with_a_verifiable_receipt() -> None:
    space, ds, ag = setup()
    node = space.providers[PROVIDER].node
    grant = authorize_use(node, request(ds, ag))
    assert grant.entities == ENTITIES
    assert grant.dataset.dataset.id == ds
    log = events(space)
    use = log[grant.use_index]
    assert use.kind == "query.use"
    assert use.body["query"] == "urn:uuid:q-1"
    assert use.body["analyst"] == ANALYST
    assert use.body["agreement"] == ag
    assert use.body["dataset"] == ds
    assert use.body["columns"] == ["tax_paid", "employees"]
    assert use.body["protocol"] == "paillier"
    assert use.body["kind"] == "score"
    assert use.body["entities"] == 3
    assert "entities_sha256" not in use.body  # an unsalted digest is confirmed by guessing
    opening = grant.receipt["openings"]["entities_commitment"]
    assert verify_opening(use.body["entities_commitment"], opening, entities_digest(ENTITIES))
    assert not verify_opening(
        use.body["entities_commitment"], opening, entities_digest(ENTITIES[:2])
    )
    assert entities_digest(ENTITIES) not in str(use.body)
    assert not any(e in str(use.body) for e in ENTITIES)  # the ids themselves are never logged
    assert log[grant.decision_index].kind == "policy.decision"
    assert log[grant.decision_index].body["allowed"] is True
    receipt = Receipt.from_json(
        {k: v for k, v in grant.receipt.items() if k not in ("vkey", "participant")}
    )
    assert grant.receipt["vkey"] == node.ledger.vkey
    assert grant.receipt["participant"] == PROVIDER
    head = verify_receipt(
        receipt.checkpoint, node.ledger.vkey, receipt.entry, receipt.index, receipt.proof
    )
    assert head.size > grant.use_index
    assert decode_event(receipt.index, receipt.entry).kind == "query.use"
    with node.store.transaction() as tx:
        assert usage(tx, agreement_id=ag).count("score") == 1


def test_wrong_assignee_refused() -> None:
    space, ds, ag = setup()
    err = refused(space, request(ds, ag, analyst="bank-b"))
    assert "assignee" in err.reason


def test_unknown_agreement_refused() -> None:
    space, ds, _ = setup()
    err = refused(space, request(ds, "urn:uuid:no-such-agreement"))
    assert "not known" in err.reason


def test_not_finalized_refused() -> None:
    space = build_space([PROVIDER])
    ds, _ = provide(space, PROVIDER, ["tax_paid", "employees"], ["e"], [[1, 2]], negotiate=False)
    provider = space.providers[PROVIDER].negotiator
    consumer = space.analyst.negotiator
    out = consumer.request(PROVIDER, offer_for(ds, offer()))
    deliver(consumer, out, provider)
    with consumer.store.transaction() as tx:
        provider_pid = load_negotiation(tx, out.pending.consumer_pid).provider_pid
    deliver(provider, provider.agree(provider_pid), consumer)
    deliver(consumer, consumer.verify(out.pending.consumer_pid), provider)  # VERIFIED, not final
    signed = consumer.negotiation(out.pending.consumer_pid).signed_agreement()
    assert signed is not None
    err = refused(space, request(ds, signed.id, entities=("e",)))
    assert "VERIFIED, not FINALIZED" in err.reason


def test_expired_agreement_refused() -> None:
    space, ds, ag = setup()
    node = space.providers[PROVIDER].node
    now = space.clock()
    node.clock = lambda: now + timedelta(days=60)  # the agreement is valid for 30 days
    err = refused(space, request(ds, ag))
    assert "outside the agreement's validity window" in err.reason


def test_wrong_dataset_refused() -> None:
    space, _, ag = setup()
    other, _ = provide(
        space,
        PROVIDER,
        ["tax_paid", "employees"],
        list(ENTITIES),
        [[0, 0]] * 3,
        ds_id="urn:uuid:ds-other",
        offer_doc=offer(2),
        negotiate=False,
    )
    err = refused(space, request(other, ag))
    assert "is not the agreement's target" in err.reason


@pytest.mark.parametrize(
    ("columns", "why"),
    [(("nope",), "has no column"), (("region",), "not numeric"), (("entity",), "entity key")],
)
def test_bad_columns_refused(columns: tuple[str, ...], why: str) -> None:
    space, ds, ag = setup()
    err = refused(space, request(ds, ag, columns=columns))
    assert why in err.reason


def test_purpose_not_permitted_refused() -> None:
    space, ds, ag = setup()
    err = refused(space, request(ds, ag, purpose="marketing"))
    assert "purpose" in err.reason
    steps = [s for s in err.trace if s["blocking"]]
    assert steps[0]["left_operand"] == "purpose" and steps[0]["seen"] == "marketing"


def test_protocol_not_permitted_refused() -> None:
    space, ds, ag = setup(protocols=("paillier",))
    err = refused(space, request(ds, ag, protocol="ckks"))
    assert "ckks" in err.reason
    assert any(s["left_operand"] == "protocol" and s["blocking"] for s in err.trace)


def test_kind_not_permitted_refused() -> None:
    space, ds, ag = setup(kinds=("aggregate",))
    err = refused(space, request(ds, ag))
    assert any(s["left_operand"] == "computation" and s["blocking"] for s in err.trace)


def test_count_exhausted_refused() -> None:
    space, ds, ag = setup(count=2)
    node = space.providers[PROVIDER].node
    authorize_use(node, request(ds, ag))
    authorize_use(node, request(ds, ag))
    err = refused(space, request(ds, ag))
    assert any(s["left_operand"] == "count" and s["blocking"] for s in err.trace)


def test_consent_missing_for_one_entity_refused() -> None:
    space, ds, ag = setup(consent=True)
    grant_consent(space, PROVIDER, ENTITIES[:2])
    err = refused(space, request(ds, ag))
    consent_steps = [s for s in err.trace if s["left_operand"] == "consent"]
    assert consent_steps and consent_steps[0]["refused_entities"] == [ENTITIES[2]]
    grant_consent(space, PROVIDER, ENTITIES[2:])
    grant = authorize_use(space.providers[PROVIDER].node, request(ds, ag))
    assert grant.entities == ENTITIES


def test_min_cohort_applies_to_aggregates() -> None:
    space, ds, ag = setup(min_cohort=10)
    err = refused(space, request(ds, ag, kind="aggregate", entities=(), cohort_size=3))
    assert any(s["left_operand"] == "minCohort" and s["blocking"] for s in err.trace)
    grant = authorize_use(
        space.providers[PROVIDER].node,
        request(ds, ag, kind="aggregate", entities=(), cohort_size=12),
    )
    use = events(space)[grant.use_index]
    assert use.body["entities"] == 12 and use.body["entities_commitment"] is None
    assert "openings" not in grant.receipt


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "transfer"},
        {"protocol": "rot13"},
        {"columns": ()},
        {"columns": ("a", "a")},
        {"analyst": ""},
        {"cohort_size": -1},
        {"epsilon": 0},
    ],
)
def test_malformed_use_request(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request("ds", "ag", **bad)
