"""A standing session's next run: who it waits for after a run, and for how long at most.

No protocol runs here: the session is built without its run threads and its ``_take`` (what the
next run carries) is called directly, so every check is about which requests a run gets.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from connectors.node.serving import _Pending, _Session
from trusted_space.protocols.score import ServedRequest


def session(linger: float) -> _Session:
    query: Any = SimpleNamespace(protocol="additive")
    return _Session(None, "k" * 16, query, None, {}, {}, 3600.0, 0, linger)  # type: ignore[arg-type]


def submit(s: _Session, name: str) -> None:
    s.submit(ServedRequest(name, (name,)))


def ids(taken: list[_Pending] | None) -> list[str]:
    assert taken is not None
    return [p.request.id for p in taken]


def test_the_requests_just_answered_share_the_next_run() -> None:
    s = session(linger=60.0)
    submit(s, "a1")
    submit(s, "a2")
    assert ids(s._take()) == ["a1", "a2"]  # nobody answered yet: no wait
    submit(s, "b1")  # arrived while a1, a2 ran
    s._expect_back(2)  # a1 and a2 answered: expect them back
    got: list[list[str]] = []
    taker = threading.Thread(target=lambda: got.append(ids(s._take())))
    taker.start()
    submit(s, "a3")
    submit(s, "a4")
    taker.join()
    # Without lingering the run would have started with b1 alone and the two halves alternated.
    assert got == [["b1", "a3", "a4"]]
    assert time.monotonic() < s._linger_until  # it started as soon as they were back


def test_one_client_alone_is_not_slowed() -> None:
    s = session(linger=60.0)
    submit(s, "a1")
    assert ids(s._take()) == ["a1"]
    s._expect_back(1)
    submit(s, "a2")  # the client asks again as soon as it is answered
    assert ids(s._take()) == ["a2"]
    assert time.monotonic() < s._linger_until


def test_a_session_waits_at_most_its_linger_for_requests_that_do_not_come_back() -> None:
    s = session(linger=0.05)
    submit(s, "a1")
    submit(s, "a2")
    s._take()
    submit(s, "b1")
    s._expect_back(2)  # a1 and a2 never come back (their loan officers went home)
    assert ids(s._take()) == ["b1"]
    assert time.monotonic() >= s._linger_until


def test_no_linger_starts_at_once() -> None:
    s = session(linger=0.0)
    submit(s, "a1")
    s._take()
    s._expect_back(1)
    submit(s, "b1")
    assert ids(s._take()) == ["b1"]
    assert s._expect == 0
