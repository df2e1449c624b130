"""Metering counters: per agreement and per participant, atomic with the metered work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trusted_space.errors import ValidationError
from trusted_space.metering import record_use, usage
from trusted_space.store import MemoryStore, SQLiteStore, Store


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "m.db")
    yield s
    s.close()


def test_counts_per_agreement_and_participant(store: Store) -> None:
    with store.transaction() as tx:
        record_use(tx, "ag-1", "bank-a", "score")
        record_use(tx, "ag-1", "bank-a", "score")
        record_use(tx, "ag-1", "bank-b", "aggregate")
        record_use(tx, "ag-2", "bank-a", "transfer")

    with store.transaction() as tx:
        ag1 = usage(tx, agreement_id="ag-1")
        bank_a = usage(tx, participant="bank-a")
        unknown = usage(tx, agreement_id="ag-9")

    assert (ag1.subject, ag1.total, ag1.by_kind) == (
        "agreement",
        3,
        (("aggregate", 1), ("score", 2)),
    )
    assert bank_a.total == 3 and bank_a.count("transfer") == 1 and bank_a.count("train") == 0
    assert (unknown.total, unknown.by_kind) == (0, ())


def test_a_group_counts_as_its_calls_one_by_one(store: Store) -> None:
    with store.transaction() as tx:
        record_use(tx, "ag-1", "bank-a", "score", count=3)
        record_use(tx, "ag-1", "bank-a", "score")
        with pytest.raises(ValidationError):
            record_use(tx, "ag-1", "bank-a", "score", count=0)

    with store.transaction() as tx:
        ag1 = usage(tx, agreement_id="ag-1")
        bank_a = usage(tx, participant="bank-a")

    assert (ag1.total, ag1.by_kind) == (4, (("score", 4),))
    assert bank_a.total == 4


def test_rolled_back_work_is_not_counted(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        record_use(tx, "ag-1", "bank-a", "score")
        raise RuntimeError("query failed")

    with store.transaction() as tx:
        summary = usage(tx, agreement_id="ag-1")

    assert (summary.total, summary.by_kind) == (0, ())


def test_exact_under_concurrency(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    threads, calls = 8, 5

    def worker(n: int) -> None:
        for _ in range(calls):
            with store.transaction() as tx:
                record_use(tx, "ag-1", f"bank-{n % 2}", "score")

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    with store.transaction() as tx:
        assert usage(tx, agreement_id="ag-1").total == threads * calls
        assert usage(tx, participant="bank-0").count("score") == threads * calls // 2
    store.close()


def test_bad_arguments(store: Store) -> None:
    with store.transaction() as tx:
        with pytest.raises(ValidationError):
            record_use(tx, "", "bank-a", "score")
        with pytest.raises(ValidationError):
            record_use(tx, "ag-1", "bank-a", "Score#1")
        with pytest.raises(ValueError, match="exactly one"):
            usage(tx)
        with pytest.raises(ValueError, match="exactly one"):
            usage(tx, agreement_id="a", participant="b")
