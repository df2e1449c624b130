"""Wire models of the console's sign-in and of the read-only staff routes it (and the CLI) use.

- :class:`SignIn` / :class:`SessionView`: ``/console/session`` (the admin token goes in once; the
  answer carries the CSRF token, never the session id, which travels only in its cookie).
- :class:`DryRunRequest` / :class:`DryRunView`: ``POST /management/policy/dry-run``.
- :class:`UsageEntry` / :class:`UsageReport`: ``GET /management/usage``.
- :class:`LedgerEventView` / :class:`LedgerEventsPage`: ``GET /management/ledger/events``.
- :class:`LedgerVerifyRequest`, :class:`VerifyReport`, :class:`ReceiptCheckView`: the auditor.
- :class:`MemberStatus`: ``GET /operator/members`` (the operator's staff).

No model has a field for a secret: a session view has no session id, a member view no credential
token, a usage entry no entity id (only counts and the digest the ledger already holds).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "DryRunRequest",
    "DryRunView",
    "FederatedCatalog",
    "LedgerEventView",
    "LedgerEventsPage",
    "LedgerVerifyRequest",
    "MemberStatus",
    "ReceiptCheckView",
    "SessionView",
    "SignIn",
    "UsageBudget",
    "UsageEntry",
    "UsageReport",
    "VerifyReport",
]


class SignIn(BaseModel):
    token: str = Field(min_length=1, max_length=512, description="The node's admin token.")


class SessionView(BaseModel):
    node: str = Field(description="This node's participant id.")
    roles: list[str]
    operator: str | None = Field(description="The operator of the space (None: no anchor yet).")
    admitted: bool
    csrf: str = Field(description="Send as `X-CSRF-Token` on every request that changes state.")


class DryRunRequest(BaseModel):
    """A would-be use of one of this node's datasets, as a member would ask for it."""

    dataset: str = Field(min_length=1, max_length=512)
    assignee: str = Field(min_length=1, max_length=128, description="The asking member's id.")
    purpose: str = Field(min_length=1, max_length=256)
    kind: Literal["score", "aggregate", "train", "transfer"] = "score"
    protocol: Literal["paillier", "ckks", "additive"] | None = None
    output: Literal["score", "aggregate", "raw"] | None = Field(
        default=None,
        description="Default: `score` for score, `aggregate` otherwise, `raw` for transfer.",
    )
    agreement: str | None = Field(
        default=None,
        max_length=512,
        description="Evaluate this agreement (as the enforcement point would); default: an offer.",
    )
    offer: str | None = Field(
        default=None, max_length=512, description="Evaluate this offer of the dataset."
    )
    model: Literal["analyst-held", "trained", "approved"] | None = Field(
        default=None,
        description="For a score: who chose the weights on this node's columns (default: "
        "`analyst-held`, as the console's and the CLI's scores are).",
    )
    roles: list[str] = Field(default_factory=list, max_length=8)
    entities: list[str] = Field(default_factory=list, max_length=10_000)
    cohortSize: int | None = Field(default=None, ge=0)


class DryRunView(BaseModel):
    allowed: bool
    reason: str
    policy: str = Field(description="The policy (offer or agreement) evaluated.")
    evaluated: Literal["agreement", "offer"]
    trace: list[dict[str, Any]]
    uses: int | None = Field(description="Uses counted so far (with a `count` constraint).")
    duties: list[dict[str, Any]]
    refusedEntities: int
    note: str | None = Field(default=None, description="What this evaluation could not check.")
    consumed: Literal[False] = Field(
        default=False, description="Always false: a dry run consumes nothing and is not ledgered."
    )


class UsageEntry(BaseModel):
    """One use or refusal of this node's data, from its ledger."""

    index: int = Field(description="Ledger index of the entry.")
    time: str
    event: Literal["query.use", "policy.decision"]
    allowed: bool
    member: str
    purpose: str | None
    kind: str | None
    protocol: str | None
    dataset: str | None
    agreement: str | None
    entities: int | None
    reason: str | None
    trace: list[dict[str, Any]]


class UsageBudget(BaseModel):
    agreement: str
    member: str
    dataset: str
    uses: int
    limit: int | None = Field(description="The `count` of the agreement's policy, if any.")


class UsageReport(BaseModel):
    entries: list[UsageEntry]
    budgets: list[UsageBudget]
    ledgerSize: int


class LedgerEventView(BaseModel):
    index: int
    kind: str
    time: str | None
    body: dict[str, Any]


class LedgerEventsPage(BaseModel):
    size: int
    events: list[LedgerEventView]
    next: str | None = Field(
        default=None,
        description="The next page (forward from `start`; an append-only log's index is a "
        "stable cursor), while entries remain.",
    )


class LedgerVerifyRequest(BaseModel):
    member: str = Field(min_length=1, max_length=128, description="The member whose ledger.")
    vkey: str | None = Field(
        default=None, max_length=512, description="Pin the member's ledger key (else: its own)."
    )


class VerifyReport(BaseModel):
    member: str
    node: str
    ok: bool
    checks: list[dict[str, Any]]
    events: dict[str, int]
    entries: int


class ReceiptCheckView(BaseModel):
    ok: bool
    participant: str | None
    checks: list[dict[str, Any]]
    event: dict[str, Any] | None = Field(description="The logged entry the receipt proves.")


class MemberStatus(BaseModel):
    """A member as the operator's staff see it, with its witness record."""

    id: str
    roles: list[str]
    url: str | None
    keyFingerprint: str
    origin: str | None
    expiresAt: str | None
    state: Literal["admitted", "revoked"]
    cosignedSize: int | None = Field(description="Size of its latest cosigned checkpoint.")
    cosignedRoot: str | None
    currentSize: int | None = Field(description="Its ledger size now (None: not reachable).")
    lag: int | None = Field(description="Entries logged since the latest cosigned checkpoint.")
    refusedSubmissions: int = Field(description="Checkpoints the witness refused (fork evidence).")
    alarms: list[str]


class FederatedCatalog(BaseModel):
    rows: list[dict[str, Any]]
    catalog: dict[str, Any]
