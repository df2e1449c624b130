"""A provider's view of the use of its data, and the policy dry run (staff only).

- ``POST /management/policy/dry-run``: "would this request be allowed?" The offer (or agreement)
  of one of this node's datasets is evaluated by the same engine the enforcement point runs
  (:func:`trusted_space.policy.evaluate`: grade floor, purpose, computation, protocol, ``count``,
  consent, ...) and the full trace is returned. The evaluation runs inside a store transaction
  that is then rolled back, so it consumes no ``count``, writes no ledger entry and leaves no
  trace anywhere: a dry run is a question, not a use.
- ``GET /management/usage``: every use (``query.use``) and every refusal (``policy.decision``
  denied) of this node's data, from its own ledger, newest first, with traces; and per agreement
  the uses counted so far and the ``count`` limit of its policy (the budget left).

Threats: staff only (``require_admin``). A dry run evaluates against the node's real state but
cannot change it: the rollback is the mechanism, not a flag the engine could forget. Usage
entries carry what the ledger carries (counts and digests), never an entity id.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.wire.console import (
    DryRunRequest,
    DryRunView,
    UsageBudget,
    UsageEntry,
    UsageReport,
)
from trusted_space import policy as policies
from trusted_space.catalog import TS_NAMESPACE, load_dataset
from trusted_space.contracts import load_agreement
from trusted_space.errors import ValidationError
from trusted_space.events import EVENT_LOG, Event, decode_event
from trusted_space.metering import usage
from trusted_space.policy import Decision, UsageRequest, evaluate

__all__ = ["MAX_USAGE_ENTRIES", "dry_run", "router", "usage_report"]

MAX_USAGE_ENTRIES = 1000
_DEFAULT_OUTPUT = {"score": "score", "aggregate": "aggregate", "train": "aggregate"}

router = APIRouter(prefix="/management", tags=["usage"], dependencies=[Depends(require_admin)])


class _RollBack(Exception):
    """Raised inside the dry run's transaction so that the store undoes everything."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("dry run")
        self.decision = decision


def _odrl(agreement: dict[str, Any]) -> dict[str, Any]:
    """The ODRL part of a stored agreement (our extensions removed), as enforcement reads it."""
    return {k: v for k, v in agreement.items() if not k.startswith(TS_NAMESPACE)}


@router.post("/policy/dry-run")
def dry_run(body: DryRunRequest, runtime: RuntimeDep) -> DryRunView:
    """Evaluate a would-be request with the full trace, consuming and recording nothing."""
    output = body.output or ("raw" if body.kind == "transfer" else _DEFAULT_OUTPUT[body.kind])
    at = runtime.clock()
    request = UsageRequest(
        assignee=body.assignee,
        purpose=body.purpose,
        query_kind=body.kind,
        output=output,
        at=at,
        roles=frozenset(body.roles),
        protocol=body.protocol,
        agreement_id=body.agreement,
        cohort_size=body.cohortSize
        if body.cohortSize is not None
        else (len(body.entities) or None),
        entities=tuple(body.entities),
    )
    evaluated: Literal["agreement", "offer"]
    with runtime.transaction(readonly=True) as tx:
        published = load_dataset(tx, body.dataset)
        if body.agreement is not None:
            signed = load_agreement(tx, body.agreement)
            if signed.agreement.get("target") != body.dataset:
                raise ValidationError(
                    f"agreement: {body.agreement!r} does not cover dataset {body.dataset!r}"
                )
            policy = policies.from_odrl(_odrl(dict(signed.agreement)))
            evaluated = "agreement"
        else:
            offers = {str(o.get("@id")): o for o in published.offers}
            chosen = offers.get(body.offer) if body.offer else next(iter(offers.values()), None)
            if chosen is None:
                raise ValidationError(
                    f"offer: {body.offer!r} is not an offer of {body.dataset!r} "
                    f"(offers: {sorted(offers)})"
                )
            policy = policies.from_odrl(dict(chosen), target=body.dataset)
            evaluated = "offer"
    registry = runtime.consents
    try:
        with runtime.transaction() as tx:
            decision = evaluate(
                policy,
                request,
                tx=tx,
                consent=registry.checker(tx, record=False) if registry is not None else None,
                tier=published.dataset.tier.value,
                max_grade=published.dataset.max_grade,
            )
            raise _RollBack(decision)
    except _RollBack as rolled_back:
        decision = rolled_back.decision
    return DryRunView(
        allowed=decision.allowed,
        reason=decision.reason,
        policy=decision.policy_uid,
        evaluated=evaluated,
        trace=decision.trace_json(),
        uses=decision.uses,
        duties=[d.to_json() for d in decision.duties],
        refusedEntities=len(decision.refused_entities),
    )


def _entry(event: Event) -> UsageEntry | None:
    b = event.body
    if event.kind == "query.use":
        return UsageEntry(
            index=event.index,
            time=event.time,
            event="query.use",
            allowed=True,
            member=str(b.get("analyst", "")),
            purpose=b.get("purpose"),
            kind=b.get("kind"),
            protocol=b.get("protocol"),
            dataset=b.get("dataset"),
            agreement=b.get("agreement"),
            entities=b.get("entities"),
            reason=None,
            trace=[],
        )
    if event.kind == "policy.decision" and not b.get("allowed", False):
        trace = b.get("trace")
        return UsageEntry(
            index=event.index,
            time=event.time,
            event="policy.decision",
            allowed=False,
            member=str(b.get("assignee", "")),
            purpose=b.get("purpose"),
            kind=b.get("query_kind"),
            protocol=b.get("protocol"),
            dataset=b.get("target") or b.get("dataset"),
            agreement=b.get("agreement"),
            entities=None,
            reason=b.get("reason"),
            trace=[dict(s) for s in trace] if isinstance(trace, list) else [],
        )
    return None


def _limit(agreement: dict[str, Any]) -> int | None:
    """The smallest ``count`` constraint of the agreement's permissions, if any."""
    limits: list[int] = []
    permissions = agreement.get("permission", [])
    for rule in permissions if isinstance(permissions, list) else [permissions]:
        constraints = rule.get("constraint", []) if isinstance(rule, dict) else []
        for c in constraints if isinstance(constraints, list) else [constraints]:
            if isinstance(c, dict) and c.get("leftOperand") == "count":
                try:
                    limits.append(int(c.get("rightOperand")))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    continue
    return min(limits) if limits else None


@router.get("/usage")
def usage_report(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=MAX_USAGE_ENTRIES)] = 200,
) -> UsageReport:
    """Uses and refusals of this node's data (newest first), and the budgets per agreement."""
    entries: list[UsageEntry] = []
    budgets: list[UsageBudget] = []
    with runtime.transaction(readonly=True) as tx:
        size = tx.log_size(EVENT_LOG)
        end = size
        while end > 0 and len(entries) < limit:
            start = max(0, end - 500)
            raw = tx.log_entries(EVENT_LOG, start, end)
            for offset in range(len(raw) - 1, -1, -1):
                entry = _entry(decode_event(start + offset, raw[offset]))
                if entry is not None:
                    entries.append(entry)
                    if len(entries) >= limit:
                        break
            end = start
        seen: set[str] = set()
        for e in entries:
            if e.event != "query.use" or not e.agreement or e.agreement in seen:
                continue
            seen.add(e.agreement)
            try:
                agreement = dict(load_agreement(tx, e.agreement).agreement)
            except Exception:
                agreement = {}
            budgets.append(
                UsageBudget(
                    agreement=e.agreement,
                    member=e.member,
                    dataset=e.dataset or "",
                    uses=usage(tx, agreement_id=e.agreement).total,
                    limit=_limit(agreement),
                )
            )
    return UsageReport(entries=entries, budgets=budgets, ledgerSize=size)
