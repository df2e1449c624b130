"""Wire models of the privacy-budget administration (``/management/budgets``, staff only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trusted_space.budget import MAX_EPSILON, BudgetStatus

__all__ = ["BudgetLimit", "BudgetReset", "BudgetView", "budget_view"]


class BudgetLimit(BaseModel):
    """Set the total epsilon of one member (or, without ``member``, every member) on a dataset."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=512)
    member: str | None = Field(default=None, min_length=1, max_length=512)
    epsilon: float = Field(gt=0, le=MAX_EPSILON, allow_inf_nan=False)


class BudgetReset(BaseModel):
    """Start a member's account on a dataset afresh; the reason is kept in the ledger."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=512)
    member: str = Field(min_length=1, max_length=512)
    reason: str = Field(min_length=1, max_length=500)


class BudgetView(BaseModel):
    """A member's epsilon account on a dataset at this provider."""

    member: str
    dataset: str
    spent: float = Field(description="Epsilon spent since the last reset, over all agreements")
    limit: float | None = Field(
        description="The staff's limit for this member or dataset; null: the policy's "
        "epsilonTotal applies, if any"
    )
    remaining: float | None


def budget_view(status: BudgetStatus) -> BudgetView:
    """The staff's view of one account."""
    return BudgetView(
        member=status.member,
        dataset=status.dataset_id,
        spent=status.spent,
        limit=status.limit,
        remaining=status.remaining,
    )
