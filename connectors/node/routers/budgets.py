"""Privacy-budget administration: a provider's staff see, raise and reset members' epsilon.

- ``GET /management/budgets?member=&dataset=``: what the member has spent on the dataset (over
  all its agreements, since the last reset) and the staff limit that applies.
- ``PUT /management/budgets`` ``{"dataset", "member"?, "epsilon"}``: set the total epsilon of one
  member (or every member) on a dataset; it overrides the policy's ``epsilonTotal``. Ledgered
  (``budget.limit``).
- ``POST /management/budgets/reset`` ``{"dataset", "member", "reason"}``: start the member's
  account afresh (ledgered, ``budget.reset``, with the reason). Only the staff can do this: a
  member's renegotiation never does (:mod:`trusted_space.budget`).

Staff only (``require_admin``); nothing here names a data subject.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.wire.budgets import BudgetLimit, BudgetReset, BudgetView, budget_view
from trusted_space.budget import budget_status, reset_budget, set_budget
from trusted_space.catalog import load_dataset

__all__ = ["get_budget", "reset_member_budget", "router", "set_budget_limit"]

router = APIRouter(prefix="/management", tags=["budgets"], dependencies=[Depends(require_admin)])


@router.get("/budgets", response_model=BudgetView)
def get_budget(
    runtime: RuntimeDep,
    member: Annotated[str, Query(min_length=1, max_length=512)],
    dataset: Annotated[str, Query(min_length=1, max_length=512)],
) -> BudgetView:
    """One member's epsilon account on one of this node's datasets."""
    with runtime.transaction(readonly=True) as tx:
        load_dataset(tx, dataset)
        return budget_view(budget_status(tx, member=member, dataset_id=dataset))


@router.put("/budgets", response_model=BudgetView)
def set_budget_limit(runtime: RuntimeDep, body: BudgetLimit) -> BudgetView:
    """Set (raise or lower) a total epsilon; a lowered one below what was spent leaves zero."""
    with runtime.transaction() as tx:
        load_dataset(tx, body.dataset)
        set_budget(tx, body.epsilon, dataset_id=body.dataset, member=body.member)
        member = body.member if body.member is not None else "*"
        return budget_view(budget_status(tx, member=member, dataset_id=body.dataset))


@router.post("/budgets/reset", response_model=BudgetView)
def reset_member_budget(runtime: RuntimeDep, body: BudgetReset) -> BudgetView:
    """Start a member's account on a dataset afresh (ledgered with the reason)."""
    with runtime.transaction() as tx:
        load_dataset(tx, body.dataset)
        reset_budget(tx, member=body.member, dataset_id=body.dataset, reason=body.reason)
        return budget_view(budget_status(tx, member=body.member, dataset_id=body.dataset))
