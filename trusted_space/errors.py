"""The one exception family of the project, and the one table that answers each error.

A refused policy decision is *not* an exception inside the engine: the policy engine returns a
``Decision`` carrying its evaluation trace. Exceptions are for inputs that cannot be processed at
all, for a refusal that must stop a computation and travel back to the asker, and for a peer or a
resource that failed. Every error of ``trusted_space`` and of the connector layer descends from
one root (the connector layer adds only client- and tool-side leaves, see
:mod:`connectors.common.errors`)::

    TrustedSpaceError                   400 invalid-input (any other error of ours)
     ├── ValidationError                400 invalid-input: malformed input (bad USCC, bad policy
     │    │                                 JSON, schema mismatch)
     │    ├── SchemaValidationError     400 invalid-dsp-message: a DSP message does not validate
     │    │                                 against the 2025-1 schemas (``errors`` attached)
     │    └── GradeFloorError           400 grade-floor: a tier or policy looser than the data's
     │                                      security grade allows
     ├── VerificationError              401 unauthorized: a token, credential, signature or proof
     │                                      does not verify. Deliberately uninformative:
     │                                      ``reason`` is kept for the ledger, ``str()`` is the
     │                                      same for every failure
     ├── RefusedError                   403 policy-refused: a usage policy refused (carries its
     │                                      trace); raised by protocol code and by the node's own
     │                                      checks, so the refusal travels back to the asker
     ├── LimitExceededError             403 limit-exceeded: a counter or budget would go past
     │                                      its limit
     ├── NotFoundError                  404 not-found: an id that is not known here
     ├── ConflictError                  409 conflict: a concurrent or illegal state change
     │    ├── IllegalTransitionError    409 illegal-transition: a negotiation message not allowed
     │    │                                 in the current state
     │    └── WitnessSizeError          409 conflict: a consistency proof starts from another
     │                                      size than the witness's last cosigned one (a lost
     │                                      answer, not a fork: retry from it; the witness's
     │                                      route answers it as 409 witness-size itself)
     ├── RemoteError                    502 peer-error: another node failed a call or answered
     │                                      nonsense; 4xx peer-refused (the peer's status) when
     │                                      it refused (its status and problem document attached)
     ├── NotReadyError                  503 not-ready: this node lacks something to serve the
     │                                      request (not admitted, no operator, a peer
     │                                      unreachable, shut down)
     └── StoreError                     503 store-unavailable: the durable store failed
                                            (converted from SQLAlchemy / sqlite3)

Anything else (a bug) answers ``500 internal`` with a detail that says nothing.

The statuses and slugs are :data:`PROBLEM_TYPES`, the one table: the node's HTTP edge
(``connectors.node.problems.problem_for``) and the in-memory transport
(:class:`trusted_space.transport.InMemoryTransport`) both answer with
:func:`problem_document`, so a test in one process sees the status, slug and body a real node
sends. A peer's answer comes back as a :class:`RemoteError` whichever transport carried it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INTERNAL",
    "PROBLEM_BASE",
    "PROBLEM_TYPES",
    "ConflictError",
    "GradeFloorError",
    "IllegalTransitionError",
    "LimitExceededError",
    "NotFoundError",
    "NotReadyError",
    "ProblemType",
    "RefusedError",
    "RemoteError",
    "SchemaValidationError",
    "StoreError",
    "TrustedSpaceError",
    "ValidationError",
    "VerificationError",
    "WitnessSizeError",
    "problem_document",
    "problem_type",
]

PROBLEM_BASE = "https://w3id.org/trusted-space/problems/"
"""Problem ``type`` URIs are this plus the slug (RFC 9457)."""


class TrustedSpaceError(Exception):
    """Base class of every error raised by ``trusted_space`` and the connector layer."""

    def problem_extensions(self) -> dict[str, Any]:
        """Extra members of this error's problem document (``trace``, ``errors``, ...).

        Members whose value is ``None`` are left out of the document.
        """
        return {}


class ValidationError(TrustedSpaceError, ValueError):
    """Input is malformed; the message names what and where (row, field, path)."""


class SchemaValidationError(ValidationError):
    """A Dataspace Protocol message does not validate against the vendored 2025-1 schemas."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        self.schema = schema
        self.errors = errors
        super().__init__(f"message does not validate against {schema}: " + "; ".join(errors[:5]))

    def problem_extensions(self) -> dict[str, Any]:
        return {"errors": self.errors[:20]}


class VerificationError(TrustedSpaceError):
    """Verification failed. The caller always sees the same message; ``reason`` is for the ledger.

    Distinguishable failures would give an attacker an oracle (which check failed: signature,
    audience, expiry, replay, revocation). Code that records the event reads ``reason``; code
    that answers the caller uses ``str(error)`` only.
    """

    PUBLIC_MESSAGE = "verification failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(self.PUBLIC_MESSAGE)


class NotFoundError(TrustedSpaceError, KeyError):
    """An id that is not known to this node."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class ConflictError(TrustedSpaceError):
    """A state change conflicts with the current state (stale version, duplicate id)."""


class IllegalTransitionError(ConflictError):
    """A negotiation message that the DSP state machine does not allow in the current state."""


class WitnessSizeError(ConflictError):
    """The proof sent to a witness starts from another size than the one it last cosigned.

    Happens when a cosignature was given but its answer never reached the node (the witness or
    the node crashed, a timeout): the node still proves from an older size. Nothing is recorded
    as a fork; the node retries with a proof from :attr:`witness_size`.
    """

    def __init__(self, message: str, *, witness_size: int) -> None:
        self.witness_size = witness_size
        super().__init__(message)


class GradeFloorError(ValidationError):
    """A tier or policy is looser than the highest security grade of its fields allows."""


class LimitExceededError(TrustedSpaceError):
    """A counter or budget would go past its limit; nothing was changed."""


class RefusedError(TrustedSpaceError):
    """A usage policy refused a request; the decision's trace says which rule.

    Inside the engine a refusal is a :class:`~trusted_space.policy.Decision`; this exception is
    how code stops where the policy said no (a provider in a multi-party computation, a node
    refusing a negotiation or a transfer) and carries the decision back to the asker: ``403
    policy-refused`` with the trace, over HTTP and in memory alike.

    Args:
        reason: what was refused and why, in words (the problem's ``detail``).
        trace: the decision's evaluation trace, one JSON object per step.
        participant: who refused (a provider's participant id).
        decision_index: the decision's index in the refusing node's ledger.
    """

    def __init__(
        self,
        reason: str,
        trace: Sequence[Mapping[str, Any]] | None = None,
        *,
        participant: str | None = None,
        decision_index: int | None = None,
    ) -> None:
        self.reason = reason
        self.trace = [dict(step) for step in trace or ()]
        self.participant = participant
        self.decision_index = decision_index
        super().__init__(reason)

    def problem_extensions(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "participant": self.participant,
            "decisionIndex": self.decision_index,
        }

    @property
    def problem(self) -> dict[str, Any]:
        """The problem document this refusal answers with (:func:`problem_document`)."""
        return problem_document(self)


class RemoteError(TrustedSpaceError):
    """Another node refused or failed a call; the one error for every peer's answer.

    Raised by the transports (:class:`~trusted_space.transport.Transport`) and by the connector
    layer's HTTP clients alike. A peer's policy refusal arrives as one of these with status
    ``403`` and the refusal's trace in :attr:`problem`. If it escapes to a caller of this node,
    this node relays it: a peer that *refused* (a ``4xx`` with a problem document, see
    :attr:`refused`) is answered ``4xx peer-refused`` (the peer's status; ``401``, this node's
    own signature refused by the peer, becomes ``403``), since a refusal is not a gateway failure
    and retrying it will not help; a peer that failed (``5xx``), could not be reached, or
    answered something that is not a problem document is ``502 peer-error``. Either way the
    detail names the peer and its reason, and the peer's document is ``peerProblem``.

    Attributes:
        peer: who answered (a participant id, or a URL for calls to a node by address).
        status: the peer's HTTP status (in memory, the status its error would have had).
        problem: the peer's problem document (``type``, ``detail``, and for policy refusals the
            ``trace``), so a refusal reaches the analyst with the provider's reason.
    """

    def __init__(self, peer: str, status: int, problem: Mapping[str, Any] | None = None) -> None:
        self.peer = peer
        self.status = status
        self.problem = dict(problem or {})
        detail = self.problem.get("detail") or self.problem.get("title") or f"HTTP {status}"
        super().__init__(f"{peer} answered {status}: {detail}")

    @property
    def refused(self) -> bool:
        """The peer answered a well-formed refusal (``4xx`` with a problem document)."""
        return 400 <= self.status < 500 and bool(self.problem.get("type"))

    def problem_extensions(self) -> dict[str, Any]:
        return {"peer": self.peer, "peerStatus": self.status, "peerProblem": self.problem or None}


class NotReadyError(TrustedSpaceError):
    """This node cannot serve the request yet (not admitted, no operator, a peer unreachable)."""


class StoreError(TrustedSpaceError):
    """The durable store failed; the transaction was rolled back."""


# -- the one table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemType:
    """How an error answers: HTTP status, problem slug (``PROBLEM_BASE + slug``) and title."""

    status: int
    slug: str
    title: str


PROBLEM_TYPES: Mapping[type[TrustedSpaceError], ProblemType] = {
    TrustedSpaceError: ProblemType(400, "invalid-input", "Invalid input"),
    ValidationError: ProblemType(400, "invalid-input", "Invalid input"),
    SchemaValidationError: ProblemType(400, "invalid-dsp-message", "Invalid DSP message"),
    GradeFloorError: ProblemType(400, "grade-floor", "Looser than the security grade allows"),
    VerificationError: ProblemType(401, "unauthorized", "Unauthorized"),
    RefusedError: ProblemType(403, "policy-refused", "Refused by usage policy"),
    LimitExceededError: ProblemType(403, "limit-exceeded", "Limit exceeded"),
    NotFoundError: ProblemType(404, "not-found", "Not found"),
    ConflictError: ProblemType(409, "conflict", "Conflict"),
    IllegalTransitionError: ProblemType(
        409, "illegal-transition", "Illegal negotiation transition"
    ),
    RemoteError: ProblemType(502, "peer-error", "A node this request depends on refused it"),
    NotReadyError: ProblemType(503, "not-ready", "Not ready"),
    StoreError: ProblemType(503, "store-unavailable", "Store unavailable"),
}
"""Each error class's answer; a subclass not listed answers as its nearest listed ancestor."""

INTERNAL = ProblemType(500, "internal", "Internal error")
"""The answer to anything that is not a :class:`TrustedSpaceError`: a bug."""

_INTERNAL_DETAIL = "an internal error occurred; the node's log has the details"


_RELAYED_STATUSES = frozenset({400, 403, 404, 409, 410, 413, 422, 429})


def _peer_refused(exc: RemoteError) -> ProblemType:
    status = 403 if exc.status == 401 else exc.status
    return ProblemType(
        status if status in _RELAYED_STATUSES else 400,
        "peer-refused",
        "Another node refused this request",
    )


def problem_type(exc: BaseException) -> ProblemType:
    """The row of :data:`PROBLEM_TYPES` that answers ``exc`` (:data:`INTERNAL` for a bug).

    A :class:`RemoteError` whose peer refused (:attr:`RemoteError.refused`) answers
    ``peer-refused`` with the peer's ``4xx`` status instead of its row's ``502``.
    """
    if isinstance(exc, RemoteError) and exc.refused:
        return _peer_refused(exc)
    for cls in type(exc).__mro__:
        if issubclass(cls, TrustedSpaceError) and cls in PROBLEM_TYPES:
            return PROBLEM_TYPES[cls]
    return INTERNAL


def problem_document(exc: BaseException) -> dict[str, Any]:
    """The RFC 9457 problem document that answers ``exc``, as a JSON object.

    ``type``, ``title``, ``status`` and ``detail`` (``str(exc)``; the fixed public message for a
    :class:`VerificationError`, a detail that says nothing for a bug), then the error's
    :meth:`~TrustedSpaceError.problem_extensions`. The HTTP edge sends exactly this body; the
    in-memory transport attaches it to the :class:`RemoteError` the caller sees.
    """
    kind = problem_type(exc)
    if not isinstance(exc, TrustedSpaceError):
        detail = _INTERNAL_DETAIL
    elif isinstance(exc, VerificationError):
        detail = VerificationError.PUBLIC_MESSAGE
    else:
        detail = str(exc)
    doc: dict[str, Any] = {
        "type": PROBLEM_BASE + kind.slug,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
    }
    if isinstance(exc, TrustedSpaceError):
        doc.update({k: v for k, v in exc.problem_extensions().items() if v is not None})
    return doc
