"""Differential-privacy budgets: how much epsilon each member may still spend on a dataset here.

Why: an aggregate released with Laplace noise of scale ``sensitivity / epsilon`` is
``epsilon``-differentially private, but privacy losses add up: an analyst that repeats a query
averages the noise away. So each provider keeps, *in its own store*, how much epsilon every
**member** has spent on each of its datasets — across all the member's agreements, so that
renegotiating never gives a fresh budget — and refuses a query that would go past the limit,
before any of its data is read. The provider is the enforcement point; it never takes the
analyst's word for the budget left.

Where the limit comes from, first found wins:

1. a limit the provider's staff set for this member on this dataset (``member:`` key in
   :data:`LIMIT_NAMESPACE`; raised or lowered through the management API);
2. a limit the staff set for every member on the dataset (``dataset:`` key);
3. the granting permission's ``epsilonTotal`` constraint (the policy's own total).

No limit means no noisy query is possible on that dataset. Whether noise is *required* is the
policy's ``epsilon`` constraint (an exact aggregate is then refused by the policy engine).

Threats and how they are handled:

- *Resetting by renegotiating.* Spending is keyed by (member, dataset) (:func:`budget_key`), not
  by agreement: a new agreement continues the old account. Only the provider's staff can reset it
  (:func:`reset_budget`), and that is a ``budget.reset`` ledger entry.
- *Overspending by racing.* Spending is a store counter (:data:`SPENT_NAMESPACE`) incremented
  with a hard ``limit`` inside the caller's transaction
  (:meth:`~trusted_space.store.Transaction.increment`): on SQLite every write transaction is
  ``BEGIN IMMEDIATE``, so N concurrent charges past the limit cannot all win. A reset does not
  move the counter back (counters never go backwards): it records the counter's value as the new
  base, and the limit is checked against ``base + limit``.
- *A budget below zero.* ``limit - spent`` is clamped at zero; lowering a limit below what was
  already spent leaves a remaining budget of zero, not a debt.
- *Floating-point drift.* Amounts are integers in micro-epsilon (:data:`MICRO`); an epsilon is
  rounded to the nearest micro-epsilon once, by :func:`to_micro`, and the noise is then drawn for
  exactly the amount charged (:func:`from_micro`), so what is charged is what is spent.
- *Denying a charge.* :func:`charge` appends a ``budget.charged`` event to the provider's ledger in
  the same transaction as the counter, so the counter and the ledger cannot disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from trusted_space.errors import LimitExceededError, ValidationError
from trusted_space.events import record_event
from trusted_space.policy import Checks, DecisionSubject, TraceStep
from trusted_space.store import Transaction

__all__ = [
    "BASE_NAMESPACE",
    "LIMIT_NAMESPACE",
    "MAX_EPSILON",
    "MICRO",
    "SPENT_NAMESPACE",
    "BudgetCharge",
    "BudgetCheck",
    "BudgetStatus",
    "budget_key",
    "budget_limit",
    "budget_status",
    "charge",
    "check_budget",
    "from_micro",
    "record_refusal",
    "remaining",
    "reset_budget",
    "set_budget",
    "spent",
    "to_micro",
]

MICRO: Final = 1_000_000
"""Micro-epsilon per epsilon: budgets are integers in these units."""
MAX_EPSILON: Final = 1_000_000.0
"""Largest epsilon accepted anywhere (a larger one is no privacy at all, and likely a typo)."""
SPENT_NAMESPACE: Final = "privacy.spent"
"""Counter namespace: micro-epsilon ever spent, keyed by :func:`budget_key` (member, dataset)."""
BASE_NAMESPACE: Final = "privacy.base"
"""Document namespace: the counter's value at the last staff reset, keyed by :func:`budget_key`."""
LIMIT_NAMESPACE: Final = "privacy.budget"
"""Document namespace of limits: keys ``dataset:<id>`` and ``member:<budget_key>``."""


def to_micro(epsilon: float) -> int:
    """Convert an epsilon to whole micro-epsilon (nearest), refusing nonsense.

    Raises:
        ValidationError: not a finite number in ``[1e-6, MAX_EPSILON]``.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise ValidationError(f"epsilon must be a number, got {epsilon!r}")
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0 or value > MAX_EPSILON:
        raise ValidationError(f"epsilon must be a finite number in (0, {MAX_EPSILON}]")
    micro = round(value * MICRO)
    if micro < 1:
        raise ValidationError(f"epsilon {value!r} is below one micro-epsilon")
    return micro


def from_micro(micro: int) -> float:
    """The epsilon a number of micro-epsilon stands for."""
    return micro / MICRO


def _nonempty(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{name} must be a non-empty string")
    return value


def budget_key(member: str, dataset_id: str) -> str:
    """The account a member's epsilon on a dataset is kept under (whatever its agreements)."""
    return json.dumps(
        [_nonempty(dataset_id, "dataset_id"), _nonempty(member, "member")], separators=(",", ":")
    )


def set_budget(
    tx: Transaction,
    epsilon: float,
    *,
    dataset_id: str,
    member: str | None = None,
) -> int:
    """Set the total epsilon a member (or every member) may spend on a dataset here.

    Args:
        tx: the provider's store transaction.
        epsilon: the total budget (not per query), counted since the last reset.
        dataset_id: the dataset.
        member: set it for this member only (overrides the dataset's setting and the policy's
            ``epsilonTotal``); ``None`` sets the default for every member on the dataset.

    Returns:
        The limit in micro-epsilon.
    """
    key = (
        f"member:{budget_key(member, dataset_id)}"
        if member is not None
        else f"dataset:{_nonempty(dataset_id, 'dataset_id')}"
    )
    micro = to_micro(epsilon)
    tx.put(LIMIT_NAMESPACE, key, {"limitMicro": micro})
    record_event(tx, "budget.limit", {"dataset": dataset_id, "member": member, "limitMicro": micro})
    return micro


def budget_limit(
    tx: Transaction, *, member: str, dataset_id: str, policy_total: float | None = None
) -> float | None:
    """The budget that applies to ``member`` on ``dataset_id``; ``None`` when none is set."""
    for key in (f"member:{budget_key(member, dataset_id)}", f"dataset:{dataset_id}"):
        doc = tx.get(LIMIT_NAMESPACE, key)
        if doc is not None:
            micro = doc.body.get("limitMicro")
            if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
                raise ValidationError(f"stored budget {key!r} is malformed")
            return from_micro(micro)
    return policy_total


def _base(tx: Transaction, key: str) -> int:
    doc = tx.get(BASE_NAMESPACE, key)
    if doc is None:
        return 0
    base = doc.body.get("baseMicro")
    if isinstance(base, bool) or not isinstance(base, int) or base < 0:
        raise ValidationError(f"stored budget base {key!r} is malformed")
    return base


def _spent_micro(tx: Transaction, key: str) -> int:
    return tx.counter(SPENT_NAMESPACE, key) - _base(tx, key)


def spent(tx: Transaction, *, member: str, dataset_id: str) -> float:
    """Epsilon a member has spent on a dataset at this node since the last reset."""
    return from_micro(_spent_micro(tx, budget_key(member, dataset_id)))


def remaining(tx: Transaction, *, member: str, dataset_id: str, limit: float) -> float:
    """Epsilon still available under ``limit`` (never negative)."""
    used = _spent_micro(tx, budget_key(member, dataset_id))
    return from_micro(max(0, _limit_micro(limit) - used))


def _limit_micro(limit: float) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ValidationError(f"limit must be a number, got {limit!r}")
    if not math.isfinite(limit) or limit < 0:
        raise ValidationError("limit must be a finite number >= 0")
    return round(float(limit) * MICRO)


def reset_budget(tx: Transaction, *, member: str, dataset_id: str, reason: str) -> float:
    """The provider's staff start a member's account on a dataset afresh; return what was spent.

    Recorded as a ``budget.reset`` ledger entry. The counter itself never goes back: its value
    becomes the new base.
    """
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise ValidationError("reason: give a non-empty reason of at most 500 characters")
    key = budget_key(member, dataset_id)
    counter = tx.counter(SPENT_NAMESPACE, key)
    before = counter - _base(tx, key)
    tx.put(BASE_NAMESPACE, key, {"baseMicro": counter})
    record_event(
        tx,
        "budget.reset",
        {"dataset": dataset_id, "member": member, "spentMicro": before, "reason": reason},
    )
    return from_micro(before)


@dataclass(frozen=True)
class BudgetStatus:
    """A member's account on a dataset, as the provider's staff see it.

    Attributes:
        member: the member.
        dataset_id: the dataset.
        spent: epsilon spent since the last reset.
        limit: the staff's limit for this member or dataset (``None``: the policy's
            ``epsilonTotal`` applies, or nothing).
        remaining: ``limit - spent`` clamped at 0 (``None`` without a staff limit).
    """

    member: str
    dataset_id: str
    spent: float
    limit: float | None
    remaining: float | None


def budget_status(tx: Transaction, *, member: str, dataset_id: str) -> BudgetStatus:
    """What ``member`` has spent on ``dataset_id`` and the staff limit that applies."""
    limit = budget_limit(tx, member=member, dataset_id=dataset_id)
    used = spent(tx, member=member, dataset_id=dataset_id)
    left = (
        remaining(tx, member=member, dataset_id=dataset_id, limit=limit)
        if limit is not None
        else None
    )
    return BudgetStatus(member, dataset_id, used, limit, left)


@dataclass(frozen=True)
class BudgetCharge:
    """One accepted charge.

    Attributes:
        member: the member charged.
        dataset_id: the dataset.
        epsilon: the amount charged (exactly what the noise must be drawn for).
        spent: epsilon spent after this charge (since the last reset).
        limit: the limit it was charged against.
        remaining: epsilon left after this charge (never negative).
        ledger_index: index of the ``budget.charged`` ledger entry.
    """

    member: str
    dataset_id: str
    epsilon: float
    spent: float
    limit: float
    remaining: float
    ledger_index: int


def charge(
    tx: Transaction,
    *,
    member: str,
    dataset_id: str,
    epsilon: float,
    limit: float,
    query_id: str | None = None,
    agreement_id: str | None = None,
) -> BudgetCharge:
    """Spend ``epsilon`` of ``member``'s budget on ``dataset_id``, atomically, or change nothing.

    Args:
        tx: the provider's store transaction (commit it to make the charge stick).
        member: whose budget (the authenticated analyst).
        dataset_id: on which dataset.
        epsilon: the amount (rounded to the nearest micro-epsilon; see :func:`to_micro`).
        limit: the total budget (from :func:`budget_limit`).
        query_id: recorded on the ledger entry.
        agreement_id: recorded on the ledger entry (the account is not per agreement).

    Raises:
        LimitExceededError: spent + epsilon would exceed the limit; nothing was changed.
        ValidationError: a malformed epsilon, limit, member or dataset.
    """
    key = budget_key(member, dataset_id)
    micro = to_micro(epsilon)
    limit_micro = _limit_micro(limit)
    base = _base(tx, key)
    try:
        total = tx.increment(SPENT_NAMESPACE, key, micro, limit=base + limit_micro) - base
    except LimitExceededError as exc:
        left = max(0, limit_micro - _spent_micro(tx, key))
        raise LimitExceededError(
            f"epsilon {from_micro(micro)} exceeds the {from_micro(left)} left of the "
            f"{from_micro(limit_micro)} total of {member!r} on this dataset"
        ) from exc
    index = record_event(
        tx,
        "budget.charged",
        {
            "member": member,
            "agreement": agreement_id,
            "dataset": dataset_id,
            "query": query_id,
            "epsilonMicro": micro,
            "spentMicro": total,
            "limitMicro": limit_micro,
        },
    )
    return BudgetCharge(
        member=member,
        dataset_id=dataset_id,
        epsilon=from_micro(micro),
        spent=from_micro(total),
        limit=from_micro(limit_micro),
        remaining=from_micro(max(0, limit_micro - total)),
        ledger_index=index,
    )


@dataclass(frozen=True)
class BudgetCheck:
    """Whether a query's epsilon fits the budget left, with the trace step that says why.

    Attributes:
        allowed: the epsilon fits (a later :func:`charge` may still lose a race).
        member: the member.
        dataset_id: the dataset.
        epsilon: the epsilon asked for (rounded to micro-epsilon).
        limit: the budget that applies, or ``None`` when none is known.
        remaining: epsilon left before this query.
        message: one human sentence.
        agreement_id: the agreement named (the trace step's rule id; recorded only).
    """

    allowed: bool
    member: str
    dataset_id: str
    epsilon: float
    limit: float | None
    remaining: float
    message: str
    agreement_id: str | None = None

    def step(self) -> TraceStep:
        """The check as a policy trace step (rule ``budget``, operand ``epsilonTotal``)."""
        return TraceStep(
            rule="budget",
            index=None,
            rule_id=self.agreement_id,
            left_operand="epsilonTotal",
            operator="lteq",
            right_operand=self.remaining if self.limit is not None else None,
            seen=self.epsilon,
            outcome="satisfied" if self.allowed else "violated",
            blocking=not self.allowed,
            message=self.message,
        )


def check_budget(
    tx: Transaction,
    *,
    member: str,
    dataset_id: str,
    epsilon: float,
    policy_total: float | None = None,
    agreement_id: str | None = None,
) -> BudgetCheck:
    """Read-only: does ``epsilon`` fit what ``member`` has left on ``dataset_id``?"""
    micro = to_micro(epsilon)
    limit = budget_limit(tx, member=member, dataset_id=dataset_id, policy_total=policy_total)
    if limit is None:
        return BudgetCheck(
            False,
            member,
            dataset_id,
            from_micro(micro),
            None,
            0.0,
            f"no privacy budget is set for dataset {dataset_id!r}: noisy aggregates are not "
            "offered on it",
            agreement_id,
        )
    left = remaining(tx, member=member, dataset_id=dataset_id, limit=limit)
    ok = micro <= round(left * MICRO)
    message = (
        f"epsilon {from_micro(micro)} fits the {left} left of the {limit} total"
        if ok
        else f"epsilon {from_micro(micro)} exceeds the {left} left of the {limit} total of "
        f"{member!r} on this dataset (counted across all its agreements)"
    )
    return BudgetCheck(
        ok, member, dataset_id, from_micro(micro), limit, left, message, agreement_id
    )


def record_refusal(
    tx: Transaction,
    check: BudgetCheck,
    *,
    query_id: str,
    purpose: str,
    at: datetime,
) -> int:
    """Append the refusal as a ``policy.decision`` entry (like every refusal); return its index.

    It goes through :meth:`~trusted_space.policy.Checks.record`, the refusal step every path
    shares, so the entry has the same fields as every other decision.
    """
    checks = Checks(
        DecisionSubject(
            assignee=check.member,
            query_kind="aggregate",
            at=at,
            agreement=check.agreement_id,
            target=check.dataset_id,
            purpose=purpose,
            output="aggregate",
            query=query_id,
        )
    )
    checks.add(check.step())
    return checks.record(tx)[1]
