"""The one exception tree of the ``trusted_space`` package.

A refused policy decision is *not* an exception: the policy engine returns a ``Decision`` carrying
its evaluation trace. Exceptions are for inputs that cannot be processed at all::

    TrustedSpaceError
     ├── ValidationError          input is malformed (bad USCC, bad policy JSON, schema mismatch)
     │    └── SchemaValidationError   a DSP message does not validate against the 2025-1 schemas
     ├── VerificationError        a token, credential, signature or proof does not verify.
     │                            Deliberately uninformative: ``reason`` is kept for the ledger,
     │                            ``str()`` is the same for every failure.
     ├── NotFoundError            an id that is not known here
     ├── ConflictError            a concurrent or illegal state change (wrong version, duplicate id)
     │    ├── IllegalTransitionError  a negotiation message not allowed in the current state
     │    └── WitnessSizeError    a consistency proof starts from another size than the witness's
     │                            last cosigned one (a lost answer, not a fork: retry from it)
     ├── GradeFloorError          a tier or policy looser than the data's security grade allows
     ├── LimitExceededError       a counter or budget would go past its limit
     ├── RefusedError             a provider's policy refused a query (carries its trace); raised
     │                            by protocol code so the refusal travels back to the analyst
     └── StoreError               the durable store failed (converted from SQLAlchemy / sqlite3)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConflictError",
    "GradeFloorError",
    "IllegalTransitionError",
    "LimitExceededError",
    "NotFoundError",
    "RefusedError",
    "SchemaValidationError",
    "StoreError",
    "TrustedSpaceError",
    "ValidationError",
    "VerificationError",
    "WitnessSizeError",
]


class TrustedSpaceError(Exception):
    """Base class of every error raised by ``trusted_space``."""


class ValidationError(TrustedSpaceError, ValueError):
    """Input is malformed; the message names what and where (row, field, path)."""


class SchemaValidationError(ValidationError):
    """A Dataspace Protocol message does not validate against the vendored 2025-1 schemas."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        self.schema = schema
        self.errors = errors
        super().__init__(f"message does not validate against {schema}: " + "; ".join(errors[:5]))


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
    """A provider refused a query on policy grounds; the decision's trace says which rule.

    Inside the engine a refusal is a :class:`~trusted_space.policy.Decision`; this exception is
    how protocol code stops a multi-party computation at the provider and carries the decision
    back across the transport (HTTP 403 with the trace at the edge).
    """

    status = 403

    def __init__(
        self,
        reason: str,
        trace: list[dict[str, Any]] | None = None,
        *,
        participant: str | None = None,
        decision_index: int | None = None,
    ) -> None:
        self.reason = reason
        self.trace = list(trace or [])
        self.participant = participant
        self.decision_index = decision_index
        super().__init__(reason)

    @property
    def problem(self) -> dict[str, Any]:
        return {
            "type": "https://w3id.org/trusted-space/problems/policy-refused",
            "title": "Refused by usage policy",
            "status": 403,
            "detail": self.reason,
            "trace": self.trace,
            "participant": self.participant,
            "decisionIndex": self.decision_index,
        }


class StoreError(TrustedSpaceError):
    """The durable store failed; the transaction was rolled back."""
