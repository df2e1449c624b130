"""Differential-privacy budgets: how much epsilon each agreement may still spend at a provider.

Why: an aggregate released with Laplace noise of scale ``sensitivity / epsilon`` is
``epsilon``-differentially private, but privacy losses add up: an analyst that repeats a query
averages the noise away. So each provider keeps, *in its own store*, how much epsilon every
agreement has spent on its data and refuses a query that would go past the limit, before any of
its data is read. The provider is the enforcement point; it never takes the analyst's word for
the budget left.

Where the limit comes from: the ODRL policy language (``trusted_space.policy``) has no epsilon
operand yet, so the limit is a **provider-side setting** stored next to the data, per dataset
(the default for every agreement on it) and optionally per agreement (overrides the dataset's),
in the document namespace :data:`LIMIT_NAMESPACE`. No limit set means no noisy query is possible
on that dataset (a query asking for noise is refused; see ``trusted_space.protocols.aggregate``).

Threats and how they are handled:

- *Overspending by racing.* Spending is a store counter (:data:`SPENT_NAMESPACE`, key: the
  agreement id) incremented with a hard ``limit`` inside the caller's transaction
  (:meth:`~trusted_space.store.Transaction.increment`): on SQLite every write transaction is
  ``BEGIN IMMEDIATE``, so N concurrent charges past the limit cannot all win.
- *A budget below zero.* Counters only grow and never past the limit, so the remaining budget
  ``limit - spent`` is never negative; lowering a limit below what was already spent leaves a
  remaining budget of zero, not a debt.
- *Floating-point drift.* Amounts are integers in micro-epsilon (:data:`MICRO`); an epsilon is
  rounded to the nearest micro-epsilon once, by :func:`to_micro`, and the noise is then drawn for
  exactly the amount charged (:func:`from_micro`), so what is charged is what is spent.
- *Denying a charge.* :func:`charge` appends a ``budget.charged`` event to the provider's ledger in
  the same transaction as the counter, so the counter and the ledger cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from trusted_space.errors import LimitExceededError, ValidationError
from trusted_space.events import record_event
from trusted_space.policy import Checks, DecisionSubject, TraceStep
from trusted_space.store import Transaction

__all__ = [
    "LIMIT_NAMESPACE",
    "MAX_EPSILON",
    "MICRO",
    "SPENT_NAMESPACE",
    "BudgetCharge",
    "BudgetCheck",
    "budget_limit",
    "charge",
    "check_budget",
    "from_micro",
    "record_refusal",
    "remaining",
    "set_budget",
    "spent",
    "to_micro",
]

MICRO: Final = 1_000_000
"""Micro-epsilon per epsilon: budgets are integers in these units."""
MAX_EPSILON: Final = 1_000_000.0
"""Largest epsilon accepted anywhere (a larger one is no privacy at all, and likely a typo)."""
SPENT_NAMESPACE: Final = "privacy.spent"
"""Counter namespace: micro-epsilon spent, keyed by agreement id."""
LIMIT_NAMESPACE: Final = "privacy.budget"
"""Document namespace of limits: keys ``dataset:<id>`` and ``agreement:<id>``."""


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


def _limit_key(agreement_id: str | None, dataset_id: str | None) -> str:
    if (agreement_id is None) == (dataset_id is None):
        raise ValidationError("set a budget for exactly one of agreement_id or dataset_id")
    scope, ident = (
        ("agreement", agreement_id) if agreement_id is not None else ("dataset", dataset_id)
    )
    if not isinstance(ident, str) or not ident:
        raise ValidationError(f"{scope} id must be a non-empty string")
    return f"{scope}:{ident}"


def set_budget(
    tx: Transaction,
    epsilon: float,
    *,
    agreement_id: str | None = None,
    dataset_id: str | None = None,
) -> int:
    """Set the total epsilon an agreement (or every agreement on a dataset) may spend here.

    Args:
        tx: the provider's store transaction.
        epsilon: the total budget (not per query).
        agreement_id: set it for this agreement (overrides its dataset's setting), or
        dataset_id: set the default for every agreement on this dataset.

    Returns:
        The limit in micro-epsilon.
    """
    key = _limit_key(agreement_id, dataset_id)
    micro = to_micro(epsilon)
    tx.put(LIMIT_NAMESPACE, key, {"limitMicro": micro})
    return micro


def budget_limit(tx: Transaction, *, agreement_id: str, dataset_id: str) -> float | None:
    """The budget that applies to ``agreement_id`` on ``dataset_id``; ``None`` when none is set."""
    for key in (f"agreement:{agreement_id}", f"dataset:{dataset_id}"):
        doc = tx.get(LIMIT_NAMESPACE, key)
        if doc is not None:
            micro = doc.body.get("limitMicro")
            if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
                raise ValidationError(f"stored budget {key!r} is malformed")
            return from_micro(micro)
    return None


def spent(tx: Transaction, agreement_id: str) -> float:
    """Epsilon already spent under an agreement at this node."""
    return from_micro(tx.counter(SPENT_NAMESPACE, agreement_id))


def remaining(tx: Transaction, agreement_id: str, limit: float) -> float:
    """Epsilon still available under ``limit`` (never negative)."""
    used = tx.counter(SPENT_NAMESPACE, agreement_id)
    return from_micro(max(0, _limit_micro(limit) - used))


def _limit_micro(limit: float) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ValidationError(f"limit must be a number, got {limit!r}")
    if not math.isfinite(limit) or limit < 0:
        raise ValidationError("limit must be a finite number >= 0")
    return round(float(limit) * MICRO)


@dataclass(frozen=True)
class BudgetCharge:
    """One accepted charge.

    Attributes:
        agreement_id: the agreement charged.
        epsilon: the amount charged (exactly what the noise must be drawn for).
        spent: epsilon spent after this charge.
        limit: the limit it was charged against.
        remaining: epsilon left after this charge (never negative).
        ledger_index: index of the ``budget.charged`` ledger entry.
    """

    agreement_id: str
    epsilon: float
    spent: float
    limit: float
    remaining: float
    ledger_index: int


def charge(
    tx: Transaction,
    agreement_id: str,
    epsilon: float,
    limit: float,
    *,
    query_id: str | None = None,
    dataset_id: str | None = None,
) -> BudgetCharge:
    """Spend ``epsilon`` of ``agreement_id``'s budget, atomically, or change nothing.

    Args:
        tx: the provider's store transaction (commit it to make the charge stick).
        agreement_id: whose budget.
        epsilon: the amount (rounded to the nearest micro-epsilon; see :func:`to_micro`).
        limit: the total budget (from :func:`budget_limit`).
        query_id: recorded on the ledger entry.
        dataset_id: recorded on the ledger entry.

    Raises:
        LimitExceededError: spent + epsilon would exceed the limit; nothing was changed.
        ValidationError: a malformed epsilon, limit or agreement id.
    """
    if not isinstance(agreement_id, str) or not agreement_id:
        raise ValidationError("agreement_id must be a non-empty string")
    micro = to_micro(epsilon)
    limit_micro = _limit_micro(limit)
    try:
        total = tx.increment(SPENT_NAMESPACE, agreement_id, micro, limit=limit_micro)
    except LimitExceededError as exc:
        left = max(0, limit_micro - tx.counter(SPENT_NAMESPACE, agreement_id))
        raise LimitExceededError(
            f"epsilon {from_micro(micro)} exceeds the {from_micro(left)} left of the "
            f"{from_micro(limit_micro)} budget of agreement {agreement_id!r}"
        ) from exc
    index = record_event(
        tx,
        "budget.charged",
        {
            "agreement": agreement_id,
            "dataset": dataset_id,
            "query": query_id,
            "epsilonMicro": micro,
            "spentMicro": total,
            "limitMicro": limit_micro,
        },
    )
    return BudgetCharge(
        agreement_id=agreement_id,
        epsilon=from_micro(micro),
        spent=from_micro(total),
        limit=from_micro(limit_micro),
        remaining=from_micro(limit_micro - total),
        ledger_index=index,
    )


@dataclass(frozen=True)
class BudgetCheck:
    """Whether a query's epsilon fits the budget left, with the trace step that says why.

    Attributes:
        allowed: the epsilon fits (a later :func:`charge` may still lose a race).
        agreement_id: the agreement.
        dataset_id: the dataset.
        epsilon: the epsilon asked for (rounded to micro-epsilon).
        limit: the budget that applies, or ``None`` when the provider set none.
        remaining: epsilon left before this query.
        message: one human sentence.
    """

    allowed: bool
    agreement_id: str
    dataset_id: str
    epsilon: float
    limit: float | None
    remaining: float
    message: str

    def step(self) -> TraceStep:
        """The check as a policy trace step (rule ``budget``, operand ``epsilon``)."""
        return TraceStep(
            rule="budget",
            index=None,
            rule_id=self.agreement_id,
            left_operand="epsilon",
            operator="lteq",
            right_operand=self.remaining if self.limit is not None else None,
            seen=self.epsilon,
            outcome="satisfied" if self.allowed else "violated",
            blocking=not self.allowed,
            message=self.message,
        )


def check_budget(
    tx: Transaction, *, agreement_id: str, dataset_id: str, epsilon: float
) -> BudgetCheck:
    """Read-only: does ``epsilon`` fit what ``agreement_id`` has left on ``dataset_id``?"""
    micro = to_micro(epsilon)
    limit = budget_limit(tx, agreement_id=agreement_id, dataset_id=dataset_id)
    if limit is None:
        return BudgetCheck(
            False,
            agreement_id,
            dataset_id,
            from_micro(micro),
            None,
            0.0,
            f"no privacy budget is set for dataset {dataset_id!r}: noisy aggregates are not "
            "offered on it",
        )
    left = remaining(tx, agreement_id, limit)
    ok = micro <= round(left * MICRO)
    message = (
        f"epsilon {from_micro(micro)} fits the {left} left of the {limit} budget"
        if ok
        else f"epsilon {from_micro(micro)} exceeds the {left} left of the {limit} budget of "
        f"agreement {agreement_id!r}"
    )
    return BudgetCheck(ok, agreement_id, dataset_id, from_micro(micro), limit, left, message)


def record_refusal(
    tx: Transaction,
    check: BudgetCheck,
    *,
    analyst: str,
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
            assignee=analyst,
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
