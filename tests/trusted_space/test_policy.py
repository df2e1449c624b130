"""The usage-policy engine: operand matrix, ODRL semantics, ledger, count races, ODRL round trip."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space import commitments, dsp
from trusted_space.errors import GradeFloorError, ValidationError
from trusted_space.events import EVENT_LOG, canonical_json, decode_event
from trusted_space.policy import (
    COUNT_NAMESPACE,
    ODRL_PROFILE,
    PROTOCOLS,
    Constraint,
    Decision,
    Duty,
    DutyDue,
    Policy,
    Rule,
    TraceStep,
    UsageRequest,
    check_grade_floor,
    decide,
    evaluate,
    from_odrl,
    to_odrl,
    trace_digest,
)
from trusted_space.policy.vocabulary import account_key
from trusted_space.store import MemoryStore, SQLiteStore, Store

AT = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BANK = "did:web:bank-a.example"
TAX = "did:web:tax.example"
E1, E2, E3 = "91350100M000100Y43", "91110000802100433B", "9111000071093123XJ"

# The loosest legal grade floor: tests that are not about floors pass it explicitly.
OPEN: dict[str, Any] = {"tier": "unconditional", "max_grade": 1}


class FakeConsent:
    """Consent held for the listed (entity, grantee, purpose) triples only."""

    def __init__(self, granted: set[tuple[str, str, str]]) -> None:
        self.granted = granted

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool:
        return (entity, grantee, purpose) in self.granted

    def missing_consents(
        self, entities: Sequence[str], grantee: str, purpose: str, at: datetime
    ) -> list[str]:
        return [e for e in entities if not self.has_consent(e, grantee, purpose, at)]


ACCOUNT = account_key(BANK, "urn:uuid:dataset-1", "urn:uuid:policy-1")
"""The count account of BANK on the offer below (member, dataset, offer)."""


def request(**changes: Any) -> UsageRequest:
    base = UsageRequest(
        assignee=BANK,
        purpose="pre-loan-review",
        query_kind="score",
        output="score",
        at=AT,
        roles=frozenset({"consumer", "bank"}),
        protocol="ckks",
        agreement_id="urn:uuid:agreement-1",
        cohort_size=None,
        entities=(E1, E2),
    )
    return replace(base, **changes)


def offer(*constraints: Constraint, **changes: Any) -> Policy:
    base = Policy(
        uid="urn:uuid:policy-1",
        target="urn:uuid:dataset-1",
        assigner=TAX,
        permissions=(Rule(constraints=constraints, uid="perm-0"),),
    )
    return replace(base, **changes)


def ledger_body(store: Store, decision: Decision) -> dict[str, Any]:
    assert decision.ledger_index is not None
    with store.transaction() as tx:
        (entry,) = tx.log_entries(EVENT_LOG, decision.ledger_index, decision.ledger_index + 1)
    event = decode_event(decision.ledger_index, entry)
    assert event.kind == "policy.decision"
    return event.body


C = Constraint
ALL_CONSENT = FakeConsent({(E1, BANK, "pre-loan-review"), (E2, BANK, "pre-loan-review")})

# (id, constraint, request changes, expected allowed, expected seen, expected outcome)
MATRIX: list[tuple[str, Constraint, dict[str, Any], bool, Any, str]] = [
    ("assignee-allow", C("assignee", "eq", BANK), {}, True, BANK, "satisfied"),
    ("assignee-deny", C("assignee", "isAnyOf", ["did:web:other"]), {}, False, BANK, "violated"),
    ("role-allow", C("role", "isAllOf", ["bank", "consumer"]), {}, True, ["bank", "consumer"],
     "satisfied"),
    ("role-deny", C("role", "eq", "regulator"), {}, False, ["bank", "consumer"], "violated"),
    ("purpose-allow", C("purpose", "isAnyOf", ["pre-loan-review", "risk-monitoring"]), {}, True,
     "pre-loan-review", "satisfied"),
    ("purpose-deny", C("purpose", "isAnyOf", ["pre-loan-review", "risk-monitoring"]),
     {"purpose": "marketing"}, False, "marketing", "violated"),
    ("purpose-neq-deny", C("purpose", "neq", "marketing"), {"purpose": "marketing"}, False,
     "marketing", "violated"),
    ("dateTime-allow", C("dateTime", "lteq", "2025-12-31T23:59:59Z"), {}, True,
     AT.isoformat(), "satisfied"),
    ("dateTime-deny", C("dateTime", "gteq", "2026-01-01T00:00Z"), {}, False, AT.isoformat(),
     "violated"),
    ("count-allow", C("count", "lteq", 3), {}, True, 1, "satisfied"),
    ("count-deny-no-agreement", C("count", "lteq", 3), {"agreement_id": None}, False, None,
     "violated"),
    ("computation-allow", C("computation", "isAnyOf", ["score", "aggregate"]), {}, True, "score",
     "satisfied"),
    ("computation-deny", C("computation", "eq", "aggregate"), {}, False, "score", "violated"),
    ("protocol-allow", C("protocol", "isNoneOf", ["paillier"]), {}, True, "ckks", "satisfied"),
    ("protocol-deny", C("protocol", "eq", "additive"), {}, False, "ckks", "violated"),
    ("minCohort-allow", C("minCohort", "gteq", 10), {"query_kind": "aggregate",
     "output": "aggregate", "cohort_size": 10}, True, 10, "satisfied"),
    ("minCohort-deny", C("minCohort", "gteq", 10), {"query_kind": "aggregate",
     "output": "aggregate", "cohort_size": 9}, False, 9, "violated"),
    ("minCohort-n/a", C("minCohort", "gteq", 10), {}, True, None, "not_applicable"),
    ("consent-allow", C("consent", "eq", "required"), {}, True,
     {"entities": 2, "consented": 2}, "satisfied"),
    ("consent-deny", C("consent", "eq", "required"), {"purpose": "risk-monitoring"}, False,
     {"entities": 2, "consented": 0}, "violated"),
    ("output-allow", C("output", "isAnyOf", ["score", "aggregate"]), {}, True, "score",
     "satisfied"),
    ("output-deny", C("output", "neq", "raw"), {"output": "raw", "query_kind": "transfer",
     "protocol": None}, False, "raw", "violated"),
    ("retention-duty", C("retention", "lteq", "P30D"), {}, True, None, "not_applicable"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("constraint", "changes", "allowed", "seen", "outcome"),
    [m[1:] for m in MATRIX],
    ids=[m[0] for m in MATRIX],
)
def test_operand_matrix(
    constraint: Constraint, changes: dict[str, Any], allowed: bool, seen: Any, outcome: str
) -> None:
    store = MemoryStore()
    policy = offer(constraint)

    decision = decide(store, policy, request(**changes), ALL_CONSENT, **OPEN)

    assert decision.allowed is allowed
    body = ledger_body(store, decision)
    assert body["allowed"] is allowed
    assert body["policy"] == policy.uid
    assert body["reason"] == decision.reason
    assert body["trace_digest"] == hashlib.sha256(canonical_json(body["trace"])).hexdigest()
    if not decision.refused_entities:  # the ledger's trace is the decision's own
        assert body["trace_digest"] == trace_digest(decision.trace)
    else:  # ... but for the refused ids, which the public entry only commits to
        assert not any(e in json.dumps(body) for e in decision.refused_entities)
    (step,) = [s for s in body["trace"] if s["left_operand"] == constraint.left_operand][:1]
    assert step["rule"] == "permission" and step["index"] == 0 and step["rule_id"] == "perm-0"
    assert step["operator"] == constraint.operator
    assert step["seen"] == seen
    assert step["outcome"] == outcome
    if not allowed:
        assert step["blocking"] is True
        assert decision.reason == step["message"]


def test_refusal_reason_names_value_and_allowed_values() -> None:
    store = MemoryStore()
    policy = offer(C("purpose", "isAnyOf", ["pre-loan-review", "risk-monitoring"]))

    decision = decide(store, policy, request(purpose="marketing"), **OPEN)

    assert decision.reason == (
        "purpose 'marketing' is not any of ['pre-loan-review', 'risk-monitoring']"
    )
    assert decision.duties == (DutyDue("log"),)


def test_prohibition_overrides_permission() -> None:
    store = MemoryStore()
    policy = offer(
        C("purpose", "isAnyOf", ["pre-loan-review", "marketing"]),
        prohibitions=(Rule((C("purpose", "eq", "marketing"),), uid="no-marketing"),),
    )

    refused = decide(store, policy, request(purpose="marketing"), **OPEN)
    allowed = decide(store, policy, request(), **OPEN)

    assert not refused.allowed and allowed.allowed
    assert (
        refused.reason
        == "prohibited by prohibition[0] 'no-marketing': purpose 'marketing' is 'marketing'"
    )
    blocking = [s for s in refused.trace if s.blocking]
    assert [(s.rule, s.left_operand, s.seen) for s in blocking] == [
        ("prohibition", "purpose", "marketing")
    ]
    # The permission held; its step is in the trace but did not block.
    perm = [s for s in refused.trace if s.rule == "permission"]
    assert perm[0].outcome == "satisfied" and not perm[0].blocking


def test_default_deny_without_permissions_and_when_none_applies() -> None:
    store = MemoryStore()
    only_prohibition = offer(
        permissions=(), prohibitions=(Rule((C("purpose", "eq", "marketing"),)),)
    )
    two = offer(
        permissions=(
            Rule((C("purpose", "eq", "risk-monitoring"),), uid="a"),
            Rule((C("output", "eq", "aggregate"),), uid="b"),
        )
    )

    d1 = decide(store, only_prohibition, request(), **OPEN)
    d2 = decide(store, two, request(), **OPEN)

    assert not d1.allowed and d1.trace[-1].rule == "default" and "default deny" in d1.reason
    assert not d2.allowed
    # 'b' was written for aggregates: its step stays in the trace but did not decide this score
    assert d2.reason == (
        "no permission applies: permission[0] 'a': purpose 'pre-loan-review' is not "
        "'risk-monitoring'"
    )
    assert [(s.rule_id, s.blocking, s.applies) for s in d2.trace if s.rule == "permission"] == [
        ("a", True, True),
        ("b", False, False),
    ]


def test_second_permission_grants_and_carries_its_duties() -> None:
    store = MemoryStore()
    policy = offer(
        permissions=(
            Rule((C("purpose", "eq", "risk-monitoring"),), uid="a"),
            Rule(
                (C("purpose", "eq", "pre-loan-review"), C("retention", "lteq", "P30D")),
                duties=(Duty("notify"),),
                uid="b",
            ),
        ),
        obligations=(Duty("delete", (C("deleteAfter", "eq", "P90D"),)),),
    )

    decision = decide(store, policy, request(), **OPEN)

    assert decision.allowed and decision.permission_index == 1
    assert decision.reason == "allowed by permission[1] 'b'"
    assert decision.duties == (
        DutyDue("log"),
        DutyDue("delete", after="P90D"),
        DutyDue("notify", recipient=TAX),
        DutyDue("delete", after="P30D"),
    )
    assert ledger_body(store, decision)["duties"][2] == {
        "action": "notify",
        "recipient": TAX,
        "after": None,
    }


def test_consent_partial_deny_by_default_and_exclude_on_request() -> None:
    store = MemoryStore()
    consent = FakeConsent({(E1, BANK, "pre-loan-review"), (E3, BANK, "pre-loan-review")})
    policy = offer(C("consent", "eq", "required"))
    req = request(entities=(E1, E2, E3))

    denied = decide(store, policy, req, consent, **OPEN)
    partial = decide(store, policy, req, consent, partial_consent="exclude", **OPEN)

    assert not denied.allowed and denied.refused_entities == (E2,)
    assert denied.permitted_entities == ()
    assert "consent missing for 1 of 3 entities" in denied.reason
    assert partial.allowed and partial.partial
    assert partial.refused_entities == (E2,) and partial.permitted_entities == (E1, E3)
    step = next(s for s in partial.trace if s.left_operand == "consent")
    assert step.outcome == "partial" and step.refused_entities == (E2,)
    public = ledger_body(store, partial)
    assert public["refused_entities"]["count"] == 1 and E2 not in json.dumps(public)
    with store.transaction(readonly=True) as tx:
        opening = commitments.opening(tx, public["refused_entities"]["commitment"])
    assert opening is not None and opening["detail"] == [E2]  # the provider's staff can open it


def test_consent_without_registry_or_entities_is_refused() -> None:
    store = MemoryStore()
    policy = offer(C("consent", "eq", "required"))

    no_registry = decide(store, policy, request(), **OPEN)
    no_entities = decide(store, policy, request(entities=()), ALL_CONSENT, **OPEN)

    assert not no_registry.allowed and "no consent registry" in no_registry.reason
    assert not no_entities.allowed and "names no entities" in no_entities.reason


def test_fully_consented_permission_preferred_over_partial() -> None:
    store = MemoryStore()
    consent = FakeConsent({(E1, BANK, "pre-loan-review")})
    policy = offer(
        permissions=(
            Rule((C("consent", "eq", "required"),), uid="needs-consent"),
            Rule((C("output", "eq", "score"),), uid="scores-only"),
        )
    )

    decision = decide(store, policy, request(), consent, partial_consent="exclude", **OPEN)

    assert decision.allowed and decision.permission_index == 1 and not decision.partial


def test_agreement_is_bound_to_its_assignee_and_id() -> None:
    store = MemoryStore()
    agreement = offer(
        C("purpose", "eq", "pre-loan-review"),
        kind="Agreement",
        uid="urn:uuid:agreement-1",
        assignee=BANK,
    )

    ok = decide(store, agreement, request(), **OPEN)
    other = decide(store, agreement, request(assignee="did:web:bank-b.example"), **OPEN)

    assert ok.allowed
    assert not other.allowed
    assert other.reason == "assignee 'did:web:bank-b.example' is not the agreement's " + repr(BANK)


def test_count_is_consumed_only_when_allowed() -> None:
    store = MemoryStore()
    policy = offer(C("count", "lteq", 2), C("purpose", "eq", "pre-loan-review"))

    results = [decide(store, policy, request(purpose="x"), **OPEN).allowed]  # denied: not consumed
    results += [decide(store, policy, request(), **OPEN).allowed for _ in range(3)]

    assert results == [False, True, True, False]
    with store.transaction() as tx:
        assert tx.counter(COUNT_NAMESPACE, ACCOUNT) == 2


def test_evaluate_inside_callers_transaction_rolls_back_together() -> None:
    store = MemoryStore()
    policy = offer(C("count", "lteq", 1))

    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert evaluate(policy, request(), tx=tx, **OPEN).allowed
        raise RuntimeError("the query failed afterwards")

    with store.transaction() as tx:
        assert tx.counter(COUNT_NAMESPACE, ACCOUNT) == 0
        assert tx.log_size(EVENT_LOG) == 0
    assert decide(store, policy, request(), **OPEN).allowed


def test_count_exact_under_concurrency(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "node.db")
    limit, threads = 5, 16
    policy = offer(C("count", "lteq", limit))
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        outcome = decide(store, policy, request(), **OPEN).allowed
        with lock:
            results.append(outcome)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    assert sorted(results) == [False] * (threads - limit) + [True] * limit
    with store.transaction() as tx:
        assert tx.counter(COUNT_NAMESPACE, ACCOUNT) == limit
        entries = tx.log_entries(EVENT_LOG, 0, tx.log_size(EVENT_LOG))
    bodies = [decode_event(i, e).body for i, e in enumerate(entries)]
    assert len(bodies) == threads
    assert sorted(b["uses"] for b in bodies if b["allowed"]) == list(range(1, limit + 1))
    assert all("exceeds count lteq 5" in b["reason"] for b in bodies if not b["allowed"])
    store.close()


# -- grade floors --------------------------------------------------------------------------

ZONE_OK = offer(
    C("computation", "isAnyOf", ["score", "aggregate", "train"]),
    C("output", "isAnyOf", ["score", "aggregate"]),
)
RAW_OK = offer(C("output", "eq", "raw"))


@pytest.mark.parametrize(
    ("policy", "tier", "grade", "error"),
    [
        (RAW_OK, "unconditional", 1, None),
        (RAW_OK, "conditional", 1, None),
        (ZONE_OK, "zone", 1, None),
        (RAW_OK, "unconditional", 2, "tier(s) ['conditional', 'zone'], not 'unconditional'"),
        (RAW_OK, "conditional", 2, None),
        (ZONE_OK, "zone", 2, None),
        (RAW_OK, "conditional", 3, "tier(s) ['zone'], not 'conditional'"),
        (ZONE_OK, "zone", 3, None),
        (ZONE_OK, "zone", 4, None),
        (RAW_OK, "zone", 4, "permits output 'raw'"),
        (offer(C("output", "neq", "raw")), "zone", 3, "must restrict computation"),
        (
            offer(C("output", "neq", "raw"), C("computation", "neq", "score")),
            "zone",
            3,
            "found ['aggregate', 'train', 'transfer']",
        ),
        (offer(C("computation", "eq", "score")), "zone", 4, "permits output 'raw'"),
        (ZONE_OK, "zone", 5, "grade 5 data is never offered"),
    ],
)
def test_grade_floor_table(policy: Policy, tier: str, grade: int, error: str | None) -> None:
    if error is None:
        check_grade_floor(policy, tier, grade)
    else:
        with pytest.raises(GradeFloorError, match=re.escape(error)):
            check_grade_floor(policy, tier, grade)


def test_grade_floor_rejects_unknown_tier_and_grade() -> None:
    with pytest.raises(ValidationError, match="tier"):
        check_grade_floor(ZONE_OK, "open", 1)
    with pytest.raises(ValidationError, match="max_grade"):
        check_grade_floor(ZONE_OK, "zone", 6)


def test_floor_enforced_at_evaluation_even_if_policy_allows_raw() -> None:
    store = MemoryStore()
    edited = offer(C("output", "isAnyOf", ["raw", "score"]))
    raw = request(output="raw", query_kind="transfer", protocol=None)

    refused = decide(store, edited, raw, tier="zone", max_grade=3)
    score = decide(store, edited, request(), tier="zone", max_grade=3)
    grade5 = decide(store, edited, request(), tier="zone", max_grade=5)

    assert not refused.allowed and score.allowed and not grade5.allowed
    assert (
        refused.reason == "output 'raw' is never released for tier 'zone' data (computation only)"
    )
    first = next(s for s in refused.trace if s.blocking)
    assert (first.rule, first.left_operand, first.seen, first.outcome) == (
        "floor",
        "output",
        "raw",
        "violated",
    )
    body = ledger_body(store, refused)
    assert body["trace"][body["trace"].index(first.to_json())]["seen"] == "raw"
    assert grade5.reason == "grade 5 data never leaves"


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (C("spatial", "eq", "EU"), "permission[0].constraint[0].leftOperand: unknown left operand"),
        (C("purpose", "like", "x"), "permission[0].constraint[0].operator: unknown operator"),
        (C("dateTime", "eq", "2025-01-01T00:00Z"), "makes no sense for 'dateTime'"),
        (C("purpose", "lt", "x"), "makes no sense for 'purpose'"),
        (C("count", "lteq", 0), "rightOperand: count needs a positive integer"),
        (C("dateTime", "lt", "2025-01-01T00:00"), "has no time zone"),
        (C("output", "isAnyOf", ["raw", "csv"]), "unknown output value(s) ['csv']"),
        (C("purpose", "isAnyOf", []), "needs a non-empty list"),
        (C("retention", "lteq", "30 days"), "not an ISO 8601 duration"),
        (C("consent", "eq", "yes"), "consent eq takes 'required'"),
    ],
)
def test_model_validation_names_path(constraint: Constraint, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        offer(constraint)


def test_count_not_allowed_in_prohibition_and_not_twice() -> None:
    with pytest.raises(ValidationError, match=r"prohibition\[0\].constraint\[0\].leftOperand"):
        offer(prohibitions=(Rule((C("count", "lteq", 1),)),))
    with pytest.raises(ValidationError, match="appears twice"):
        offer(C("count", "lteq", 1), C("count", "lteq", 2))


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["permission"][0]["constraint"][0].update(leftOperand="spatial"),
         "$.permission[0].constraint[0].leftOperand"),
        (lambda d: d["permission"][0]["constraint"][1].update(operator="isA"),
         "$.permission[0].constraint[1].operator"),
        (lambda d: d["permission"][0]["constraint"][2].update(rightOperand=5),
         "$.permission[0].constraint[2].rightOperand"),
        (lambda d: d["permission"][0]["constraint"][2].update(
            rightOperand={"@value": "x", "@type": "xsd:integer"}),
         "$.permission[0].constraint[2].rightOperand"),
        (lambda d: d["permission"][0]["constraint"][0].pop("operator"),
         "$.permission[0].constraint[0].operator: missing"),
        (lambda d: d["permission"][0].update(action="distribute"), "$.permission[0].action"),
        (lambda d: d["permission"][0].update(refinement=[]), "$.permission[0].refinement"),
        (lambda d: d["permission"][0]["duty"][0].update(action="pay"),
         "$.permission[0].duty[0].action"),
        (lambda d: d["permission"][0]["constraint"].append({"or": []}),
         "$.permission[0].constraint[3]: logical constraints"),
        (lambda d: d.update({"@type": "Set"}), "$.@type"),
        (lambda d: d.update(profile="http://other/profile"), "$.profile"),
        (lambda d: d.pop("target"), "$.target: missing"),
        (lambda d: d.update(permission={}), "$.permission: expected an array"),
        (lambda d: d.update(obligation=[{"action": "delete"}]), "$.obligation[0].constraint"),
    ],
)  # fmt: skip
def test_malformed_odrl_names_json_path(mutate: Any, path: str) -> None:
    doc = to_odrl(
        Policy(
            uid="urn:uuid:p",
            target="urn:uuid:d",
            assigner=TAX,
            permissions=(
                Rule(
                    (
                        C("purpose", "isAnyOf", ["pre-loan-review"]),
                        C("output", "eq", "score"),
                        C("count", "lteq", 10),
                    ),
                    duties=(Duty("notify"),),
                ),
            ),
        )
    )
    broken = copy.deepcopy(doc)
    mutate(broken)

    with pytest.raises(ValidationError) as info:
        from_odrl(broken)

    assert str(info.value).startswith(path.split(":")[0] + ":")
    assert path in str(info.value)


def test_dsp_example_offer_with_unknown_operand_is_refused() -> None:
    example = {
        "@type": "Offer",
        "@id": "urn:uuid:x",
        "target": "urn:uuid:d",
        "assigner": TAX,
        "permission": [
            {"action": "use", "constraint": [{"leftOperand": "spatial", "operator": "eq",
                                              "rightOperand": "_:EU"}]}
        ],
    }  # fmt: skip
    with pytest.raises(ValidationError, match=r"^\$\.permission\[0\]\.constraint\[0\]"):
        from_odrl(example)


def test_dsp_style_plain_datetime_and_integer_forms_are_accepted() -> None:
    doc = {
        "@type": "Offer",
        "@id": "urn:uuid:x",
        "assigner": TAX,
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "dateTime", "operator": "lteq",
                     "rightOperand": "2023-12-31T06:00Z"},
                    {"leftOperand": "count", "operator": "lteq", "rightOperand": "7"},
                ],
            }
        ],
    }  # fmt: skip

    policy = from_odrl(doc, target="urn:uuid:dataset")

    assert policy.target == "urn:uuid:dataset"
    assert policy.permissions[0].constraints[1] == C("count", "lteq", 7)


# -- ODRL round trip ------------------------------------------------------------------------

_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-:", min_size=1, max_size=12)
_words = st.lists(_ids, min_size=1, max_size=3, unique=True)
_stamp = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.isoformat().replace("+00:00", "Z"))
_duration = st.sampled_from(["P30D", "P1Y", "PT12H", "P2W", "P1Y2M3DT4H5M6S"])


def _set_constraint(left: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[Constraint]:
    scalar = st.builds(C, st.just(left), st.sampled_from(["eq", "neq"]), values)
    listed = st.builds(
        C,
        st.just(left),
        st.sampled_from(["isAnyOf", "isNoneOf"] + (["isAllOf"] if left == "role" else [])),
        st.lists(values, min_size=1, max_size=3, unique=True).map(tuple),
    )
    return st.one_of(scalar, listed)


_prohibition_constraints = st.one_of(
    _set_constraint("assignee", _ids),
    _set_constraint("role", _ids),
    _set_constraint("purpose", _ids),
    _set_constraint("computation", st.sampled_from(["score", "aggregate", "train", "transfer"])),
    _set_constraint("protocol", st.sampled_from(PROTOCOLS)),
    _set_constraint("output", st.sampled_from(["score", "aggregate", "raw"])),
    st.builds(C, st.just("dateTime"), st.sampled_from(["lt", "lteq", "gt", "gteq"]), _stamp),
)
_unique_constraints = {
    "count": st.builds(C, st.just("count"), st.sampled_from(["lt", "lteq"]),
                       st.integers(1, 10**6)),
    "minCohort": st.builds(C, st.just("minCohort"), st.sampled_from(["gt", "gteq"]),
                           st.integers(1, 1000)),
    "consent": st.just(C("consent", "eq", "required")),
    "retention": st.builds(C, st.just("retention"), st.just("lteq"), _duration),
}  # fmt: skip
_duties = st.one_of(
    st.builds(Duty, st.sampled_from(["log", "notify"]), st.just(()), st.none() | _ids),
    st.builds(
        Duty,
        st.just("delete"),
        _duration.map(lambda d: (C("deleteAfter", "eq", d),)),
        st.none() | _ids,
    ),
)


@st.composite
def _permission(draw: st.DrawFn) -> Rule:
    plain = draw(st.lists(_prohibition_constraints, max_size=4))
    unique = [draw(s) for name, s in _unique_constraints.items() if draw(st.booleans())]
    mixed = draw(st.permutations(plain + unique))
    return Rule(tuple(mixed), tuple(draw(st.lists(_duties, max_size=2))), draw(st.none() | _ids))


_prohibition = st.builds(
    Rule, st.lists(_prohibition_constraints, max_size=3).map(tuple), st.just(()), st.none() | _ids
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    kind = draw(st.sampled_from(["Offer", "Agreement"]))
    permissions = tuple(draw(st.lists(_permission(), max_size=3)))
    prohibitions = tuple(draw(st.lists(_prohibition, min_size=0 if permissions else 1, max_size=2)))
    return Policy(
        uid="urn:uuid:" + draw(_ids),
        target="urn:uuid:" + draw(_ids),
        assigner=draw(_ids),
        permissions=permissions,
        prohibitions=prohibitions,
        obligations=tuple(draw(st.lists(_duties, max_size=2))),
        kind=kind,
        assignee=draw(_ids) if kind == "Agreement" else draw(st.none() | _ids),
        timestamp=draw(st.none() | _stamp),
    )


@given(policies())
def test_odrl_round_trip_and_dsp_validity(policy: Policy) -> None:
    doc = to_odrl(policy)

    assert from_odrl(doc) == policy
    if policy.kind == "Agreement":
        dsp.validate(
            {
                "@context": dsp.DSP_CONTEXT,
                "@type": "ContractAgreementMessage",
                "providerPid": "urn:uuid:p",
                "consumerPid": "urn:uuid:c",
                "agreement": doc,
            },
            "negotiation/contract-agreement-message",
        )
    else:
        dsp.validate(
            {
                "@context": dsp.DSP_CONTEXT,
                "@type": "ContractRequestMessage",
                "consumerPid": "urn:uuid:c",
                "providerPid": "urn:uuid:p",
                "offer": doc,
            },
            "negotiation/contract-request-message",
        )
        embedded = to_odrl(policy, in_dataset=True)
        dsp.validate(
            {
                "@context": dsp.DSP_CONTEXT,
                "@id": policy.target,
                "@type": "Dataset",
                "hasPolicy": [embedded],
                "distribution": [
                    {
                        "@type": "Distribution",
                        "format": "HttpData-PULL",
                        "accessService": {
                            "@id": "urn:uuid:svc",
                            "@type": "DataService",
                            "endpointURL": "https://tax.example/connector",
                        },
                    }
                ],
            },
            "catalog/dataset",
        )
        assert from_odrl(embedded, target=policy.target) == policy


def test_exported_shape() -> None:
    policy = offer(C("count", "lteq", 10), C("purpose", "isAnyOf", ["pre-loan-review"]))

    doc = to_odrl(policy)

    assert doc == {
        "@id": "urn:uuid:policy-1",
        "@type": "Offer",
        "profile": ODRL_PROFILE,
        "target": "urn:uuid:dataset-1",
        "assigner": TAX,
        "permission": [
            {
                "@id": "perm-0",
                "action": "use",
                "constraint": [
                    {
                        "leftOperand": "count",
                        "operator": "lteq",
                        "rightOperand": {"@value": "10", "@type": "xsd:integer"},
                    },
                    {
                        "leftOperand": "purpose",
                        "operator": "isAnyOf",
                        "rightOperand": ["pre-loan-review"],
                    },
                ],
            }
        ],
    }


def test_trace_step_json_is_complete() -> None:
    step = TraceStep("permission", 0, None, "purpose", "eq", "a", "b", "violated", True, "m")
    assert set(step.to_json()) == {
        "rule",
        "index",
        "rule_id",
        "left_operand",
        "operator",
        "right_operand",
        "seen",
        "outcome",
        "blocking",
        "message",
        "refused_entities",
        "applies",
    }


def test_request_validation() -> None:
    with pytest.raises(ValidationError, match="query_kind"):
        request(query_kind="export")
    with pytest.raises(ValidationError, match="time-zone"):
        request(at=datetime(2025, 1, 1))
