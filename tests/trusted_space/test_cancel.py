"""Cancelling a query at a party: its sessions go, later calls are refused, the wire round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from trusted_space.compute import SessionStore
from trusted_space.errors import ConflictError, NotFoundError, ValidationError
from trusted_space.protocols.base import ProviderJob
from trusted_space.protocols.cancel import CancelDone, QueryCancel


def test_cancel_drops_every_session_of_the_senders_query_and_only_those() -> None:
    sessions = SessionStore()
    sessions.open("bank", "score/q1")["x"] = 1
    sessions.open("bank", "align/q1/tax")["x"] = 2
    sessions.open("bank", "score/q2")["x"] = 3
    sessions.open("other-bank", "score/q1")["x"] = 4

    dropped = sessions.cancel("bank", "q1")

    assert sorted(s["x"] for s in dropped) == [1, 2]
    assert sessions.get("bank", "score/q2") == {"x": 3}
    assert sessions.get("other-bank", "score/q1") == {"x": 4}
    for key in ("score/q1", "align/q1/tax", "train/q1"):
        with pytest.raises(ConflictError, match="cancelled by its analyst"):
            sessions.open("bank", key)
        with pytest.raises(ConflictError, match="cancelled by its analyst"):
            sessions.get("bank", key)
    with pytest.raises(NotFoundError):
        sessions.get("bank", "score/q3")


def test_a_cancelled_job_refuses_new_blocks_and_is_over_when_the_last_in_flight_ends() -> None:
    job = ProviderJob(
        node=None,  # type: ignore[arg-type]
        query="q1",
        analyst="bank",
        operator="op",
        contributors=["tax"],
        mode="analyst-held",
        blocks=[(0, 1), (1, 2), (2, 3)],
        values={b: np.zeros((1, 1)) for b in range(3)},
    )
    job.claim(0)  # block 0 is being computed

    assert job.cancel() is False  # in flight: its handler releases the session
    with pytest.raises(ConflictError, match="cancelled"):
        job.claim(1)
    assert job.complete(0) is True


def test_cancel_messages_round_trip_and_refuse_bad_fields() -> None:
    assert QueryCancel.from_header(QueryCancel("q1").to_header()) == QueryCancel("q1")
    done = CancelDone("q1", 2, 17)
    assert CancelDone.from_header(done.to_header()) == done
    with pytest.raises(ValidationError, match=r"header\.query"):
        QueryCancel.from_header({"query": ""})
    with pytest.raises(ValidationError, match=r"header\.sessions"):
        CancelDone.from_header({"query": "q1", "sessions": -1, "entry": 0})
