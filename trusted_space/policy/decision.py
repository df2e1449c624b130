"""What the decision point reads and answers: a request, its trace and the decision.

:class:`UsageRequest` in, :class:`Decision` out with its :class:`TraceStep` s and the
:class:`DutyDue` s it imposes; :func:`trace_digest` fixes the trace for the ledger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from trusted_space.errors import ValidationError
from trusted_space.events import canonical_json
from trusted_space.policy.vocabulary import OUTPUT_KINDS, PROTOCOLS, QUERY_KINDS

__all__ = [
    "ConsentChecker",
    "Decision",
    "DutyDue",
    "TraceStep",
    "UsageRequest",
    "rule_label",
    "trace_digest",
]


class ConsentChecker(Protocol):
    """Data-subject authorisations (implemented by ``trusted_space.consent``)."""

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool: ...

    def missing_consents(
        self, entities: Sequence[str], grantee: str, purpose: str, at: datetime
    ) -> list[str]: ...


@dataclass(frozen=True)
class UsageRequest:
    """What a request asks for, as the **provider's node** established it.

    The node fills this from the verified, signed request (``assignee`` is the authenticated
    participant, ``roles`` come from its membership credential, ``at`` is the node's own receipt
    time), never from unverified claims in the body.

    Attributes:
        assignee: participant id of the requester.
        purpose: declared purpose, e.g. ``pre-loan-review``.
        query_kind: ``score``, ``aggregate``, ``train`` or ``transfer`` (raw-row pull).
        output: ``score``, ``aggregate`` or ``raw``.
        at: when the request was received (time-zone aware).
        roles: roles from the requester's credential.
        protocol: ``paillier``, ``ckks``, ``additive`` or ``None`` (transfer).
        agreement_id: the agreement the request relies on.
        cohort_size: number of entities an aggregate is computed over — entities the provider
            **holds**, never ids it merely received (see ``minCohort``).
        entities: USCCs named by the request (checked against ``consent`` and ``entityCount``).
        query_id: the analyst's query id, where the request belongs to one (recorded only).
        offer_id: the offer the agreement was granted from. ``count`` and ``entityCount`` are
            kept per (assignee, dataset, offer) (:func:`~trusted_space.policy.vocabulary.
            account_key`), so a renegotiated agreement continues the same account; ``None``
            when the policy evaluated is the offer itself (its uid is used) or unknown (the
            agreement id is used).
        epsilon: the differential-privacy epsilon of the noisy release asked for; ``None`` for
            an exact release (refused by an ``epsilon`` constraint).
        model: for a score, who chose the weights applied to this provider's columns:
            ``analyst-held``, ``trained`` or ``approved`` (:data:`~trusted_space.policy.
            vocabulary.MODEL_MODES`); ``None`` for other kinds.
        model_stats: for party-held weights, what the provider measured of them on its own
            data when it stored them: ``columns`` (how many carry weight), ``maxWeight``
            (largest |w|) and ``maxShare`` (largest Var(w_j x_j) / Var(sum_j w_j x_j)).
        release: for a score, what leaves to the analyst: ``logit`` (the exact logit) or
            ``band`` (only the band it falls in, computed inside the protocol); ``None`` for
            other kinds.
        bands: for a ``band`` release, how many bands (edges + 1).
    """

    assignee: str
    purpose: str
    query_kind: str
    output: str
    at: datetime
    roles: frozenset[str] = frozenset()
    protocol: str | None = None
    agreement_id: str | None = None
    cohort_size: int | None = None
    entities: tuple[str, ...] = ()
    query_id: str | None = None
    offer_id: str | None = None
    epsilon: float | None = None
    model: str | None = None
    model_stats: Mapping[str, float] | None = None
    release: str | None = None
    bands: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(self.roles))
        if self.release is not None and self.release not in ("logit", "band"):
            raise ValidationError(f"UsageRequest.release: bad value {self.release!r}")
        if (self.release == "band") != (self.bands is not None) or (
            self.bands is not None and (isinstance(self.bands, bool) or self.bands < 2)
        ):
            raise ValidationError("UsageRequest.bands: a band release names 2 or more bands")
        if self.model is not None and self.model not in ("analyst-held", "trained", "approved"):
            raise ValidationError(f"UsageRequest.model: bad value {self.model!r}")
        if self.epsilon is not None and (
            isinstance(self.epsilon, bool)
            or not isinstance(self.epsilon, int | float)
            or not self.epsilon > 0
        ):
            raise ValidationError(f"UsageRequest.epsilon must be > 0, got {self.epsilon!r}")
        object.__setattr__(self, "entities", tuple(self.entities))
        if not self.assignee or not self.purpose:
            raise ValidationError("UsageRequest: assignee and purpose must be non-empty")
        if self.query_kind not in QUERY_KINDS:
            raise ValidationError(
                f"UsageRequest.query_kind: {self.query_kind!r} not in {list(QUERY_KINDS)}"
            )
        if self.output not in OUTPUT_KINDS:
            raise ValidationError(
                f"UsageRequest.output: {self.output!r} not in {list(OUTPUT_KINDS)}"
            )
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValidationError(
                f"UsageRequest.protocol: {self.protocol!r} not in {list(PROTOCOLS)}"
            )
        if self.at.tzinfo is None:
            raise ValidationError("UsageRequest.at must be time-zone aware")
        if self.cohort_size is not None and (
            isinstance(self.cohort_size, bool) or self.cohort_size < 0
        ):
            raise ValidationError(f"UsageRequest.cohort_size: bad value {self.cohort_size!r}")


Outcome = Literal["satisfied", "violated", "not_applicable", "partial"]


@dataclass(frozen=True)
class TraceStep:
    """One checked condition.

    Attributes:
        rule: ``permission``, ``prohibition``, ``floor`` (grade floor), ``agreement`` (binding of
            an Agreement to its assignee), ``count`` (consumption) or ``default`` (default deny).
        index: position of the rule in its list (``None`` for non-rule steps).
        rule_id: the rule's ``@id`` if it has one.
        left_operand, operator, right_operand: the constraint (JSON form of the right operand).
        seen: the value the request presented (JSON-compatible).
        outcome: ``satisfied`` (the constraint holds), ``violated``, ``not_applicable`` (e.g.
            ``minCohort`` on a score query) or ``partial`` (consent held for some entities).
        blocking: whether this step is why the request is (or would be) refused.
        message: the human sentence for this step.
        refused_entities: entities without consent (``consent`` steps only).
        applies: ``False`` for the steps of a permission written for another kind of use
            (another ``computation`` or ``output``) when some permission was written for this
            one: kept for a complete trace, but it did not decide the outcome.
    """

    rule: str
    index: int | None
    rule_id: str | None
    left_operand: str
    operator: str
    right_operand: Any
    seen: Any
    outcome: Outcome
    blocking: bool
    message: str
    refused_entities: tuple[str, ...] = ()
    applies: bool = True

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to the ledger and returned with a 403."""
        return {
            "rule": self.rule,
            "index": self.index,
            "rule_id": self.rule_id,
            "left_operand": self.left_operand,
            "operator": self.operator,
            "right_operand": self.right_operand,
            "seen": self.seen,
            "outcome": self.outcome,
            "blocking": self.blocking,
            "message": self.message,
            "refused_entities": list(self.refused_entities),
            "applies": self.applies,
        }


@dataclass(frozen=True)
class DutyDue:
    """A duty the decision imposes on the node or the consumer.

    ``log`` (always), ``notify`` (tell ``recipient``, the provider, of the use), ``delete`` (the
    consumer deletes results ``after`` the ISO 8601 duration).
    """

    action: str
    recipient: str | None = None
    after: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form for the ledger."""
        return {"action": self.action, "recipient": self.recipient, "after": self.after}


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one request: allowed or not, and exactly why.

    Attributes:
        allowed: whether the request may proceed (for ``permitted_entities`` only when
            ``partial``).
        policy_uid: the policy evaluated.
        reason: one human sentence; for a refusal, the first blocking step.
        trace: every step evaluated, in order.
        duties: duties to fulfil when allowed (``log`` is always there).
        permission_index: which permission granted the request.
        partial: consent was missing for some entities and the caller chose ``exclude``.
        refused_entities: entities without consent.
        permitted_entities: entities the query may use (all of them unless ``partial``).
        uses: the agreement's use count after this decision, when ``count`` applied.
        trace_digest: SHA-256 hex of the canonical JSON of the trace.
        ledger_index: index of the ``policy.decision`` ledger entry.
    """

    allowed: bool
    policy_uid: str
    reason: str
    trace: tuple[TraceStep, ...]
    duties: tuple[DutyDue, ...] = ()
    permission_index: int | None = None
    partial: bool = False
    refused_entities: tuple[str, ...] = ()
    permitted_entities: tuple[str, ...] = ()
    uses: int | None = None
    trace_digest: str = ""
    ledger_index: int | None = field(default=None, compare=False)

    def trace_json(self) -> list[dict[str, Any]]:
        """The trace as JSON (what the digest covers)."""
        return [s.to_json() for s in self.trace]


def trace_digest(trace: Sequence[TraceStep]) -> str:
    """SHA-256 (hex) of the canonical JSON of a trace, as recorded in the ledger."""
    return hashlib.sha256(canonical_json([s.to_json() for s in trace])).hexdigest()


def rule_label(kind: str, index: int, uid: str | None) -> str:
    return f"{kind}[{index}]" + (f" {uid!r}" if uid else "")
