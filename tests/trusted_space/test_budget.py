"""Privacy budgets: exact micro-epsilon accounting, a hard limit, no overspending under races."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.budget import (
    LIMIT_NAMESPACE,
    MICRO,
    budget_limit,
    charge,
    check_budget,
    from_micro,
    record_refusal,
    remaining,
    set_budget,
    spent,
    to_micro,
)
from trusted_space.errors import LimitExceededError, ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.store import MemoryStore, SQLiteStore, Store

AGREEMENT = "urn:uuid:agreement-1"
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


def test_agreement_setting_overrides_the_dataset_default() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        assert budget_limit(tx, agreement_id=AGREEMENT, dataset_id=DATASET) is None
        set_budget(tx, 2.0, dataset_id=DATASET)
        assert budget_limit(tx, agreement_id=AGREEMENT, dataset_id=DATASET) == 2.0
        set_budget(tx, 0.5, agreement_id=AGREEMENT)
        assert budget_limit(tx, agreement_id=AGREEMENT, dataset_id=DATASET) == 0.5
        assert budget_limit(tx, agreement_id="other", dataset_id=DATASET) == 2.0
        with pytest.raises(ValidationError):
            set_budget(tx, 1.0)
        with pytest.raises(ValidationError):
            set_budget(tx, 1.0, agreement_id=AGREEMENT, dataset_id=DATASET)
        tx.put(LIMIT_NAMESPACE, f"dataset:{DATASET}", {"limitMicro": -5})
        with pytest.raises(ValidationError):
            budget_limit(tx, agreement_id="other", dataset_id=DATASET)


def test_a_charge_past_the_limit_changes_nothing() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        first = charge(tx, AGREEMENT, 0.3, 1.0, query_id="q1", dataset_id=DATASET)
        second = charge(tx, AGREEMENT, 0.7, 1.0, query_id="q2", dataset_id=DATASET)
    assert (first.spent, first.remaining) == (0.3, 0.7)
    assert (second.spent, second.remaining) == (1.0, 0.0)
    before = _events(store)
    with pytest.raises(LimitExceededError, match="exceeds"), store.transaction() as tx:
        charge(tx, AGREEMENT, 1e-6, 1.0)
    with store.transaction(readonly=True) as tx:
        assert spent(tx, AGREEMENT) == 1.0
        assert remaining(tx, AGREEMENT, 1.0) == 0.0
    assert _events(store) == before
    assert before.count("budget.charged") == 2


@given(st.lists(st.floats(min_value=1e-3, max_value=2.0), max_size=30), st.floats(0.0, 5.0))
def test_spending_never_exceeds_the_limit_and_remaining_never_goes_negative(
    epsilons: list[float], limit: float
) -> None:
    store = MemoryStore()
    accepted = 0
    for eps in epsilons:
        try:
            with store.transaction() as tx:
                charge(tx, AGREEMENT, eps, limit)
            accepted += to_micro(eps)
        except LimitExceededError:
            pass
        with store.transaction(readonly=True) as tx:
            assert 0 <= remaining(tx, AGREEMENT, limit) <= limit + 1e-6
            assert round(spent(tx, AGREEMENT) * MICRO) == accepted
            assert accepted <= round(limit * MICRO)
    with store.transaction(readonly=True) as tx:  # a lowered limit leaves zero, not a debt
        assert remaining(tx, AGREEMENT, 0.0) == 0.0


def test_concurrent_charges_cannot_overspend(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "provider.db", synchronous="NORMAL")
    outcomes: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def worker() -> None:
        start.wait()
        try:
            with store.transaction() as tx:
                charge(tx, AGREEMENT, 0.1, 1.0)
            ok = True
        except LimitExceededError:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 10
    with store.transaction(readonly=True) as tx:
        assert spent(tx, AGREEMENT) == 1.0
    assert _events(store).count("budget.charged") == 10
    store.close()


def test_check_and_refusal_leave_a_trace_on_the_ledger() -> None:
    store = MemoryStore()
    with store.transaction() as tx:
        unset = check_budget(tx, agreement_id=AGREEMENT, dataset_id=DATASET, epsilon=0.1)
        set_budget(tx, 0.25, dataset_id=DATASET)
        charge(tx, AGREEMENT, 0.2, 0.25)
        over = check_budget(tx, agreement_id=AGREEMENT, dataset_id=DATASET, epsilon=0.1)
        fits = check_budget(tx, agreement_id=AGREEMENT, dataset_id=DATASET, epsilon=0.05)
    assert not unset.allowed and unset.limit is None and "no privacy budget" in unset.message
    assert not over.allowed and over.remaining == pytest.approx(0.05)
    assert fits.allowed
    step = over.step().to_json()
    assert step["left_operand"] == "epsilon" and step["blocking"] and step["seen"] == 0.1
    with store.transaction() as tx:
        index = record_refusal(
            tx, over, analyst="bank-a", query_id="q9", purpose="stats", at=datetime.now(UTC)
        )
    with store.transaction(readonly=True) as tx:
        event = decode_event(index, tx.log_entries(EVENT_LOG, index, index + 1)[0])
    assert event.kind == "policy.decision" and event.body["allowed"] is False
    assert event.body["trace"] == [step]
