"""A provider's view of the use of its data, and the policy dry run (staff only).

- ``POST /management/policy/dry-run``: "would this request be allowed?" The offer (or agreement)
  of one of this node's datasets is evaluated by the same engine the enforcement point runs
  (:func:`trusted_space.policy.evaluate`: grade floor, purpose, computation, protocol, ``count``,
  consent, ...) and the full trace is returned. The evaluation runs inside a store transaction
  that is then rolled back, so it consumes no ``count``, writes no ledger entry and leaves no
  trace anywhere: a dry run is a question, not a use.
  On a consumer, for an agreement it holds on a dataset of another node ("would my request be
  allowed?" before asking), the same engine evaluates this node's copy of the signed agreement,
  with the dataset's tier and grade from the federated catalog; only the provider can check
  consents and its own use counts, so the answer says so (``note``) and the provider still
  decides when the request comes.
- ``GET /management/usage``: every use (``query.use``) and every refusal (``policy.decision``
  denied) of this node's data, from its own ledger, newest first, with traces; and per agreement
  the uses counted so far on its account — the member's uses of the dataset under the offer the
  agreement came from, across all its agreements — and the ``count`` limit of its policy.

Threats: staff only (``require_admin``). A dry run evaluates against the node's real state but
cannot change it: the rollback is the mechanism, not a flag the engine could forget. Usage
entries carry what the ledger carries (counts and digests), never an entity id.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from connectors.client.catalog import catalog_rows, fetch_catalog
from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.runtime import NodeRuntime
from connectors.node.wire.console import (
    DryRunRequest,
    DryRunView,
    UsageBudget,
    UsageEntry,
    UsageReport,
)
from trusted_space import policy as policies
from trusted_space.catalog import DATASET_NAMESPACE, TS_NAMESPACE, load_dataset
from trusted_space.contracts import load_agreement
from trusted_space.contracts.states import OFFER_PROPERTY
from trusted_space.errors import ConflictError, NotFoundError, ValidationError
from trusted_space.events import EVENT_LOG, Event, decode_event
from trusted_space.policy import COUNT_NAMESPACE, Decision, Policy, UsageRequest, evaluate
from trusted_space.policy.vocabulary import account_key

__all__ = ["MAX_USAGE_ENTRIES", "dry_run", "router", "usage_report"]

MAX_USAGE_ENTRIES = 1000
_DEFAULT_OUTPUT = {"score": "score", "aggregate": "aggregate", "train": "aggregate"}

router = APIRouter(prefix="/management", tags=["usage"], dependencies=[Depends(require_admin)])


class _RollBack(Exception):
    """Raised inside the dry run's transaction so that the store undoes everything."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("dry run")
        self.decision = decision


def _offer_of(agreement: dict[str, Any]) -> str | None:
    """The offer an agreement was granted from (its count account), if it names one."""
    offer = agreement.get(OFFER_PROPERTY)
    return offer if isinstance(offer, str) and offer else None


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
        model=body.model or ("analyst-held" if body.kind == "score" else None),
        agreement_id=body.agreement,
        cohort_size=body.cohortSize
        if body.cohortSize is not None
        else (len(body.entities) or None),
        entities=tuple(body.entities),
    )
    evaluated: Literal["agreement", "offer"]
    with runtime.transaction(readonly=True) as tx:
        local = tx.get(DATASET_NAMESPACE, body.dataset) is not None
    if not local and body.agreement is not None:
        return _dry_run_as_consumer(runtime, body, request)
    with runtime.transaction(readonly=True) as tx:
        published = load_dataset(tx, body.dataset)
        if body.agreement is not None:
            signed = load_agreement(tx, body.agreement)
            if signed.agreement.get("target") != body.dataset:
                raise ValidationError(
                    f"agreement: {body.agreement!r} does not cover dataset {body.dataset!r}"
                )
            policy = policies.from_odrl(_odrl(dict(signed.agreement)))
            # count is kept per (member, dataset, offer): read the account the real use would
            request = replace(request, offer_id=_offer_of(signed.agreement))
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
    decision = _evaluate_rolled_back(
        runtime, policy, request, published.dataset.tier.value, published.dataset.max_grade
    )
    return _view(decision, evaluated, note=None)


def _evaluate_rolled_back(
    runtime: NodeRuntime, policy: Policy, request: UsageRequest, tier: str, max_grade: int
) -> Decision:
    """The engine's decision, in a transaction that is then undone (no use, no ledger entry)."""
    registry = runtime.consents
    try:
        with runtime.transaction() as tx:
            decision = evaluate(
                policy,
                request,
                tx=tx,
                consent=registry.checker(tx, record=False) if registry is not None else None,
                tier=tier,
                max_grade=max_grade,
            )
            raise _RollBack(decision)
    except _RollBack as rolled_back:
        return rolled_back.decision


def _dry_run_as_consumer(
    runtime: NodeRuntime, body: DryRunRequest, request: UsageRequest
) -> DryRunView:
    """Evaluate an agreement this node holds as consumer, on its own copy (see the docstring)."""
    if body.agreement is None:  # pragma: no cover - the caller checked
        raise ValidationError("agreement: required for a dataset of another node")
    with runtime.transaction(readonly=True) as tx:
        signed = load_agreement(tx, body.agreement)
    agreement = dict(signed.agreement)
    if agreement.get("target") != body.dataset or agreement.get("assignee") != runtime.id:
        raise ValidationError(
            f"agreement: {body.agreement!r} is not this node's agreement on {body.dataset!r}"
        )
    operator_url, operator_id = _operator(runtime)
    catalog = fetch_catalog(
        operator_url, federated=True, signer=runtime.client, audience=operator_id
    )
    row = next(
        (
            r
            for r in catalog_rows(catalog)
            if r["dataset"] == body.dataset and r["provider"] == agreement.get("assigner")
        ),
        None,
    )
    if row is None or row["tier"] is None or row["maxGrade"] is None:
        raise NotFoundError(f"dataset {body.dataset!r} is not in the federated catalog")
    decision = _evaluate_rolled_back(
        runtime,
        policies.from_odrl(_odrl(agreement)),
        request,
        str(row["tier"]),
        int(row["maxGrade"]),
    )
    return _view(
        decision,
        "agreement",
        note=f"evaluated on this node's copy of the agreement; consents and use counts are "
        f"checked by {agreement.get('assigner')} when the request comes",
    )


def _operator(runtime: NodeRuntime) -> tuple[str, str]:
    if runtime.anchor is None:
        raise ConflictError(f"{runtime.id} has no operator anchor: it is not part of a space yet")
    return runtime.anchor.url, runtime.anchor.operator_id


def _view(
    decision: Decision, evaluated: Literal["agreement", "offer"], note: str | None
) -> DryRunView:
    return DryRunView(
        allowed=decision.allowed,
        reason=decision.reason,
        policy=decision.policy_uid,
        evaluated=evaluated,
        trace=decision.trace_json(),
        uses=decision.uses,
        duties=[d.to_json() for d in decision.duties],
        refusedEntities=len(decision.refused_entities),
        note=note,
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
                    uses=tx.counter(
                        COUNT_NAMESPACE,
                        account_key(e.member, e.dataset, _offer_of(agreement) or e.agreement),
                    ),
                    limit=_limit(agreement),
                )
            )
    return UsageReport(entries=entries, budgets=budgets, ledgerSize=size)
