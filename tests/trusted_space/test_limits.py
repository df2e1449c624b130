"""Limits no renegotiation resets, required noise, per-entity budgets and agreement standing.

Unit tests of the policy engine and the standing record; the attacks across real node processes
are in ``tests/integration/test_limits.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trusted_space.contracts import agreement_standing, change_standing
from trusted_space.contracts.granting import (
    grant_mode,
    hold,
    holds,
    offer_admits,
    release_hold,
    set_grant_mode,
)
from trusted_space.errors import ConflictError, ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.policy import (
    Constraint,
    Decision,
    Policy,
    Rule,
    UsageRequest,
    decide,
    from_odrl,
    to_odrl,
)
from trusted_space.store import MemoryStore

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BANK = "did:web:bank-a.example"
TAX = "did:web:tax.example"
DATASET = "urn:uuid:dataset-1"
OFFER = "urn:uuid:offer-1"
E1, E2, E3 = "91350100M000100Y43", "91110000802100433B", "9111000071093123XJ"
OPEN: dict[str, Any] = {"tier": "unconditional", "max_grade": 1}


def agreement(uid: str, *constraints: Constraint) -> Policy:
    """An agreement granted to BANK from OFFER (each renegotiation has a new uid)."""
    return Policy(
        uid=uid,
        target=DATASET,
        assigner=TAX,
        permissions=(Rule(constraints=constraints, uid="perm-0"),),
        kind="Agreement",
        assignee=BANK,
    )


def request(agreement_id: str, **changes: Any) -> UsageRequest:
    base = UsageRequest(
        assignee=BANK,
        purpose="pre-loan-review",
        query_kind="score",
        output="score",
        at=AT,
        protocol="ckks",
        agreement_id=agreement_id,
        entities=(E1, E2),
        offer_id=OFFER,
    )
    return replace(base, **changes)


def blocking(decision: Decision) -> list[str]:
    return [s.left_operand for s in decision.trace if s.blocking]


# -- count across agreements ----------


def test_a_renegotiated_agreement_continues_the_count() -> None:
    store = MemoryStore()
    count = Constraint("count", "lteq", 2)
    first, second = agreement("urn:uuid:a1", count), agreement("urn:uuid:a2", count)

    outcomes = [decide(store, first, request("urn:uuid:a1"), **OPEN).allowed for _ in range(2)]
    renegotiated = decide(store, second, request("urn:uuid:a2"), **OPEN)

    assert outcomes == [True, True]
    assert not renegotiated.allowed
    assert blocking(renegotiated) == ["count"]
    assert "renegotiating does not reset it" in renegotiated.reason


def test_another_offer_or_member_has_its_own_count() -> None:
    store = MemoryStore()
    count = Constraint("count", "lteq", 1)
    policy = agreement("urn:uuid:a1", count)
    assert decide(store, policy, request("urn:uuid:a1"), **OPEN).allowed

    other_offer = decide(store, policy, request("urn:uuid:a1", offer_id="urn:uuid:o2"), **OPEN)
    other_member = decide(
        store,
        replace(policy, assignee="did:web:bank-b.example"),
        request("urn:uuid:a1", assignee="did:web:bank-b.example"),
        **OPEN,
    )

    assert other_offer.allowed and other_member.allowed


class CountAcrossAgreements(RuleBasedStateMachine):
    """Any sequence of renegotiations and uses: exactly N uses are ever allowed per offer."""

    LIMIT = 4

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.agreements = ["urn:uuid:a0"]
        self.allowed = 0

    @rule()
    def renegotiate(self) -> None:
        self.agreements.append(f"urn:uuid:a{len(self.agreements)}")

    @rule(which=st.integers(min_value=0, max_value=50))
    def use(self, which: int) -> None:
        uid = self.agreements[which % len(self.agreements)]
        policy = agreement(uid, Constraint("count", "lteq", self.LIMIT))
        decision = decide(self.store, policy, request(uid), **OPEN)
        assert decision.allowed == (self.allowed < self.LIMIT)
        self.allowed += decision.allowed

    @invariant()
    def never_more_than_the_limit(self) -> None:
        assert self.allowed <= self.LIMIT


TestCountAcrossAgreements = CountAcrossAgreements.TestCase


# -- required noise ----------


def _aggregate(agreement_id: str, epsilon: float | None) -> UsageRequest:
    return request(
        agreement_id,
        query_kind="aggregate",
        output="aggregate",
        entities=(),
        cohort_size=20,
        epsilon=epsilon,
    )


def test_the_exact_aggregate_is_refused_when_noise_is_required() -> None:
    store = MemoryStore()
    policy = agreement(
        "urn:uuid:a1",
        Constraint("epsilon", "lteq", "0.5"),
        Constraint("epsilonTotal", "lteq", "2"),
    )

    exact = decide(store, policy, _aggregate("urn:uuid:a1", None), **OPEN)
    too_much = decide(store, policy, _aggregate("urn:uuid:a1", 0.6), **OPEN)
    noisy = decide(store, policy, _aggregate("urn:uuid:a1", 0.5), **OPEN)
    score = decide(store, policy, request("urn:uuid:a1"), **OPEN)

    assert not exact.allowed and blocking(exact) == ["epsilon"]
    assert "exact aggregate is refused" in exact.reason
    assert not too_much.allowed and blocking(too_much) == ["epsilon"]
    assert noisy.allowed
    assert score.allowed  # epsilon applies to aggregates only
    assert {s.outcome for s in score.trace if s.left_operand.startswith("epsilon")} == {
        "not_applicable"
    }


@given(st.decimals(min_value="0.000001", max_value="1000", places=6))
def test_epsilon_operands_survive_odrl(value: Any) -> None:
    text = format(value.normalize(), "f")
    policy = agreement(
        "urn:uuid:a1",
        Constraint("epsilon", "lteq", text),
        Constraint("epsilonTotal", "lteq", text),
        Constraint("entityCount", "lteq", 3),
        Constraint("entityPeriod", "eq", "P30D"),
    )
    assert from_odrl(to_odrl(policy)) == policy


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("epsilon", "0"),
        ("epsilon", "-1"),
        ("epsilon", "abc"),
        ("epsilon", 1),
        ("entityPeriod", "PT0S"),
    ],
)
def test_bad_limit_operands_are_refused_when_parsed(left: str, right: Any) -> None:
    doc = to_odrl(agreement("urn:uuid:a1"))
    operator = "eq" if left == "entityPeriod" else "lteq"
    doc["permission"][0]["constraint"] = [
        {"leftOperand": left, "operator": operator, "rightOperand": right}
    ]
    with pytest.raises(ValidationError, match="rightOperand"):
        from_odrl(doc)


# -- per-entity budgets ----------


def test_an_entity_is_scored_at_most_n_times_per_period_and_not_named() -> None:
    store = MemoryStore()
    policy = agreement(
        "urn:uuid:a1",
        Constraint("entityCount", "lteq", 2),
        Constraint("entityPeriod", "eq", "P1D"),
    )

    twice = [decide(store, policy, request("urn:uuid:a1"), **OPEN).allowed for _ in range(2)]
    third = decide(store, policy, request("urn:uuid:a1", entities=(E1, E3)), **OPEN)
    fresh = decide(store, policy, request("urn:uuid:a1", entities=(E3,)), **OPEN)
    renegotiated = decide(
        store,
        agreement("urn:uuid:a2", *policy.permissions[0].constraints),
        request("urn:uuid:a2", entities=(E2,)),
        **OPEN,
    )
    next_day = decide(store, policy, request("urn:uuid:a1", at=AT + timedelta(days=1)), **OPEN)

    assert twice == [True, True]
    assert not third.allowed and blocking(third) == ["entityCount"]
    step = next(s for s in third.trace if s.left_operand == "entityCount")
    assert step.seen == {"entities": 2, "over": 1}
    assert not renegotiated.allowed  # the count is the member's, not the agreement's
    assert fresh.allowed  # E3 was not counted by the refused request
    assert next_day.allowed
    with store.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        bodies = [decode_event(i, e).body for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]
    refusal = next(b for b in bodies if not b["allowed"])
    assert E1 not in json.dumps(refusal["trace"]) and E1 not in refusal["reason"]


def test_entity_count_needs_named_entities() -> None:
    store = MemoryStore()
    policy = agreement("urn:uuid:a1", Constraint("entityCount", "lteq", 5))

    cohort = decide(store, policy, request("urn:uuid:a1", entities=()), **OPEN)

    assert not cohort.allowed and blocking(cohort) == ["entityCount"]


# -- agreement standing ----------


def test_standing_transitions_are_ledgered_and_terminated_is_final() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        assert agreement_standing(tx, "urn:uuid:a1").standing == "active"
        change_standing(tx, "urn:uuid:a1", "suspended", reason="review", at=AT)
        change_standing(tx, "urn:uuid:a1", "active", reason="cleared", at=AT)
        change_standing(tx, "urn:uuid:a1", "terminated", reason="ended", at=AT)
        assert agreement_standing(tx, "urn:uuid:a1").standing == "terminated"
        with pytest.raises(ConflictError):
            change_standing(tx, "urn:uuid:a1", "active", reason="undo", at=AT)
        with pytest.raises(ValidationError):
            change_standing(tx, "urn:uuid:a2", "suspended", reason=" ", at=AT)
        size = tx.log_size(EVENT_LOG)
        kinds = [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]
    assert kinds == ["agreement.standing"] * 3


# -- traces show what decided ----------


class NoConsent:
    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool:
        return False

    def missing_consents(
        self, entities: Any, grantee: str, purpose: str, at: datetime
    ) -> list[str]:
        return list(entities)


def test_a_permission_for_another_kind_of_use_does_not_block_a_refusal() -> None:
    store = MemoryStore()
    scores = Rule(
        constraints=(
            Constraint("computation", "eq", "score"),
            Constraint("consent", "eq", "required"),
        ),
        uid="scores",
    )
    training = Rule(
        constraints=(
            Constraint("computation", "eq", "train"),
            Constraint("purpose", "eq", "model-building"),
        ),
        uid="training",
    )
    policy = replace(agreement("urn:uuid:a1"), permissions=(scores, training))

    decision = decide(store, policy, request("urn:uuid:a1"), consent=NoConsent(), **OPEN)

    assert not decision.allowed
    assert [(s.rule_id, s.left_operand) for s in decision.trace if s.blocking] == [
        ("scores", "consent")
    ]
    training_steps = [s for s in decision.trace if s.rule_id == "training"]
    assert training_steps and all(not s.applies and not s.blocking for s in training_steps)
    assert "training" not in decision.reason
    assert [s.to_json()["applies"] for s in training_steps] == [False, False]


def test_when_no_permission_is_for_this_use_its_scope_steps_decide() -> None:
    store = MemoryStore()
    training = Rule(constraints=(Constraint("computation", "eq", "train"),), uid="training")
    policy = replace(agreement("urn:uuid:a1"), permissions=(training,))

    decision = decide(store, policy, request("urn:uuid:a1"), **OPEN)

    assert not decision.allowed
    assert [s.left_operand for s in decision.trace if s.blocking] == ["computation"]
    assert all(s.applies for s in decision.trace)


# -- granting ----------


def test_grant_mode_per_offer_wins_over_the_node_and_changes_are_ledgered() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        assert grant_mode(tx, OFFER) == "auto"
        set_grant_mode(tx, "staff", at=AT)
        set_grant_mode(tx, "policy", offer_id=OFFER, at=AT)
        assert (grant_mode(tx, OFFER), grant_mode(tx, "urn:uuid:other")) == ("policy", "staff")
        with pytest.raises(ValidationError):
            set_grant_mode(tx, "sometimes", at=AT)
        size = tx.log_size(EVENT_LOG)
        kinds = [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]
    assert kinds == ["contracts.grant_mode"] * 2


def test_policy_mode_admits_by_assignee_and_role_only() -> None:
    offer = {
        "permission": [
            {
                "constraint": [
                    {"leftOperand": "role", "operator": "eq", "rightOperand": "bank"},
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"},
                ]
            },
            {"constraint": [{"leftOperand": "assignee", "operator": "eq", "rightOperand": BANK}]},
        ]
    }

    assert offer_admits(offer, "did:web:other.example", {"bank"})  # purpose: not known yet
    assert offer_admits(offer, BANK, set())
    assert not offer_admits(offer, "did:web:other.example", {"consumer"})


def test_a_hold_is_kept_once_and_released_once() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        first = hold(
            tx, pid="p1", consumer=BANK, dataset_id=DATASET, offer_id=OFFER, mode="staff", at=AT
        )
        again = hold(
            tx,
            pid="p1",
            consumer=BANK,
            dataset_id=DATASET,
            offer_id=OFFER,
            mode="policy",
            at=AT + timedelta(hours=1),
        )
        assert again == first and holds(tx) == [first]
        assert release_hold(tx, "p1") and not release_hold(tx, "p1")
        assert holds(tx) == []
