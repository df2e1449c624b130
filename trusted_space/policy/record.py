"""The one writer of ``policy.decision`` ledger entries, and the checks that come before a policy.

Why one writer: every path that decides a use — the policy engine, the enforcement point of the
joint computations (score, aggregate, train), the privacy budget and the raw-row transfer — must
leave the same entry, so an auditor reads one shape whatever path refused. Four hand-written
copies had drifted (one stamped a naive time, one carried a key the others lacked);
:func:`record_decision` is now the only place that builds the body.

:class:`Checks` is what a path checks *before* (or beside) the policy — the agreement is known, in
force and the sender's, the dataset and columns may be used, the budget fits — as trace steps in
the engine's :class:`~trusted_space.policy.TraceStep` form. Its :meth:`Checks.record` is the one
refusal-recording step every path goes through, so a new check (a per-entity budget, a model
binding, a suspension) is one more :meth:`Checks.check` call, recorded the same way everywhere.

Entry body (kind ``policy.decision``, entry ``time`` = the decision instant ``at``):

``allowed``, ``policy`` (uid, ``None`` before a policy was read), ``target`` (dataset id or
``None``), ``agreement``, ``assignee``, ``purpose``, ``query_kind``, ``output``, ``query`` (the
analyst's query id where the path has one, else ``None``), ``at`` (ISO 8601, UTC), ``reason``,
``partial``, ``refused_entities`` (``[]``, or ``{"count", "commitment"}``: never an id, see
:func:`record_decision`), ``uses``, ``duties``, ``trace_digest`` (SHA-256 hex of the canonical
JSON of ``trace`` as written), ``trace``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from trusted_space.commitments import commit
from trusted_space.errors import RefusedError, ValidationError
from trusted_space.events import canonical_json, record_event
from trusted_space.policy.decision import Decision, DutyDue, TraceStep
from trusted_space.store import Transaction

__all__ = ["DECISION_EVENT", "Checks", "DecisionSubject", "record_decision"]

DECISION_EVENT = "policy.decision"
"""Ledger event kind of every decision, allow or deny."""

_LOG_ONLY = (DutyDue("log"),)


@dataclass(frozen=True)
class DecisionSubject:
    """Who asked to use what, and when: the request half of every ``policy.decision`` entry.

    Attributes:
        assignee: the **authenticated** requester.
        query_kind: ``score``, ``aggregate``, ``train`` or ``transfer``.
        at: the decision instant (time-zone aware; recorded in UTC).
        agreement: the agreement relied on, if any.
        target: the dataset used, if known yet.
        purpose: the declared purpose, if known yet.
        output: ``score``, ``aggregate`` or ``raw``.
        query: the analyst's query id, where the path has one.
    """

    assignee: str
    query_kind: str
    at: datetime
    agreement: str | None = None
    target: str | None = None
    purpose: str | None = None
    output: str | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValidationError("DecisionSubject.at must be time-zone aware")


def record_decision(
    tx: Transaction,
    subject: DecisionSubject,
    *,
    allowed: bool,
    reason: str,
    trace: Sequence[TraceStep],
    policy: str | None = None,
    partial: bool = False,
    refused_entities: Sequence[str] = (),
    uses: int | None = None,
    duties: Sequence[DutyDue] = _LOG_ONLY,
) -> int:
    """Append one ``policy.decision`` entry within ``tx``; return its ledger index.

    The entry is public, so it never names an entity: ``refused_entities`` (of the decision
    and of each trace step) is written as ``{"count": n, "commitment": C}`` (a salted commitment,
    :mod:`trusted_space.commitments`, opened only to this node's staff and auditors; the refused
    analyst has the ids in its 403), ``[]`` when there are none; the ids are cut out of
    ``reason``; ``trace_digest`` covers the trace as written.
    """
    steps = tuple(trace)
    public_trace = [_public_step(tx, s) for s in steps]
    body: dict[str, Any] = {
        "allowed": allowed,
        "policy": policy,
        "target": subject.target,
        "agreement": subject.agreement,
        "assignee": subject.assignee,
        "purpose": subject.purpose,
        "query_kind": subject.query_kind,
        "output": subject.output,
        "query": subject.query,
        "at": subject.at.astimezone(UTC).isoformat(),
        "reason": _without(reason, refused_entities, steps),
        "partial": partial,
        "refused_entities": _committed_entities(tx, refused_entities),
        "uses": uses,
        "duties": [d.to_json() for d in duties],
        "trace_digest": hashlib.sha256(canonical_json(public_trace)).hexdigest(),
        "trace": public_trace,
    }
    return record_event(tx, DECISION_EVENT, body, time=subject.at)


def _committed_entities(tx: Transaction, entities: Sequence[str]) -> Any:
    if not entities:
        return []
    listed = sorted(set(entities))
    digest = hashlib.sha256(canonical_json(listed)).hexdigest()
    committed, _ = commit(tx, "refused_entities", digest, detail=listed)
    return {"count": len(listed), "commitment": committed}


def _public_step(tx: Transaction, step: TraceStep) -> dict[str, Any]:
    doc = step.to_json()
    doc["refused_entities"] = _committed_entities(tx, step.refused_entities)
    if step.refused_entities:
        doc["message"] = _without(step.message, step.refused_entities, ())
    return doc


def _without(text: str, entities: Sequence[str], steps: Sequence[TraceStep]) -> str:
    """``text`` with every refused entity id replaced by ``[entity]``."""
    for entity in {*entities, *(e for s in steps for e in s.refused_entities)}:
        text = text.replace(entity, "[entity]")
    return text


class Checks:
    """Checks outside the policy, as trace steps in the engine's form, and their refusal.

    Args:
        subject: the request being checked (its ``target`` may be filled in later, at
            :meth:`record`).
    """

    def __init__(self, subject: DecisionSubject) -> None:
        self.subject = subject
        self.steps: list[TraceStep] = []

    def check(
        self,
        operand: str,
        expected: Any,
        seen: Any,
        ok: bool,
        message: str,
        *,
        rule: str = "agreement",
        operator: str = "eq",
    ) -> bool:
        """Add one step (``satisfied`` if ``ok``, else ``violated`` and blocking); return ``ok``."""
        return self.add(
            TraceStep(
                rule=rule,
                index=None,
                rule_id=self.subject.agreement,
                left_operand=operand,
                operator=operator,
                right_operand=expected,
                seen=seen,
                outcome="satisfied" if ok else "violated",
                blocking=not ok,
                message=message,
            )
        )

    def add(self, step: TraceStep) -> bool:
        """Add a step built elsewhere (e.g. a budget check's); return whether it holds."""
        self.steps.append(step)
        return step.outcome != "violated"

    @property
    def failed(self) -> TraceStep | None:
        """The first violated step, if any."""
        return next((s for s in self.steps if s.outcome == "violated"), None)

    def trace_json(self) -> list[dict[str, Any]]:
        """The steps as JSON (ledger and problem-document form)."""
        return [s.to_json() for s in self.steps]

    def record(self, tx: Transaction, *, target: str | None = None) -> tuple[str, int]:
        """Record the refusal as ``policy.decision`` within ``tx``; return its reason and index.

        Args:
            tx: the transaction to commit *before* the refusal is raised.
            target: the dataset, when it became known after the subject was built.

        Raises:
            ValueError: no step failed (a programming error: only a refusal is recorded here).
        """
        failed = self.failed
        if failed is None:
            raise ValueError("no check failed: nothing to refuse")
        subject = self.subject if target is None else replace(self.subject, target=target)
        index = record_decision(tx, subject, allowed=False, reason=failed.message, trace=self.steps)
        return failed.message, index

    def refusal(
        self, tx: Transaction, *, participant: str, target: str | None = None
    ) -> RefusedError:
        """:meth:`record` the refusal and return the :class:`RefusedError` to raise after commit."""
        reason, index = self.record(tx, target=target)
        return RefusedError(
            reason, self.trace_json(), participant=participant, decision_index=index
        )

    @staticmethod
    def refused(decision: Decision, *, participant: str) -> RefusedError:
        """The error for a policy refusal the engine recorded (its trace opens with the checks).

        Pass ``prior=checks.steps`` to :func:`~trusted_space.policy.evaluate` so the trace the
        refused party receives is the trace on the ledger (same :func:`trace_digest`).
        """
        return RefusedError(
            decision.reason,
            decision.trace_json(),
            participant=participant,
            decision_index=decision.ledger_index,
        )
