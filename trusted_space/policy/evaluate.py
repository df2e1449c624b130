"""The decision point: :func:`evaluate` a request against a policy, :func:`decide` and record it.

A refusal is a :class:`~trusted_space.policy.decision.Decision` with ``allowed=False`` and the
trace that explains it, not an exception. ``count`` is consumed with a store counter that has a
hard limit, in the same transaction as the decision's ledger entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal

from trusted_space.errors import LimitExceededError, ValidationError
from trusted_space.policy.decision import (
    ConsentChecker,
    Decision,
    DutyDue,
    Outcome,
    TraceStep,
    UsageRequest,
    rule_label,
    trace_digest,
)
from trusted_space.policy.grades import floor_steps
from trusted_space.policy.model import Constraint, Duty, Policy
from trusted_space.policy.record import DecisionSubject, record_decision
from trusted_space.policy.vocabulary import (
    COUNT_NAMESPACE,
    ENTITY_NAMESPACE,
    MODEL_RULES,
    RightOperand,
    account_key,
    duration_seconds,
)
from trusted_space.store import Store, Transaction

__all__ = ["decide", "evaluate"]


def _fmt(value: Any) -> str:
    if isinstance(value, tuple | list | frozenset | set):
        return repr(list(value))
    return repr(value)


def _compare_set(operator: str, seen: Any, right: RightOperand) -> bool:
    """Set semantics: a scalar ``seen`` is a one-element set; ``None`` matches nothing."""
    values: set[str] = set() if seen is None else ({seen} if isinstance(seen, str) else set(seen))
    rset = set(right) if isinstance(right, tuple) else {right}
    if operator == "eq":
        return bool(values & rset) if not isinstance(seen, str) else seen == right
    if operator == "neq":
        return not (values & rset)
    if operator == "isAnyOf":
        return bool(values & rset)
    if operator == "isNoneOf":
        return not (values & rset)
    return rset <= values  # isAllOf


_SET_WORDS: Final = {
    "eq": ("is", "is not"),
    "neq": ("is not", "is"),
    "isAnyOf": ("is one of", "is not any of"),
    "isNoneOf": ("is none of", "is one of"),
    "isAllOf": ("include all of", "do not include all of"),
}
_ORDER_WORDS: Final = {
    "lt": ("is before", "is not before"),
    "lteq": ("is at or before", "is after"),
    "gt": ("is after", "is not after"),
    "gteq": ("is at or after", "is before"),
}


def _ordered(operator: str, seen: Any, right: Any) -> bool:
    if operator == "lt":
        return bool(seen < right)
    if operator == "lteq":
        return bool(seen <= right)
    if operator == "gt":
        return bool(seen > right)
    return bool(seen >= right)


@dataclass
class _Ctx:
    request: UsageRequest
    now: datetime
    tx: Transaction
    consent: ConsentChecker | None
    partial_consent: str
    account: str
    periods: dict[int, str]


def _step(
    rule: str,
    index: int | None,
    rule_id: str | None,
    c: Constraint,
    seen: Any,
    outcome: Outcome,
    message: str,
    refused: Sequence[str] = (),
) -> TraceStep:
    return TraceStep(
        rule=rule,
        index=index,
        rule_id=rule_id,
        left_operand=c.left_operand,
        operator=c.operator,
        right_operand=list(c.right_operand)
        if isinstance(c.right_operand, tuple)
        else c.right_operand,
        seen=seen,
        outcome=outcome,
        blocking=False,
        message=message,
        refused_entities=tuple(refused),
    )


def _check(c: Constraint, ctx: _Ctx, rule: str, index: int, rule_id: str | None) -> TraceStep:
    req, lo, op = ctx.request, c.left_operand, c.operator

    def done(seen: Any, outcome: Outcome, msg: str, refused: Sequence[str] = ()) -> TraceStep:
        return _step(rule, index, rule_id, c, seen, outcome, msg, refused)

    if lo in ("assignee", "purpose", "computation", "protocol", "output", "role"):
        value: Any = {
            "assignee": req.assignee,
            "purpose": req.purpose,
            "computation": req.query_kind,
            "protocol": req.protocol,
            "output": req.output,
            "role": sorted(req.roles),
        }[lo]
        holds = _compare_set(op, value, c.right_operand)
        word = _SET_WORDS[op][0 if holds else 1]
        if lo == "role":
            msg = f"roles {_fmt(value)} {word} {_fmt(c.right_operand)}"
        elif value is None:
            msg = f"{lo} (none given) {word} {_fmt(c.right_operand)}"
        else:
            msg = f"{lo} {value!r} {word} {_fmt(c.right_operand)}"
        return done(value, "satisfied" if holds else "violated", msg)

    if lo == "model" or lo in MODEL_RULES:
        return _check_model(c, req, done)

    if lo in ("release", "releaseBands"):
        return _check_release(c, req, done)

    if lo == "dateTime":
        limit = datetime.fromisoformat(str(c.right_operand))
        holds = _ordered(op, ctx.now, limit)
        word = _ORDER_WORDS[op][0 if holds else 1]
        stamp = ctx.now.isoformat()
        msg = f"dateTime {stamp} {word} {c.right_operand}"
        return done(stamp, "satisfied" if holds else "violated", msg)

    if lo == "minCohort":
        if req.query_kind != "aggregate" and req.output != "aggregate":
            return done(req.cohort_size, "not_applicable", "minCohort applies to aggregates only")
        k = int(c.right_operand)  # type: ignore[arg-type]
        if req.cohort_size is None:
            return done(None, "violated", f"aggregate names no cohort size; minimum is {k}")
        holds = _ordered(op, req.cohort_size, k)
        relation = ">=" if op == "gteq" else ">"
        msg = (
            f"cohort size {req.cohort_size} {relation} {k}"
            if holds
            else f"cohort size {req.cohort_size} is below the minimum ({relation} {k})"
        )
        return done(req.cohort_size, "satisfied" if holds else "violated", msg)

    if lo == "count":
        n = int(c.right_operand)  # type: ignore[arg-type]
        limit_n = n if op == "lteq" else n - 1
        if req.agreement_id is None:
            return done(None, "violated", "count needs an agreement id; the request names none")
        use = ctx.tx.counter(COUNT_NAMESPACE, ctx.account) + 1
        if use <= limit_n:
            msg = f"use {use} by {req.assignee!r} of this dataset is within count {op} {n}"
            return done(use, "satisfied", msg)
        msg = (
            f"use {use} by {req.assignee!r} of this dataset exceeds count {op} {n} "
            "(counted across all its agreements from this offer; renegotiating does not reset it)"
        )
        return done(use, "violated", msg)

    if lo in ("epsilon", "epsilonTotal"):
        if req.query_kind != "aggregate":
            return done(req.epsilon, "not_applicable", f"{lo} applies to aggregates only")
        cap = float(str(c.right_operand))
        if req.epsilon is None:
            if lo == "epsilonTotal":
                return done(None, "not_applicable", "an exact release spends no epsilon")
            msg = (
                f"this dataset's aggregates are released only with noise (epsilon <= "
                f"{c.right_operand}); the exact aggregate is refused"
            )
            return done(None, "violated", msg)
        holds = req.epsilon <= cap
        if lo == "epsilon":
            msg = f"epsilon {req.epsilon} " + (
                f"is within the per-query maximum {c.right_operand}"
                if holds
                else f"exceeds the per-query maximum {c.right_operand}"
            )
        else:
            msg = f"epsilon {req.epsilon} " + (
                f"is charged against the member's total {c.right_operand} on this dataset"
                if holds
                else f"exceeds the member's whole total {c.right_operand} on this dataset"
            )
        return done(req.epsilon, "satisfied" if holds else "violated", msg)

    if lo == "entityCount":
        if req.query_kind != "score":
            return done(None, "not_applicable", "entityCount applies to scores only")
        n = int(c.right_operand)  # type: ignore[arg-type]
        entities = list(req.entities)
        if not entities:
            msg = "entityCount needs the scored entities named; the request names none"
            return done({"entities": 0, "over": 0}, "violated", msg)
        keys = _entity_keys(ctx, index, entities)
        over = sum(1 for k in keys if ctx.tx.counter(ENTITY_NAMESPACE, k) + 1 > n)
        seen = {"entities": len(entities), "over": over}
        window = f" per {ctx.periods[index]}" if ctx.periods.get(index) else ""
        if over == 0:
            msg = f"each of the {len(entities)} entities is within {n} scores{window}"
            return done(seen, "satisfied", msg)
        msg = (
            f"{over} of {len(entities)} entities were already scored {n} times{window} by "
            "this member (entityCount)"
        )
        return done(seen, "violated", msg)

    if lo == "entityPeriod":
        return done(None, "not_applicable", f"entityCount is counted per {c.right_operand}")

    if lo == "consent":
        entities = list(req.entities)
        if not entities:
            return done(
                {"entities": 0, "consented": 0},
                "violated",
                "consent is required but the request names no entities to check",
            )
        if ctx.consent is None:
            return done(
                {"entities": len(entities), "consented": 0},
                "violated",
                "consent is required but no consent registry is available",
            )
        missing = ctx.consent.missing_consents(entities, req.assignee, req.purpose, ctx.now)
        missing_set = set(missing)
        refused = [e for e in entities if e in missing_set]
        seen = {"entities": len(entities), "consented": len(entities) - len(refused)}
        if not refused:
            msg = f"consent held for all {len(entities)} entities for purpose {req.purpose!r}"
            return done(seen, "satisfied", msg)
        if len(refused) == len(entities):
            msg = f"no consent for any of the {len(entities)} entities for {req.purpose!r}"
            return done(seen, "violated", msg, refused)
        msg = (
            f"consent missing for {len(refused)} of {len(entities)} entities "
            f"for purpose {req.purpose!r}: {refused}"
        )
        return done(seen, "partial", msg, refused)

    # retention: not a condition on the request, a duty on the consumer.
    msg = f"results must be deleted within {c.right_operand}"
    return done(None, "not_applicable", msg)


_PARTY_HELD: Final = {"trained": "party-held", "approved": "party-held"}
_RULE_STATS: Final = {
    "modelMinColumns": ("columns", "columns carrying weight"),
    "modelMaxWeight": ("maxWeight", "largest |weight|"),
    "modelMaxShare": ("maxShare", "largest column share of the partial's variance"),
}


def _check_model(c: Constraint, req: UsageRequest, done: Callable[..., TraceStep]) -> TraceStep:
    """``model`` (who chose the weights) and the approval rules on party-held weights.

    The rules are checked on what the provider measured of the weights it holds; weights the
    analyst holds are hidden from the provider, so no rule can hold for them.
    """
    lo = c.left_operand
    if req.query_kind != "score":
        return done(req.model, "not_applicable", f"{lo} applies to scores only")
    if req.model is None:
        return done(None, "violated", f"{lo}: the score names no model mode")
    if lo == "model":
        seen = {req.model, _PARTY_HELD[req.model]} if req.model in _PARTY_HELD else {req.model}
        holds = _compare_set(c.operator, sorted(seen), c.right_operand)
        word = _SET_WORDS[c.operator][0 if holds else 1]
        msg = f"model {req.model!r} {word} {_fmt(c.right_operand)}"
        if not holds and req.model == "analyst-held":
            msg += " (weights the analyst chose freely are not accepted here)"
        return done(req.model, "satisfied" if holds else "violated", msg)
    key, what = _RULE_STATS[lo]
    if req.model == "analyst-held" or req.model_stats is None:
        msg = f"{lo}: the analyst holds the weights, so this provider cannot check the {what}"
        return done(None, "violated", msg)
    value = float(req.model_stats[key])
    limit = float(str(c.right_operand))
    holds = _ordered(c.operator, value, limit)
    relation = {"gteq": ">=", "lteq": "<="}[c.operator]
    shown = int(value) if lo == "modelMinColumns" else round(value, 6)
    msg = f"{what} {shown} " + (
        f"is {relation} {c.right_operand}" if holds else f"breaks {lo} {relation} {c.right_operand}"
    )
    return done(shown, "satisfied" if holds else "violated", msg)


_BAND_PROTOCOLS: Final = ("additive",)
"""Protocols that compute a band inside the protocol (:mod:`trusted_space.protocols.score.band`)."""


def _check_release(c: Constraint, req: UsageRequest, done: Callable[..., TraceStep]) -> TraceStep:
    """``release`` (what of a score leaves) and ``releaseBands`` (at most how many bands).

    A refusal says which protocol computes a band: Paillier and CKKS decrypt the logit at the
    analyst, so under ``release eq band`` they are refused whatever the query asks.
    """
    lo = c.left_operand
    if req.query_kind != "score":
        return done(req.release, "not_applicable", f"{lo} applies to scores only")
    release = req.release or "logit"
    hint = (
        f"; protocol {req.protocol!r} opens the exact logit at the analyst, only "
        f"{' or '.join(repr(p) for p in _BAND_PROTOCOLS)} computes a band inside the protocol "
        "(query with bands and protocol 'additive')"
        if req.protocol not in _BAND_PROTOCOLS
        else "; query with bands (edges) so that only the band leaves"
    )
    if lo == "release":
        holds = _compare_set(c.operator, release, c.right_operand)
        word = _SET_WORDS[c.operator][0 if holds else 1]
        msg = f"release {release!r} {word} {_fmt(c.right_operand)}" + ("" if holds else hint)
        return done(release, "satisfied" if holds else "violated", msg)
    limit = int(c.right_operand)  # type: ignore[arg-type]
    if req.bands is None:
        msg = f"releaseBands: an exact logit is not a release of at most {limit} bands" + hint
        return done(None, "violated", msg)
    holds = req.bands <= limit
    msg = f"{req.bands} bands " + (
        f"are within releaseBands <= {limit}" if holds else f"exceed releaseBands <= {limit}"
    )
    return done(req.bands, "satisfied" if holds else "violated", msg)


def _zone_opt_in(rule_constraints: Sequence[Constraint], req: UsageRequest, tier: str) -> bool:
    """Whether analyst-held weights on zone data lack the permission's explicit opt-in."""
    return (
        tier == "zone"
        and req.query_kind == "score"
        and req.model == "analyst-held"
        and not any(c.left_operand == "model" for c in rule_constraints)
    )


def _entity_keys(ctx: _Ctx, rule_index: int, entities: Sequence[str]) -> list[str]:
    """Store keys of the per-entity counters (member's account, entity, current period)."""
    period = ctx.periods.get(rule_index)
    bucket = int(ctx.now.timestamp()) // duration_seconds(period) if period else 0
    return [f"{ctx.account}|{e}|{bucket}" for e in entities]


_SCOPE_OPERANDS: Final = frozenset({"computation", "output"})
"""Operands that say which kind of use a permission was written for."""


def _mark(step: TraceStep) -> TraceStep:
    return replace(step, blocking=True)


def evaluate(
    policy: Policy,
    request: UsageRequest,
    *,
    tx: Transaction,
    consent: ConsentChecker | None = None,
    now: datetime | None = None,
    tier: str,
    max_grade: int,
    partial_consent: Literal["deny", "exclude"] = "deny",
    prior: Sequence[TraceStep] = (),
) -> Decision:
    """Decide ``request`` against ``policy`` inside ``tx``: evaluate, consume, record.

    Every constraint of every rule is evaluated (a complete trace, not just the first failure).
    When the request is allowed and the granting permission has ``count``, one use is consumed
    with ``tx.increment(COUNT_NAMESPACE, agreement_id, limit=N)``; then the decision is appended
    to the ledger as a ``policy.decision`` event. All of this is in ``tx``: if the caller's
    transaction fails, the use and the entry vanish together. Calling this *is* deciding: there
    is no way to get a decision that is not on the ledger.

    Args:
        policy: the provider's policy (or agreement) for the dataset.
        request: the request as the provider's node established it.
        tx: the open store transaction.
        consent: the consent registry, needed when the policy has ``consent``.
        now: the instant to evaluate at (``dateTime``, consent); defaults to ``request.at``.
        tier: the dataset's open tier. Required with ``max_grade`` so that the grade floor is
            re-applied on every request, even if a policy was edited to allow more.
        max_grade: the highest security grade among the dataset's fields.
        partial_consent: when consent is held for only some entities: ``"deny"`` (default)
            refuses the request; ``"exclude"`` allows it for the consented entities only and
            lists the others in ``refused_entities``.
        prior: the passed checks made before the policy (:class:`~trusted_space.policy.Checks`
            steps: agreement, dataset, columns); they open the trace, so the trace on the ledger
            is the whole story and the same one a refusal carries back.

    Returns:
        The :class:`Decision`, with ``ledger_index`` set.

    Raises:
        ValidationError: ``tier``/``max_grade``/``partial_consent`` is not a known value.
    """
    if partial_consent not in ("deny", "exclude"):
        raise ValidationError(
            f"partial_consent must be 'deny' or 'exclude', not {partial_consent!r}"
        )
    instant = now or request.at
    if instant.tzinfo is None:
        raise ValidationError("now must be time-zone aware")
    offer = request.offer_id or (policy.uid if policy.kind == "Offer" else request.agreement_id)
    periods = {
        i: str(c.right_operand)
        for i, r in enumerate(policy.permissions)
        for c in r.constraints
        if c.left_operand == "entityPeriod"
    }
    account = account_key(request.assignee, policy.target, offer)
    ctx = _Ctx(request, instant, tx, consent, partial_consent, account, periods)
    steps: list[TraceStep] = []
    blockers: list[int] = []

    for s in floor_steps(request, tier, max_grade):
        if s.outcome == "violated":
            blockers.append(len(steps))
        steps.append(s)

    if policy.kind == "Agreement":
        for lo, expected, seen in (
            ("assignee", policy.assignee, request.assignee),
            ("agreement", policy.uid, request.agreement_id),
        ):
            ok = seen == expected
            msg = f"{lo} {seen!r} " + (
                "matches the agreement" if ok else f"is not the agreement's {expected!r}"
            )
            if not ok:
                blockers.append(len(steps))
            steps.append(
                TraceStep(
                    "agreement",
                    None,
                    policy.uid,
                    lo,
                    "eq",
                    expected,
                    seen,
                    "satisfied" if ok else "violated",
                    False,
                    msg,
                )
            )

    prohibited_reason: str | None = None
    for i, rule in enumerate(policy.prohibitions):
        rsteps = [_check(c, ctx, "prohibition", i, rule.uid) for c in rule.constraints]
        applies = all(s.outcome == "satisfied" for s in rsteps)
        start = len(steps)
        steps.extend(rsteps)
        if applies:
            if not rsteps:
                steps.append(
                    TraceStep(
                        "prohibition",
                        i,
                        rule.uid,
                        "",
                        "",
                        None,
                        None,
                        "satisfied",
                        False,
                        "prohibition without constraints: always applies",
                    )
                )
            blockers.extend(range(start, len(steps)))
            if prohibited_reason is None:
                why = " and ".join(s.message for s in steps[start:])
                prohibited_reason = f"prohibited by {rule_label('prohibition', i, rule.uid)}: {why}"

    granted: int | None = None
    granted_partial: TraceStep | None = None
    failures: list[str] = []
    perm_blockers: list[int] = []
    perm_failures: list[tuple[bool, list[int], str]] = []
    ranges: list[tuple[int, int, bool]] = []
    candidates: list[tuple[int, TraceStep | None]] = []
    for i, rule in enumerate(policy.permissions):
        start = len(steps)
        rsteps = [_check(c, ctx, "permission", i, rule.uid) for c in rule.constraints]
        if _zone_opt_in(rule.constraints, request, tier):
            msg = (
                "analyst-held weights on zone data need the provider's explicit opt-in "
                "(a model constraint allowing analyst-held); this permission has none"
            )
            rsteps.append(
                TraceStep(
                    "permission",
                    i,
                    rule.uid,
                    "model",
                    "eq",
                    "party-held",
                    "analyst-held",
                    "violated",
                    False,
                    msg,
                )
            )
        steps.extend(rsteps)
        bad = [start + j for j, s in enumerate(rsteps) if s.outcome == "violated"]
        part = next((s for s in rsteps if s.outcome == "partial"), None)
        if part is not None and partial_consent == "deny":
            bad.append(start + rsteps.index(part))
            bad.sort()
        in_scope = not any(
            s.left_operand in _SCOPE_OPERANDS and s.outcome == "violated" for s in rsteps
        )
        ranges.append((start, len(steps), in_scope))
        if bad:
            perm_failures.append(
                (
                    in_scope,
                    bad,
                    (
                        rule_label("permission", i, rule.uid) + ": "
                        if len(policy.permissions) > 1
                        else ""
                    )
                    + steps[bad[0]].message,
                )
            )
        else:
            candidates.append((i, part))
    # Permissions written for another kind of use (another computation or output) did not
    # decide this request when some permission was written for it: their steps stay in the
    # trace, marked ``applies: false``, and neither block nor explain the refusal.
    some_in_scope = any(in_scope for _, _, in_scope in ranges)
    for in_scope, bad, message in perm_failures:
        if in_scope or not some_in_scope:
            perm_blockers.extend(bad)
            failures.append(message)
    not_applying = (
        {k for start, end, in_scope in ranges if not in_scope for k in range(start, end)}
        if some_in_scope
        else set()
    )
    if candidates:
        granted, granted_partial = min(candidates, key=lambda c: (c[1] is not None, c[0]))

    reason: str
    if blockers and steps[blockers[0]].rule in ("floor", "agreement"):
        reason = steps[blockers[0]].message
    elif prohibited_reason is not None:
        reason = prohibited_reason
    elif granted is None:
        if not policy.permissions:
            msg = f"policy {policy.uid!r} has no permission: default deny"
            steps.append(
                TraceStep("default", None, None, "", "", None, None, "violated", False, msg)
            )
            blockers.append(len(steps) - 1)
            reason = msg
        else:
            blockers.extend(perm_blockers)
            reason = "; ".join(failures)
            if len(policy.permissions) > 1:
                reason = "no permission applies: " + reason
    else:
        reason = f"allowed by {rule_label('permission', granted, policy.permissions[granted].uid)}"

    allowed = not blockers and granted is not None
    uses: int | None = None
    if allowed and granted is not None:
        rule = policy.permissions[granted]
        per_entity = next((c for c in rule.constraints if c.left_operand == "entityCount"), None)
        if allowed and per_entity is not None and request.query_kind == "score":
            n = int(per_entity.right_operand)  # type: ignore[arg-type]
            try:
                excluded = set(granted_partial.refused_entities if granted_partial else ())
                used = [e for e in request.entities if e not in excluded]
                for key in _entity_keys(ctx, granted, used):
                    tx.increment(ENTITY_NAMESPACE, key, limit=n)
            except LimitExceededError:
                # Only a racing writer gets here (SQLite serialises writers): the entities
                # counted before it stay counted (over-charged, never under-charged); checked
                # before count, so a refused use never consumes count.
                allowed = False
                msg = f"entityCount lteq {n} was exhausted by a concurrent request"
                blockers.append(len(steps))
                steps.append(_step("count", granted, rule.uid, per_entity, None, "violated", msg))
                reason = msg

        count = next((c for c in rule.constraints if c.left_operand == "count"), None)
        if allowed and count is not None and request.agreement_id is not None:
            n = int(count.right_operand)  # type: ignore[arg-type]
            limit_n = n if count.operator == "lteq" else n - 1
            try:
                uses = tx.increment(COUNT_NAMESPACE, ctx.account, limit=limit_n)
            except LimitExceededError:
                allowed = False
                msg = (
                    f"count {count.operator} {n} for agreement {request.agreement_id!r} "
                    "was exhausted by a concurrent request"
                )
                blockers.append(len(steps))
                steps.append(_step("count", granted, rule.uid, count, None, "violated", msg))
                reason = msg
            else:
                steps.append(
                    _step(
                        "count",
                        granted,
                        rule.uid,
                        count,
                        uses,
                        "satisfied",
                        f"use {uses} of {limit_n} recorded for {request.assignee!r} on this "
                        "dataset",
                    )
                )
    refused: tuple[str, ...] = ()
    permitted: tuple[str, ...] = tuple(request.entities)
    partial = False
    if granted_partial is not None:
        refused = granted_partial.refused_entities
    elif not allowed:
        refused = next((s.refused_entities for s in steps if s.refused_entities), ())
    if allowed and refused:
        partial = True
        gone = set(refused)
        permitted = tuple(e for e in request.entities if e not in gone)
        reason += f" for {len(permitted)} of {len(request.entities)} entities"
        reason += f" (excluded: {list(refused)})"
    if not allowed:
        permitted = ()

    blocked = set(blockers)
    trace = tuple(prior) + tuple(
        _mark(s) if k in blocked else replace(s, applies=False) if k in not_applying else s
        for k, s in enumerate(steps)
    )
    duties = _duties(policy, granted) if allowed else (DutyDue("log"),)
    digest = trace_digest(trace)
    decision = Decision(
        allowed=allowed,
        policy_uid=policy.uid,
        reason=reason,
        trace=trace,
        duties=duties,
        permission_index=granted if allowed else None,
        partial=partial,
        refused_entities=refused,
        permitted_entities=permitted,
        uses=uses,
        trace_digest=digest,
    )
    subject = DecisionSubject(
        assignee=request.assignee,
        query_kind=request.query_kind,
        at=ctx.now,
        agreement=request.agreement_id,
        target=policy.target,
        purpose=request.purpose,
        output=request.output,
        query=request.query_id,
    )
    index = record_decision(
        tx,
        subject,
        allowed=allowed,
        reason=reason,
        trace=trace,
        policy=policy.uid,
        partial=partial,
        refused_entities=refused,
        uses=uses,
        duties=duties,
    )
    return replace(decision, ledger_index=index)


def _duties(policy: Policy, granted: int | None) -> tuple[DutyDue, ...]:
    out: list[DutyDue] = [DutyDue("log")]
    sources: list[Duty] = list(policy.obligations)
    retention: list[str] = []
    if granted is not None:
        rule = policy.permissions[granted]
        sources.extend(rule.duties)
        retention = [
            str(c.right_operand) for c in rule.constraints if c.left_operand == "retention"
        ]
    for d in sources:
        if d.action == "notify":
            due = DutyDue("notify", recipient=policy.assigner)
        elif d.action == "delete":
            due = DutyDue("delete", after=str(d.constraints[0].right_operand))
        else:
            continue
        if due not in out:
            out.append(due)
    for after in retention:
        due = DutyDue("delete", after=after)
        if due not in out:
            out.append(due)
    return tuple(out)


def decide(
    store: Store,
    policy: Policy,
    request: UsageRequest,
    consent: ConsentChecker | None = None,
    *,
    now: datetime | None = None,
    tier: str,
    max_grade: int,
    partial_consent: Literal["deny", "exclude"] = "deny",
) -> Decision:
    """Open a transaction, :func:`evaluate` in it, and commit; return the decision.

    The ``count`` consumption and the ledger entry commit together or not at all. See
    :func:`evaluate` for the arguments.
    """
    with store.transaction() as tx:
        return evaluate(
            policy,
            request,
            tx=tx,
            consent=consent,
            now=now,
            tier=tier,
            max_grade=max_grade,
            partial_consent=partial_consent,
        )
