"""One table answers every error: the node's HTTP edge and the in-memory transport agree.

Each error class of :data:`trusted_space.errors.PROBLEM_TYPES` (and a bug) is raised once by a
route of an app with the node's error handlers and once by a handler behind
:class:`~trusted_space.transport.InMemoryTransport`; both must give the same status and the
same problem document, so protocol tests in one process see what a real node sends.
"""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from connectors.common.errors import PROBLEM_MEDIA_TYPE
from connectors.node import problems
from connectors.node.problems import install_error_handlers
from trusted_space.errors import (
    INTERNAL,
    PROBLEM_BASE,
    PROBLEM_TYPES,
    ConflictError,
    GradeFloorError,
    IllegalTransitionError,
    LimitExceededError,
    NotFoundError,
    NotReadyError,
    RefusedError,
    RemoteError,
    SchemaValidationError,
    StoreError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
    WitnessSizeError,
    problem_type,
)
from trusted_space.transport import InMemoryTransport, Reply

ERRORS: dict[str, BaseException] = {
    "base": TrustedSpaceError("something of ours went wrong"),
    "validation": ValidationError("$.uscc: bad check digit"),
    "schema": SchemaValidationError("ContractRequestMessage", ["$.offer: required"]),
    "grade-floor": GradeFloorError("tier unconditional is looser than grade 3 allows"),
    "verification": VerificationError("signature does not verify"),
    "refused": RefusedError(
        "purpose is not allowed",
        [{"left_operand": "purpose", "blocking": True}],
        participant="tax-bureau",
        decision_index=7,
    ),
    "refused-no-index": RefusedError("no such agreement in force"),
    "limit": LimitExceededError("the privacy budget would be exceeded"),
    "not-found": NotFoundError("no dataset 'x'"),
    "conflict": ConflictError("stale version"),
    "illegal-transition": IllegalTransitionError("AGREED cannot go to REQUESTED"),
    "witness-size": WitnessSizeError("witness holds size 4", witness_size=4),
    "remote": RemoteError(
        "court", 403, {"type": PROBLEM_BASE + "policy-refused", "detail": "no", "trace": []}
    ),
    "remote-bare": RemoteError("court", 500),
    "not-ready": NotReadyError("no operator anchor"),
    "store": StoreError("database is locked"),
    "bug": KeyError("a bug"),
}


def test_every_row_of_the_table_is_exercised() -> None:
    covered = {type(exc) for exc in ERRORS.values()}
    assert set(PROBLEM_TYPES) <= covered


def test_the_node_docstring_lists_every_row() -> None:
    doc = problems.__doc__ or ""
    rows = {
        (slug, int(status))
        for slug, status in re.findall(r"^([a-z-]+)\s+(\d{3})\s", doc, flags=re.MULTILINE)
    }
    for kind in [*PROBLEM_TYPES.values(), INTERNAL]:
        assert (kind.slug, kind.status) in rows


def _http_answer(exc: BaseException) -> tuple[int, dict[str, object], dict[str, str]]:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise")
    def raise_it() -> None:
        raise exc

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/raise")
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    return response.status_code, response.json(), dict(response.headers)


def _in_memory_answer(exc: BaseException) -> RemoteError:
    network = InMemoryTransport.network()

    def handler(sender: str, operation: str, header: dict[str, object], payload: bytes) -> Reply:
        raise exc

    network.register("provider", handler)
    with pytest.raises(RemoteError) as caught:
        network.as_sender("analyst").call("provider", "test.raise", {})
    return caught.value


@pytest.mark.parametrize("name", list(ERRORS))
def test_http_and_in_memory_answer_the_same(name: str) -> None:
    exc = ERRORS[name]
    kind = problem_type(exc)
    status, body, headers = _http_answer(exc)
    remote = _in_memory_answer(exc)

    assert status == remote.status == kind.status
    assert body["type"] == remote.problem["type"] == PROBLEM_BASE + kind.slug
    assert body["title"] == kind.title
    if kind is INTERNAL:  # the node names an incident in its log; nothing else differs
        assert str(body.pop("instance")).startswith("urn:trusted-space:incident:")
        assert "a bug" not in str(body) and "a bug" not in str(remote.problem)
    assert body == remote.problem
    assert remote.peer == "provider"
    if isinstance(exc, VerificationError):
        assert headers["www-authenticate"] == "TS-Request"


def test_refusal_keeps_its_trace_both_ways() -> None:
    exc = ERRORS["refused"]
    assert isinstance(exc, RefusedError)
    _, body, _ = _http_answer(exc)
    assert body["trace"] == exc.trace and body["decisionIndex"] == 7
    assert body["participant"] == "tax-bureau" and body["detail"] == "purpose is not allowed"
    assert exc.problem == body  # the refusal's own document is the one it answers with


def test_a_peer_refusal_is_relayed_as_a_refusal_both_ways() -> None:
    exc = ERRORS["remote"]
    remote = _in_memory_answer(exc)
    status, body, _ = _http_answer(exc)
    assert remote.status == status == 403
    assert body["type"] == PROBLEM_BASE + "peer-refused"
    assert body["detail"].startswith("court answered 403: no")
    assert remote.problem["peer"] == "court" and remote.problem["peerStatus"] == 403
    assert remote.problem["peerProblem"] == {
        "type": PROBLEM_BASE + "policy-refused",
        "detail": "no",
        "trace": [],
    }


def test_verification_failures_are_indistinguishable() -> None:
    answers = [
        _http_answer(VerificationError(reason))[:2]
        for reason in ("bad signature", "expired", "replayed", "revoked")
    ]
    assert all(answer == answers[0] for answer in answers)
    memory = [_in_memory_answer(VerificationError(r)).problem for r in ("expired", "revoked")]
    assert memory[0] == memory[1] == answers[0][1]


@pytest.mark.parametrize(
    ("peer_status", "problem", "answered", "slug"),
    [
        (404, {"type": PROBLEM_BASE + "not-found", "detail": "no dataset"}, 404, "peer-refused"),
        (409, {"type": PROBLEM_BASE + "conflict", "detail": "x"}, 409, "peer-refused"),
        (401, {"type": PROBLEM_BASE + "unauthorized", "detail": "x"}, 403, "peer-refused"),
        (418, {"type": PROBLEM_BASE + "teapot", "detail": "x"}, 400, "peer-refused"),
        (404, {}, 502, "peer-error"),  # a 404 without a problem document: a proxy, not the peer
        (500, {"type": PROBLEM_BASE + "internal", "detail": "x"}, 502, "peer-error"),
        (503, {"type": PROBLEM_BASE + "not-ready", "detail": "x"}, 502, "peer-error"),
    ],
)
def test_peer_answers_map_to_refusals_or_gateway_errors(
    peer_status: int, problem: dict[str, str], answered: int, slug: str
) -> None:
    exc = RemoteError("court", peer_status, problem)
    status, body, _ = _http_answer(exc)
    assert (status, body["type"]) == (answered, PROBLEM_BASE + slug)
    assert body["peer"] == "court" and body["peerStatus"] == peer_status
    assert body["detail"].startswith(f"court answered {peer_status}")
