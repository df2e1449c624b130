"""Model binding: the ``model`` operand, the model rules, and owned party-held weights (issue 13).

A score is not a column read: a provider can require that the weights applied to its columns
are party-held (trained with it, or approved by its staff) and satisfy its rules, and zone data
refuses analyst-held weights unless its permission opts in explicitly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ConflictError, NotFoundError, RemoteError, ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.policy import Constraint, Policy, Rule, UsageRequest, decide, from_odrl, to_odrl
from trusted_space.protocols.score import (
    decide_submission,
    load_party_weights,
    model_status,
    register_approval,
    send_model,
    store_party_weights,
    submissions,
    weight_stats,
    weights_digest,
)
from trusted_space.store import MemoryStore

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BANK = "bank-a"
OTHER = "bank-b"
ZONE: dict[str, Any] = {"tier": "zone", "max_grade": 3}
DS = "ds-tax"
PACKED = {"a": 1.0, "b": 2.0**15, "c": 2.0**36, "d": 2.0**39}


def _policy(*extra: Constraint) -> Policy:
    base = (
        Constraint("purpose", "eq", "pre-loan-review"),
        Constraint("computation", "isAnyOf", ("score", "aggregate", "train")),
        Constraint("output", "isAnyOf", ("score", "aggregate")),
    )
    return Policy(
        uid="offer-1", target="ds-tax", assigner="tax", permissions=(Rule((*base, *extra)),)
    )


def _request(model: str | None, stats: dict[str, float] | None = None, kind: str = "score") -> Any:
    return UsageRequest(
        assignee=BANK,
        purpose="pre-loan-review",
        query_kind=kind,
        output="score" if kind == "score" else "aggregate",
        at=AT,
        protocol="paillier",
        model=model,
        model_stats=stats,
    )


def _blocking(decision: Any) -> list[Any]:
    return [s for s in decision.trace if s.blocking]


def test_zone_refuses_analyst_held_weights_without_an_explicit_opt_in() -> None:
    decision = decide(MemoryStore(), _policy(), _request("analyst-held"), **ZONE)
    assert not decision.allowed
    (step,) = _blocking(decision)
    assert (step.left_operand, step.seen, step.outcome) == ("model", "analyst-held", "violated")
    assert "explicit opt-in" in step.message


def test_zone_allows_analyst_held_weights_when_the_permission_opts_in() -> None:
    policy = _policy(Constraint("model", "isAnyOf", ("analyst-held", "party-held")))
    assert decide(MemoryStore(), policy, _request("analyst-held"), **ZONE).allowed


def test_outside_zone_analyst_held_needs_no_opt_in() -> None:
    request = _request("analyst-held")
    assert decide(MemoryStore(), _policy(), request, tier="conditional", max_grade=2).allowed


@pytest.mark.parametrize("source", ["trained", "approved"])
def test_party_held_matches_trained_and_approved(source: str) -> None:
    policy = _policy(Constraint("model", "eq", "party-held"))
    assert decide(MemoryStore(), policy, _request(source), **ZONE).allowed


def test_require_party_held_refuses_analyst_held_naming_the_rule() -> None:
    policy = _policy(Constraint("model", "eq", "party-held"))
    decision = decide(MemoryStore(), policy, _request("analyst-held"), **ZONE)
    assert not decision.allowed
    (step,) = _blocking(decision)
    assert step.left_operand == "model" and step.right_operand == "party-held"
    assert "not accepted here" in decision.reason


def test_approved_only_refuses_trained_weights() -> None:
    policy = _policy(Constraint("model", "eq", "approved"))
    assert not decide(MemoryStore(), policy, _request("trained"), **ZONE).allowed


def test_a_score_without_a_model_mode_is_refused() -> None:
    policy = _policy(Constraint("model", "eq", "party-held"))
    assert not decide(MemoryStore(), policy, _request(None), **ZONE).allowed


def test_model_constraints_do_not_apply_to_other_kinds() -> None:
    policy = _policy(
        Constraint("model", "eq", "party-held"), Constraint("modelMinColumns", "gteq", 3)
    )
    decision = decide(MemoryStore(), policy, _request(None, kind="train"), **ZONE)
    assert decision.allowed
    steps = [s for s in decision.trace if s.left_operand.startswith("model")]
    assert {s.outcome for s in steps} == {"not_applicable"}


@pytest.mark.parametrize(
    ("rule", "stats", "allowed"),
    [
        (Constraint("modelMinColumns", "gteq", 3), {"columns": 3.0}, True),
        (Constraint("modelMinColumns", "gteq", 3), {"columns": 1.0}, False),
        (Constraint("modelMaxWeight", "lteq", "4"), {"maxWeight": 4.0}, True),
        (Constraint("modelMaxWeight", "lteq", "4"), {"maxWeight": 2.0**39}, False),
        (Constraint("modelMaxShare", "lteq", "0.6"), {"maxShare": 0.5}, True),
        (Constraint("modelMaxShare", "lteq", "0.6"), {"maxShare": 1.0}, False),
    ],
)
def test_model_rules_name_the_rule_a_model_broke(
    rule: Constraint, stats: dict[str, float], allowed: bool
) -> None:
    full = {"columns": 4.0, "maxWeight": 1.0, "maxShare": 0.3, **stats}
    policy = _policy(Constraint("model", "eq", "party-held"), rule)
    decision = decide(MemoryStore(), policy, _request("trained", full), **ZONE)
    assert decision.allowed is allowed
    if not allowed:
        (step,) = _blocking(decision)
        assert step.left_operand == rule.left_operand
        assert rule.left_operand in step.message


def test_model_rules_cannot_hold_for_analyst_held_weights() -> None:
    policy = _policy(
        Constraint("model", "isAnyOf", ("analyst-held", "party-held")),
        Constraint("modelMaxWeight", "lteq", "4"),
    )
    decision = decide(MemoryStore(), policy, _request("analyst-held"), **ZONE)
    assert not decision.allowed
    (step,) = _blocking(decision)
    assert step.left_operand == "modelMaxWeight" and "cannot check" in step.message


def test_model_operands_round_trip_and_bad_values_are_refused() -> None:
    policy = _policy(
        Constraint("model", "eq", "party-held"),
        Constraint("modelMinColumns", "gteq", 2),
        Constraint("modelMaxWeight", "lteq", "8"),
        Constraint("modelMaxShare", "lteq", "0.5"),
    )
    assert from_odrl(to_odrl(policy)) == policy
    doc = to_odrl(policy)
    for bad, where in (
        ({"leftOperand": "model", "operator": "eq", "rightOperand": "mine"}, "unknown model"),
        ({"leftOperand": "modelMaxShare", "operator": "lteq", "rightOperand": "1.5"}, "(0, 1]"),
        ({"leftOperand": "modelMinColumns", "operator": "lteq", "rightOperand": "2"}, "sense"),
    ):
        broken = {**doc, "permission": [{**doc["permission"][0], "constraint": [bad]}]}
        with pytest.raises(ValidationError, match=where.replace("(", r"\(").replace("]", r"\]")):
            from_odrl(broken)


# --- what the provider measures of weights on its rows ----------------------------------------


def test_unit_weight_on_one_column_has_all_the_variance(rng: np.random.Generator) -> None:
    x = rng.normal(size=(500, 4))
    stats = weight_stats({"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}, [x])
    assert stats == {"columns": 1.0, "maxWeight": 1.0, "maxShare": pytest.approx(1.0)}


def test_packed_weights_break_the_share_and_weight_rules(rng: np.random.Generator) -> None:
    x = rng.integers(0, 1000, size=(500, 4)).astype(np.float64)
    stats = weight_stats(PACKED, [x[:200], x[200:]])
    assert stats["columns"] == 4
    assert stats["maxWeight"] == 2.0**39
    assert stats["maxShare"] > 0.9


def test_balanced_weights_spread_the_variance(rng: np.random.Generator) -> None:
    x = rng.normal(size=(2000, 4))
    stats = weight_stats({"a": 0.5, "b": -0.5, "c": 0.5, "d": 0.5}, [x])
    assert stats["maxShare"] < 0.4


@given(st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=6))
def test_shares_are_within_zero_and_one(weights: list[float]) -> None:
    x = np.arange(len(weights) * 30, dtype=np.float64).reshape(30, len(weights)) % 7
    x[:, 0] = np.arange(30) % 5
    stats = weight_stats({f"c{i}": w for i, w in enumerate(weights)}, [x])
    assert 0.0 <= stats["maxShare"] <= 1.0
    assert stats["columns"] == sum(1 for w in weights if w != 0)


# --- owned party-held weights -------------------------------------------------------------------


def test_party_held_weights_are_found_only_by_their_owner() -> None:
    store = MemoryStore()
    store_party_weights(store, BANK, "credit-lr", {"a": 0.5, "b": -1.0})
    model = load_party_weights(store, BANK, "credit-lr")
    assert model.weights == {"a": 0.5, "b": -1.0}
    assert model.sha256 == weights_digest({"a": 0.5, "b": -1.0})
    with pytest.raises(NotFoundError, match="no model 'credit-lr' of yours"):
        load_party_weights(store, OTHER, "credit-lr")


def test_another_member_training_under_the_same_id_never_replaces_the_weights() -> None:
    store = MemoryStore()
    store_party_weights(store, BANK, "credit-lr", {"a": 0.5, "b": -1.0})
    store_party_weights(store, OTHER, "credit-lr", {"a": 9.0, "b": 9.0})
    assert load_party_weights(store, BANK, "credit-lr").weights == {"a": 0.5, "b": -1.0}
    assert load_party_weights(store, OTHER, "credit-lr").weights == {"a": 9.0, "b": 9.0}


def test_a_stored_model_is_never_overwritten_even_by_its_owner() -> None:
    store = MemoryStore()
    store_party_weights(store, BANK, "credit-lr", {"a": 0.5})
    store_party_weights(store, BANK, "credit-lr", {"a": 0.5})  # the same weights: a no-op
    with pytest.raises(ConflictError, match="one set of weights"):
        store_party_weights(store, BANK, "credit-lr", {"a": 0.7})
    assert load_party_weights(store, BANK, "credit-lr").weights == {"a": 0.5}


def test_the_ledger_records_the_owner_and_digest_never_the_weights() -> None:
    store = MemoryStore()
    store_party_weights(store, BANK, "credit-lr", {"a": 0.123456789})
    with store.transaction(readonly=True) as tx:
        entries = tx.log_entries(EVENT_LOG, 0, tx.log_size(EVENT_LOG))
    events = [decode_event(i, e) for i, e in enumerate(entries)]
    (stored,) = [e for e in events if e.kind == "model.stored"]
    assert stored.body["owner"] == BANK
    assert stored.body["sha256"] == weights_digest({"a": 0.123456789})
    assert "0.123456789" not in repr(stored)


# --- submitted model parts (in-process space; the real-node flow is in tests/integration) -----


def _approval_space(rng: np.random.Generator, rules: list[dict[str, Any]]) -> tuple[Any, str]:
    from tests.trusted_space._joint import ANALYST as analyst
    from tests.trusted_space._joint import build_space, offer, provide

    space = build_space(("tax-bureau",))
    doc = offer(models=("party-held",))
    doc["permission"][0]["constraint"].extend(rules)
    node = space.providers["tax-bureau"].node
    register_approval(node)
    keys = [f"ent-{i}" for i in range(40)]
    _, agreement = provide(
        space,
        "tax-bureau",
        ["a", "b", "c"],
        keys,
        rng.normal(size=(40, 3)),
        offer_doc=doc,
        ds_id=DS,
    )
    assert agreement is not None and analyst == "bank-a"
    return space, agreement


def _rule(left: str, op: str, value: str) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": value}


def test_a_submitted_part_is_pending_until_the_staff_approve_it(rng: np.random.Generator) -> None:
    space, agreement = _approval_space(rng, [_rule("modelMinColumns", "gteq", "2")])
    bank = space.transport(BANK)
    store = space.analyst.node.store
    provider = space.providers["tax-bureau"].node.store

    sent = send_model(bank, store, "tax-bureau", "m1", agreement, DS, {"a": 0.5, "b": -0.3})
    pending = model_status(bank, store, "tax-bureau", "m1")
    with pytest.raises(NotFoundError):
        load_party_weights(provider, BANK, "m1")  # not usable before approval
    decided = decide_submission(provider, BANK, "m1", approve=True, reason="reviewed")
    approved = model_status(bank, store, "tax-bureau", "m1")

    assert sent["state"] == pending["state"] == "pending"
    assert decided.state == approved["state"] == "approved"
    model = load_party_weights(provider, BANK, "m1")
    assert model.source == "approved" and model.sha256 == sent["sha256"]
    with pytest.raises(ConflictError, match="already approved"):
        decide_submission(provider, BANK, "m1", approve=False, reason="changed my mind")


def test_a_part_breaking_a_rule_is_refused_naming_it_and_nothing_is_kept(
    rng: np.random.Generator,
) -> None:
    space, agreement = _approval_space(
        rng, [_rule("modelMinColumns", "gteq", "2"), _rule("modelMaxWeight", "lteq", "4")]
    )
    bank = space.transport(BANK)

    with pytest.raises(RemoteError) as info:
        send_model(
            bank,
            space.analyst.node.store,
            "tax-bureau",
            "m2",
            agreement,
            DS,
            {"a": 2.0**15},
        )

    blocking = [s["left_operand"] for s in info.value.problem["trace"] if s["blocking"]]
    assert info.value.status == 403 and blocking == ["modelMinColumns", "modelMaxWeight"]
    assert submissions(space.providers["tax-bureau"].node.store) == []


def test_a_part_under_another_members_agreement_or_unknown_columns_is_refused(
    rng: np.random.Generator,
) -> None:
    space, agreement = _approval_space(rng, [])
    store = space.analyst.node.store
    as_other = space.transport("court")  # a member that holds no agreement for this dataset

    with pytest.raises(RemoteError) as other:
        send_model(as_other, store, "tax-bureau", "m3", agreement, DS, {"a": 1.0})
    with pytest.raises(RemoteError) as unknown:
        send_model(
            space.transport(BANK),
            store,
            "tax-bureau",
            "m3",
            agreement,
            DS,
            {"secret_col": 1.0},
        )

    assert other.value.status == 403
    assert unknown.value.status == 400 and "offers no column" in str(unknown.value)
