"""Wire models of the management API (``/management``, the node's own staff).

The request models check shape and size; the content (dataset descriptions, ODRL policies, consent
tokens) is checked strictly by the core (:mod:`trusted_space.catalog`, :mod:`trusted_space.policy`,
:mod:`trusted_space.consent`), whose errors name the JSON path. That is why a dataset or a policy
travels here as a JSON object rather than a duplicate pydantic schema: one parser, one set of
messages.

No response model has a field for a secret: credential and consent views carry ids, names and
dates, never the admin token, a key, or (needlessly) the signed tokens themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trusted_space.catalog import PublishedDataset
from trusted_space.consent import Consent
from trusted_space.identity import MAX_TOKEN_LENGTH, MembershipCredential
from trusted_space.metering import UsageSummary

__all__ = [
    "ID_PATTERN",
    "ConsentRegister",
    "ConsentRevoke",
    "ConsentView",
    "CredentialInstall",
    "CredentialInstalled",
    "DatasetRegistered",
    "DatasetRegistration",
    "DatasetReplacement",
    "DatasetSummary",
    "DatasetView",
    "DatasetWithdrawn",
    "EntityKeyRegister",
    "EntityKeyView",
    "OfferView",
    "PeerView",
    "PolicyCreate",
    "PolicyView",
    "SourceIn",
    "SourceView",
    "UsageView",
    "consent_view",
    "credential_installed",
    "dataset_summary",
    "dataset_view",
    "usage_view",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""Dataset and policy ids: they appear in URL paths and store keys, so no ``/`` and no spaces."""

_MAX_OFFERS = 32


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- credential ---------------------------------------------------------------------------------


class CredentialInstall(_Request):
    """This node's membership credential, as the operator issued it at admission."""

    token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)


class CredentialInstalled(BaseModel):
    id: str
    roles: list[str]
    expiresAt: str


def credential_installed(credential: MembershipCredential) -> CredentialInstalled:
    return CredentialInstalled(
        id=credential.participant_id,
        roles=sorted(credential.roles),
        expiresAt=credential.expires_at.isoformat(),
    )


# -- datasets -----------------------------------------------------------------------------------


class SourceIn(_Request):
    """Where the rows are; a relative ``path`` is resolved against the node directory."""

    kind: Literal["csv", "parquet", "sqlite"]
    path: str = Field(min_length=1, max_length=4096)
    table: str | None = Field(
        default=None, min_length=1, max_length=64, description="SQLite only: the table name."
    )


class DatasetRegistration(_Request):
    """A dataset to publish, its source, and the offers it is published under."""

    dataset: dict[str, Any] = Field(
        description="trusted_space Dataset JSON (id, title, tier, keyColumn, keyKind, "
        "responsibility, resource, table, ...). `owner` defaults to this node; `offerIds` to "
        "the ids of `offers`."
    )
    source: SourceIn
    offers: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=_MAX_OFFERS,
        description="Each an ODRL Offer (without target; `assigner` defaults to this node) or "
        '{"policyId": "<id of a stored policy>"}.',
    )


class DatasetReplacement(DatasetRegistration):
    """A new description, source and offers for a published dataset, at its current version."""

    version: int = Field(ge=1, description="The version being replaced (optimistic locking).")


class DatasetRegistered(BaseModel):
    id: str
    version: int
    rows: int
    federated: bool = Field(description="Whether the operator's federated catalog took it.")


class DatasetWithdrawn(BaseModel):
    id: str
    version: int
    federated: bool


class SourceView(BaseModel):
    kind: str
    path: str
    table: str | None = None
    rows: int | None = None
    validatedAt: str | None = None


class DatasetSummary(BaseModel):
    id: str
    title: str
    owner: str
    tier: str
    maxGrade: int
    keyKind: str
    version: int
    rows: int | None
    offers: list[dict[str, Any]]


class DatasetView(BaseModel):
    dataset: dict[str, Any]
    offers: list[dict[str, Any]]
    source: SourceView | None
    version: int


def _source_view(source: Mapping[str, Any] | None) -> SourceView | None:
    if source is None:
        return None
    return SourceView(
        kind=str(source["kind"]),
        path=str(source["path"]),
        table=source.get("table"),
        rows=source.get("rows"),
        validatedAt=source.get("validatedAt"),
    )


def dataset_summary(
    published: PublishedDataset, source: Mapping[str, Any] | None
) -> DatasetSummary:
    ds = published.dataset
    return DatasetSummary(
        id=ds.id,
        title=ds.title,
        owner=ds.owner,
        tier=ds.tier.value,
        maxGrade=ds.max_grade,
        keyKind=ds.key_kind.value,
        version=published.version,
        rows=None if source is None else source.get("rows"),
        offers=[dict(o) for o in published.offers],
    )


def dataset_view(published: PublishedDataset, source: Mapping[str, Any] | None) -> DatasetView:
    return DatasetView(
        dataset=published.dataset.to_json(),
        offers=[dict(o) for o in published.offers],
        source=_source_view(source),
        version=published.version,
    )


class OfferView(BaseModel):
    datasetId: str
    offer: dict[str, Any]


# -- policies -----------------------------------------------------------------------------------


class PolicyCreate(_Request):
    """A reusable ODRL Offer, referenced by datasets as ``{"policyId": id}``."""

    id: str = Field(pattern=ID_PATTERN)
    policy: dict[str, Any] = Field(
        description="ODRL Offer JSON; `@id` defaults to `id`, `@type` to Offer, `assigner` to "
        "this node; without `target` it can be offered for any dataset."
    )


class PolicyView(BaseModel):
    id: str
    policy: dict[str, Any]
    version: int


# -- consents -----------------------------------------------------------------------------------


class EntityKeyRegister(_Request):
    """An entity's own Ed25519 verify key, established out of band."""

    entity: str = Field(min_length=1, max_length=128)
    publicKey: str = Field(min_length=1, max_length=128, description="base64url, unpadded")


class EntityKeyView(BaseModel):
    entity: str
    fingerprint: str


class ConsentRegister(_Request):
    token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)


class ConsentRevoke(_Request):
    reason: str = Field(min_length=1, max_length=1000)


class ConsentView(BaseModel):
    id: str
    entity: str
    grantee: str
    purpose: str
    issuer: str
    signedBy: Literal["entity", "operator"]
    issuedAt: str
    notBefore: str
    expiresAt: str
    revoked: bool


def consent_view(consent: Consent, *, revoked: bool) -> ConsentView:
    return ConsentView(
        id=consent.consent_id,
        entity=consent.entity,
        grantee=consent.grantee,
        purpose=consent.purpose,
        issuer=consent.issuer,
        signedBy="operator" if consent.operator_registered else "entity",
        issuedAt=consent.issued_at.isoformat(),
        notBefore=consent.not_before.isoformat(),
        expiresAt=consent.expires_at.isoformat(),
        revoked=revoked,
    )


# -- metering and peers -------------------------------------------------------------------------


class UsageView(BaseModel):
    subject: Literal["agreement", "participant"]
    subjectId: str
    total: int
    byKind: dict[str, int]


def usage_view(summary: UsageSummary) -> UsageView:
    return UsageView(
        subject=summary.subject,
        subjectId=summary.subject_id,
        total=summary.total,
        byKind=dict(summary.by_kind),
    )


class PeerView(BaseModel):
    id: str
    url: str
    roles: list[str]
