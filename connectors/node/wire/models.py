"""Wire models of submitted model parts (``/management/models``): analyst side and staff side."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelDecision", "ModelStatusRequest", "ModelSubmit", "PartyModelView", "SubmissionView"]

_ID = Field(min_length=1, max_length=512)


class ModelSubmit(BaseModel):
    """The analyst's node submits its model part for ``provider``'s columns for approval."""

    model_config = ConfigDict(extra="forbid")

    provider: str = _ID
    agreement: str = _ID
    dataset: str = _ID
    model: str = _ID
    weights: dict[str, float] = Field(min_length=1, max_length=4096)


class ModelStatusRequest(BaseModel):
    """The analyst's node asks a provider how its submission stands."""

    model_config = ConfigDict(extra="forbid")

    provider: str = _ID
    model: str = _ID


class ModelDecision(BaseModel):
    """The provider's staff approve or reject a pending submission, saying why."""

    model_config = ConfigDict(extra="forbid")

    owner: str = _ID
    model: str = _ID
    reason: str = Field(min_length=1, max_length=500)


class SubmissionView(BaseModel):
    """A submission as the provider's staff see it (the weights weigh their own columns)."""

    owner: str
    model: str
    dataset: str
    agreement: str
    columns: list[str]
    sha256: str
    stats: dict[str, float] = Field(description="columns, maxWeight, maxShare on this node's rows")
    state: Literal["pending", "approved", "rejected"]
    reason: str | None
    weights: dict[str, float]

    @classmethod
    def of(cls, doc: dict[str, Any]) -> SubmissionView:
        return cls.model_validate(doc)


class PartyModelView(BaseModel):
    """A party-held model stored at this provider, as its staff see it."""

    owner: str
    model: str
    source: Literal["trained", "approved"]
    sha256: str
    stats: dict[str, float]
    weights: dict[str, float]
