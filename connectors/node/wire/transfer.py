"""Wire models of the transfer admin routes (``/management/transfers``).

The DSP transfer messages themselves are plain JSON-LD objects checked against the 2025-1 schemas
(:mod:`trusted_space.contracts.transfer`); the models here are the node's own staff API. The view
of a transfer has no field for the pull token or its hash: the provider stores only a SHA-256 of
the token and the consumer keeps the token apart from its record, so neither can reach a
response.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trusted_space.contracts.transfer import TransferRecord

__all__ = ["PullResult", "TransferCreate", "TransferPull", "TransferView", "transfer_view"]


class TransferCreate(BaseModel):
    """Start a transfer (consumer) under an agreement this node holds as assignee."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    agreement_id: str = Field(alias="agreementId", min_length=1, max_length=256)
    purpose: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The purpose declared to the provider; needed only when the agreement does "
        "not name exactly one.",
    )


class TransferPull(BaseModel):
    """Pull the rows of a started transfer into a file on this node."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Where to write the rows; relative paths are under the node directory. "
        "An existing file is never overwritten.",
    )
    format: Literal["csv", "ndjson"] = "csv"


class TransferView(BaseModel):
    """One side's record of a transfer process."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="This side's process id (providerPid or consumerPid).")
    role: Literal["provider", "consumer"]
    state: str
    provider_pid: str = Field(alias="providerPid")
    consumer_pid: str = Field(alias="consumerPid")
    agreement_id: str = Field(alias="agreementId")
    dataset_id: str = Field(alias="datasetId")
    counterparty: str
    purpose: str | None = None
    format: str
    created_at: str = Field(alias="createdAt")
    updated_at: str = Field(alias="updatedAt")
    reason: str | None = None
    token_expires_at: str | None = Field(default=None, alias="tokenExpiresAt")
    rows: int | None = None
    path: str | None = None


class PullResult(BaseModel):
    """The outcome of a pull: how many rows were written, and where."""

    rows: int
    path: str


def transfer_view(record: TransferRecord) -> TransferView:
    """The public view of a record (no token, no token hash)."""
    return TransferView.model_validate(
        {
            "id": record.pid,
            "role": record.role,
            "state": record.state.value,
            "providerPid": record.provider_pid,
            "consumerPid": record.consumer_pid,
            "agreementId": record.agreement_id,
            "datasetId": record.dataset_id,
            "counterparty": record.counterparty,
            "purpose": record.purpose,
            "format": record.format,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
            "reason": record.reason,
            "tokenExpiresAt": record.token_expires_at,
            "rows": record.rows,
            "path": record.path,
        }
    )
