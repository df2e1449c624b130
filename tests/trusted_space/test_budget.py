"""Privacy budgets: exact micro-epsilon accounting, a hard limit, no overspending under races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trusted_space.budget import (
    LIMIT_NAMESPACE,
    MICRO,
    BudgetCharge,
    budget_limit,
    budget_status,
    charge,
    check_budget,
    from_micro,
    record_refusal,
    remaining,
    reset_budget,
    set_budget,
    spent,
    to_micro,
)
from trusted_space.errors import LimitExceededError, ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.store import MemoryStore, SQLiteStore, Store, Transaction

MEMBER = "did:web:bank-a.example"
DATASET = "urn:uuid:ds-1"


def _events(store: Store) -> list[str]:
    with store.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        return [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]


@given(st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
def test_micro_conversion_is_exact_to_half_a_micro_epsilon(epsilon: float) -> None:
    micro = to_micro(epsilon)
    assert isinstance(micro, int) and micro >= 1
    assert abs(from_micro(micro) - epsilon) <= 0.5 / MICRO + 1e-12 * epsilon


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e-9, True, "1", 2e6])
def test_nonsense_epsilons_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        to_micro(bad)  # type: ignore[arg-type]


def test_member_setting_overrides_the_dataset_default_and_the_policy_total() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        assert budget_limit(tx, member=MEMBER, dataset_id=DATASET) is None
        assert budget_limit(tx, member=MEMBER, dataset_id=DATASET, policy_total=3.0) == 3.0
        set_budget(tx, 2.0, dataset_id=DATASET)
        assert budget_limit(tx, member=MEMBER, dataset_id=DATASET, policy_total=3.0) == 2.0
        set_budget(tx, 0.5, dataset_id=DATASET, member=MEMBER)
        assert budget_limit(tx, member=MEMBER, dataset_id=DATASET) == 0.5
        assert budget_limit(tx, member="other", dataset_id=DATASET) == 2.0
        with pytest.raises(ValidationError):
            set_budget(tx, 1.0, dataset_id="")
        tx.put(LIMIT_NAMESPACE, f"dataset:{DATASET}", {"limitMicro": -5})
        with pytest.raises(ValidationError):
            budget_limit(tx, member="other", dataset_id=DATASET)


def _charge(tx: Transaction, eps: float, limit: float, **kw: str) -> BudgetCharge:
    return charge(tx, member=MEMBER, dataset_id=DATASET, epsilon=eps, limit=limit, **kw)


def test_a_charge_past_the_limit_changes_nothing() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        first = _charge(tx, 0.3, 1.0, query_id="q1", agreement_id="a1")
        second = _charge(tx, 0.7, 1.0, query_id="q2", agreement_id="a2")
    assert (first.spent, first.remaining) == (0.3, 0.7)
    assert (second.spent, second.remaining) == (1.0, 0.0)
    before = _events(store)
    with pytest.raises(LimitExceededError, match="exceeds"), store.transaction() as tx:
        _charge(tx, 1e-6, 1.0)
    with store.transaction(readonly=True) as tx:
        assert spent(tx, member=MEMBER, dataset_id=DATASET) == 1.0
        assert remaining(tx, member=MEMBER, dataset_id=DATASET, limit=1.0) == 0.0
    assert _events(store) == before
    assert before.count("budget.charged") == 2


def test_a_new_agreement_does_not_reset_the_account_and_a_staff_reset_does() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        _charge(tx, 1.0, 1.0, agreement_id="urn:uuid:first")
    with pytest.raises(LimitExceededError), store.transaction() as tx:
        _charge(tx, 0.1, 1.0, agreement_id="urn:uuid:renegotiated")
    with store.transaction() as tx:
        other = charge(tx, member="other", dataset_id=DATASET, epsilon=0.5, limit=1.0)
        assert reset_budget(tx, member=MEMBER, dataset_id=DATASET, reason="new year") == 1.0
        assert budget_status(tx, member=MEMBER, dataset_id=DATASET).spent == 0.0
        again = _charge(tx, 1.0, 1.0, agreement_id="urn:uuid:renegotiated")
    assert other.spent == 0.5 and again.spent == 1.0
    assert "budget.reset" in _events(store)
    with pytest.raises(ValidationError), store.transaction() as tx:
        reset_budget(tx, member=MEMBER, dataset_id=DATASET, reason=" ")


class BudgetAcrossAgreements(RuleBasedStateMachine):
    """A member charging through any of several agreements, with staff resets and limits."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.accepted = {MEMBER: 0, "other": 0}
        self.limit = 1.0

    @rule(
        member=st.sampled_from([MEMBER, "other"]),
        agreement=st.sampled_from(["a1", "a2", "a3"]),
        eps=st.floats(min_value=1e-3, max_value=0.6),
    )
    def spend(self, member: str, agreement: str, eps: float) -> None:
        fits = self.accepted[member] + to_micro(eps) <= round(self.limit * MICRO)
        try:
            with self.store.transaction() as tx:
                charge(
                    tx,
                    member=member,
                    dataset_id=DATASET,
                    epsilon=eps,
                    limit=self.limit,
                    agreement_id=agreement,
                )
        except LimitExceededError:
            assert not fits
        else:
            assert fits
            self.accepted[member] += to_micro(eps)

    @rule(member=st.sampled_from([MEMBER, "other"]))
    def reset(self, member: str) -> None:
        with self.store.transaction() as tx:
            reset_budget(tx, member=member, dataset_id=DATASET, reason="staff")
        self.accepted[member] = 0

    @rule(limit=st.floats(min_value=0.0, max_value=2.0))
    def change_limit(self, limit: float) -> None:
        self.limit = limit

    @invariant()
    def accounts_match(self) -> None:
        with self.store.transaction(readonly=True) as tx:
            for member, micro in self.accepted.items():
                assert round(spent(tx, member=member, dataset_id=DATASET) * MICRO) == micro
                left = remaining(tx, member=member, dataset_id=DATASET, limit=self.limit)
                assert left >= 0


TestBudgetAcrossAgreements = BudgetAcrossAgreements.TestCase


@given(st.lists(st.floats(min_value=1e-3, max_value=2.0), max_size=30), st.floats(0.0, 5.0))
def test_spending_never_exceeds_the_limit_and_remaining_never_goes_negative(
    epsilons: list[float], limit: float
) -> None:
    store = MemoryStore()
    accepted = 0
    for eps in epsilons:
        try:
            with store.transaction() as tx:
                _charge(tx, eps, limit)
            accepted += to_micro(eps)
        except LimitExceededError:
            pass
        with store.transaction(readonly=True) as tx:
            assert (
                0 <= remaining(tx, member=MEMBER, dataset_id=DATASET, limit=limit) <= limit + 1e-6
            )
            assert round(spent(tx, member=MEMBER, dataset_id=DATASET) * MICRO) == accepted
            assert accepted <= round(limit * MICRO)
    with store.transaction(readonly=True) as tx:  # a lowered limit leaves zero, not a debt
        assert remaining(tx, member=MEMBER, dataset_id=DATASET, limit=0.0) == 0.0


def test_concurrent_charges_cannot_overspend(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "provider.db", synchronous="NORMAL")
    outcomes: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def worker(n: int) -> None:
        start.wait()
        try:
            with store.transaction() as tx:
                _charge(tx, 0.1, 1.0, agreement_id=f"a{n % 3}")
            ok = True
        except LimitExceededError:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 10
    with store.transaction(readonly=True) as tx:
        assert spent(tx, member=MEMBER, dataset_id=DATASET) == 1.0
    assert _events(store).count("budget.charged") == 10
    store.close()


def test_check_and_refusal_leave_a_trace_on_the_ledger() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        unset = check_budget(tx, member=MEMBER, dataset_id=DATASET, epsilon=0.1)
        set_budget(tx, 0.25, dataset_id=DATASET)
        _charge(tx, 0.2, 0.25)
        over = check_budget(tx, member=MEMBER, dataset_id=DATASET, epsilon=0.1)
        fits = check_budget(tx, member=MEMBER, dataset_id=DATASET, epsilon=0.05)
    assert not unset.allowed and unset.limit is None and "no privacy budget" in unset.message
    assert not over.allowed and over.remaining == pytest.approx(0.05)
    assert fits.allowed
    step = over.step().to_json()
    assert step["left_operand"] == "epsilonTotal" and step["blocking"] and step["seen"] == 0.1
    with store.transaction() as tx:
        index = record_refusal(tx, over, query_id="q9", purpose="stats", at=datetime.now(UTC))
    with store.transaction(readonly=True) as tx:
        event = decode_event(index, tx.log_entries(EVENT_LOG, index, index + 1)[0])
    assert event.kind == "policy.decision" and event.body["allowed"] is False
    assert event.body["trace"] == [step]
