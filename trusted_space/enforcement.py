"""The provider's enforcement point for joint computations: check, decide, record, then use.

Why: a provider never trusts the analyst. Every protocol step that is about to touch a provider's
rows (a joint score's partial, an aggregate, a training round, a PSI alignment feeding them) first
calls :func:`authorize_use` at the provider's own node, with the *authenticated* sender as the
analyst. Nothing is read from :class:`~trusted_space.compute.DataAccess` before it returns.

Order of the checks (all inside one store transaction, so nothing is half-written):

1. the agreement named for this provider exists here, was signed by this node as provider, its
   negotiation is ``FINALIZED``, the instant is inside its validity window
   (:func:`~trusted_space.contracts.agreement_authorises`) and its provider has not suspended
   or terminated it (:func:`~trusted_space.contracts.agreement_standing`);
2. its assignee is the authenticated sender and its target is the dataset used;
3. the dataset exists here, and every requested column exists in its table, is numeric, is not
   the key and is not grade 5 (important data never leaves, not even encrypted);
4. the usage policy of the agreement, via :func:`trusted_space.policy.evaluate` (purpose,
   computation kind and protocol, ``count``, ``minCohort``, consent per entity, grade floors).

A failure of 1-3 is recorded as a ``policy.decision`` ledger entry by
:meth:`~trusted_space.policy.Checks.record` (the one refusal step of every path, through the one
writer :func:`~trusted_space.policy.record_decision` the engine uses too); a failure of 4 is
recorded by the engine itself. Either way
the transaction is *committed* (the refusal is on the ledger) and only then
:class:`~trusted_space.errors.RefusedError` is raised with the trace, so the refusal travels back
to the analyst (403 with the trace at the HTTP edge; ``RemoteError.problem["trace"]`` in memory).

On allow, in the same transaction: metering (:func:`trusted_space.metering.record_use`) and one
``query.use`` ledger entry — query id, analyst, agreement, dataset, columns, protocol, kind,
purpose, entity count and a salted commitment to the entity ids in request order
(:mod:`trusted_space.commitments`: never the entities themselves, nor an unsalted hash an
outsider could confirm by guessing; never a feature). After commit the node builds a receipt
(:meth:`~trusted_space.ledger.Ledger.receipt` plus the node's ledger vkey and id, and the salt of
the commitment under ``openings``) that the analyst can check with
:func:`~trusted_space.ledger.verify_receipt`, recomputing the commitment from its own ids.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

from trusted_space.catalog import TS_NAMESPACE, FieldType, PublishedDataset, load_dataset
from trusted_space.commitments import commit
from trusted_space.compute import ComputeNode
from trusted_space.contracts import (
    AgreementStanding,
    NegotiationState,
    SignedAgreement,
    agreement_authorises,
    agreement_standing,
    load_agreement,
    load_negotiation,
)
from trusted_space.contracts.states import OFFER_PROPERTY
from trusted_space.errors import NotFoundError, RefusedError, ValidationError
from trusted_space.events import canonical_json, record_event
from trusted_space.ledger import Receipt
from trusted_space.metering import record_use
from trusted_space.policy import (
    COMPUTATIONS,
    PROTOCOLS,
    Checks,
    DecisionSubject,
    Policy,
    UsageRequest,
    evaluate,
    from_odrl,
)
from trusted_space.store import Transaction

__all__ = [
    "LOOKUP",
    "NUMERIC_TYPES",
    "OUTPUT_OF_KIND",
    "UseGrant",
    "UseRequest",
    "authorize_use",
    "authorize_uses",
    "entities_digest",
]

NUMERIC_TYPES: Final = frozenset({FieldType.INT, FieldType.FLOAT, FieldType.BOOL})
"""Field types a joint computation may read (as float64)."""
LOOKUP: Final = "lookup"
"""The kind of a raw read of a few entities' rows of a ``conditional`` dataset (``/data/lookup``).

Its policy is a raw-row pull's: the policy sees ``computation: transfer``, ``output: raw`` and no
protocol (decision 47); the ``query.use`` entry says ``lookup``."""
OUTPUT_OF_KIND: Final[Mapping[str, str]] = {
    "score": "score",
    "aggregate": "aggregate",
    "train": "aggregate",
    LOOKUP: "raw",
}
"""The policy ``output`` a kind of use releases (training releases gradient aggregates)."""


def entities_digest(entities: Sequence[str]) -> str:
    """SHA-256 (hex) of the canonical JSON array of entity ids, in request order."""
    return hashlib.sha256(canonical_json(list(entities))).hexdigest()


@dataclass(frozen=True)
class UseRequest:
    """One use of one provider dataset by one joint computation, as the provider's node sees it.

    Attributes:
        query_id: the analyst's query id (recorded, for receipts and audit).
        analyst: the **authenticated** sender, filled by the operation from its call context —
            never from a header.
        agreement_id: the agreement the analyst names for this provider.
        dataset_id: the dataset used.
        columns: the columns read.
        kind: ``score``, ``aggregate``, ``train`` or ``lookup`` (:data:`LOOKUP`).
        purpose: the declared purpose.
        protocol: ``paillier``, ``ckks`` or ``additive``; ``None`` for a lookup (and only then).
        entities: explicit entity ids (empty for a PSI cohort the provider does not learn).
        cohort_size: the cohort size when known (aggregates; explicit lists default to their
            length).
        epsilon: differential-privacy budget this use asks for (charged by the caller).
        output: the policy ``output`` released; defaults from ``kind`` (:data:`OUTPUT_OF_KIND`).
        model: (scores) who chose the weights: ``analyst-held``, ``trained`` or ``approved``
            (the policy operand ``model``); ``None`` for other kinds.
        model_id: (party-held) the owner's model id, recorded in ``query.use``.
        model_sha256: (party-held) the SHA-256 of the weights applied, recorded in
            ``query.use`` (never the weights).
        model_stats: (party-held) what the provider measured of the weights on its rows,
            checked by the policy's model rules.
        release: (scores) what leaves to the analyst: ``logit`` or ``band`` (the policy
            operand ``release``); ``None`` for other kinds.
        bands: (band releases) the number of bands (``releaseBands``).
    """

    query_id: str
    analyst: str
    agreement_id: str
    dataset_id: str
    columns: tuple[str, ...]
    kind: str
    purpose: str
    protocol: str | None
    entities: tuple[str, ...] = ()
    cohort_size: int | None = None
    epsilon: float | None = None
    output: str | None = None
    model: str | None = None
    model_id: str | None = None
    model_sha256: str | None = None
    model_stats: Mapping[str, float] | None = None
    release: str | None = None
    bands: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "entities", tuple(self.entities))
        for name in ("query_id", "analyst", "agreement_id", "dataset_id", "purpose"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValidationError(f"UseRequest.{name} must be a non-empty string")
        if self.kind not in (*COMPUTATIONS, LOOKUP):
            raise ValidationError(
                f"UseRequest.kind: {self.kind!r} not in {[*COMPUTATIONS, LOOKUP]}"
            )
        if self.kind == LOOKUP:
            if self.protocol is not None:
                raise ValidationError("UseRequest.protocol: a lookup runs no protocol")
            if not self.entities:
                raise ValidationError("UseRequest.entities: a lookup names its entities")
        elif self.protocol not in PROTOCOLS:
            raise ValidationError(
                f"UseRequest.protocol: {self.protocol!r} not in {list(PROTOCOLS)}"
            )
        if not self.columns or not all(isinstance(c, str) and c for c in self.columns):
            raise ValidationError("UseRequest.columns must be a non-empty list of names")
        if len(set(self.columns)) != len(self.columns):
            raise ValidationError("UseRequest.columns has duplicates")
        if not all(isinstance(e, str) and e for e in self.entities):
            raise ValidationError("UseRequest.entities must be non-empty strings")
        if self.cohort_size is not None and (
            isinstance(self.cohort_size, bool)
            or not isinstance(self.cohort_size, int)
            or self.cohort_size < 0
        ):
            raise ValidationError(f"UseRequest.cohort_size: bad value {self.cohort_size!r}")
        if self.epsilon is not None and not (
            isinstance(self.epsilon, int | float)
            and not isinstance(self.epsilon, bool)
            and self.epsilon > 0
        ):
            raise ValidationError(f"UseRequest.epsilon must be > 0, got {self.epsilon!r}")
        if self.output is None:
            object.__setattr__(self, "output", OUTPUT_OF_KIND[self.kind])

    @property
    def size(self) -> int:
        """Entities used: the explicit list's length, else the cohort size (0 when unknown)."""
        if self.entities:
            return len(self.entities)
        return self.cohort_size or 0


@dataclass(frozen=True)
class UseGrant:
    """What an allowed use hands the protocol code.

    Attributes:
        dataset: the published dataset (table fields, tier, defaults).
        decision_index: ledger index of the ``policy.decision`` entry.
        use_index: ledger index of the ``query.use`` entry.
        receipt: ``Ledger.receipt(use_index).to_json()`` plus ``vkey`` (the node's ledger
            verifier key) and ``participant`` (the node's id) — what the analyst receives.
        entities: the entities the use may touch, in request order.
        epsilon_total: the granting permission's ``epsilonTotal`` (the member's total epsilon
            on this dataset), which a noisy release is charged against unless the provider's
            staff set a limit (:mod:`trusted_space.budget`); ``None`` when it has none.
    """

    dataset: PublishedDataset
    decision_index: int
    use_index: int
    receipt: dict[str, Any]
    entities: tuple[str, ...]
    epsilon_total: float | None = None


def _model_entry(request: UseRequest) -> dict[str, str | None] | None:
    """What ``query.use`` records of a score's weights: mode, owner's id and digest only."""
    if request.model is None:
        return None
    return {"mode": request.model, "id": request.model_id, "sha256": request.model_sha256}


def _release_entry(request: UseRequest) -> dict[str, Any] | None:
    """What ``query.use`` records of what a score releases: ``logit``, or ``band`` and how many."""
    if request.kind != "score":
        return None
    if request.release == "band":
        return {"kind": "band", "bands": request.bands}
    return {"kind": "logit"}


def _strip_extensions(agreement: Mapping[str, Any]) -> dict[str, Any]:
    """The ODRL part of a stored agreement (our validity/offer extensions removed)."""
    return {k: v for k, v in agreement.items() if not k.startswith(TS_NAMESPACE)}


_V = TypeVar("_V")


class _Reads:
    """What deciding a use reads and no decision writes, read once per group of uses.

    The agreement, its negotiation's state, its standing, the dataset and the parsed policy are
    the same for every use of a group (one transaction, one instant); parsing them again for
    each use was most of a small use's cost. Each use still runs every check and writes its
    own trace.
    """

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self._memo: dict[tuple[str, str], tuple[Any, str | None]] = {}

    def _once(self, kind: str, key: str, load: Callable[[], _V]) -> _V:
        hit = self._memo.get((kind, key))
        if hit is None:
            try:
                hit = (load(), None)
            except NotFoundError as exc:
                hit = (None, str(exc))
            self._memo[(kind, key)] = hit
        value, missing = hit
        if missing is not None:
            raise NotFoundError(missing)
        return cast(_V, value)

    def agreement(self, agreement_id: str) -> SignedAgreement:
        return self._once("agreement", agreement_id, lambda: load_agreement(self.tx, agreement_id))

    def state(self, provider_pid: str) -> NegotiationState:
        return self._once(
            "negotiation", provider_pid, lambda: load_negotiation(self.tx, provider_pid).state
        )

    def standing(self, agreement_id: str) -> AgreementStanding:
        return self._once(
            "standing", agreement_id, lambda: agreement_standing(self.tx, agreement_id)
        )

    def dataset(self, dataset_id: str) -> PublishedDataset:
        return self._once("dataset", dataset_id, lambda: load_dataset(self.tx, dataset_id))

    def policy(self, signed: SignedAgreement) -> Policy:
        return self._once(
            "policy", signed.id, lambda: from_odrl(_strip_extensions(signed.agreement))
        )


def _check_agreement(
    reads: _Reads, node: ComputeNode, request: UseRequest, at: datetime, checks: Checks
) -> SignedAgreement | None:
    try:
        signed = reads.agreement(request.agreement_id)
    except NotFoundError:
        checks.check(
            "agreement",
            request.agreement_id,
            None,
            False,
            f"agreement {request.agreement_id!r} is not known at {node.participant_id}",
        )
        return None
    if not checks.check(
        "assigner",
        node.participant_id,
        signed.assigner,
        signed.assigner == node.participant_id,
        f"agreement {signed.id!r} was granted by {signed.assigner!r}"
        + ("" if signed.assigner == node.participant_id else f", not by {node.participant_id!r}"),
    ):
        return None
    try:
        state = reads.state(signed.provider_pid)
    except NotFoundError:
        state = None
    finalized = state is not None and state.value == "FINALIZED"
    checks.check(
        "state",
        "FINALIZED",
        state.value if state is not None else None,
        finalized,
        f"the negotiation of agreement {signed.id!r} is "
        f"{state.value if state is not None else 'unknown'}"
        + ("" if finalized else ", not FINALIZED"),
    )
    if finalized and state is not None:
        valid = agreement_authorises(signed, state, at)
        window = [signed.valid_from.isoformat(), signed.valid_until.isoformat()]
        checks.check(
            "dateTime",
            window,
            at.astimezone(UTC).isoformat(),
            valid,
            f"{at.astimezone(UTC).isoformat()} is "
            + ("inside" if valid else "outside")
            + f" the agreement's validity window [{window[0]}, {window[1]})",
        )
    standing = reads.standing(signed.id)
    checks.check(
        "standing",
        "active",
        standing.standing,
        standing.standing == "active",
        f"agreement {signed.id!r} is {standing.standing}"
        + ("" if standing.standing == "active" else " by its provider: no use is allowed"),
    )
    checks.check(
        "assignee",
        signed.assignee,
        request.analyst,
        signed.assignee == request.analyst,
        f"the requester {request.analyst!r} "
        + (
            "is the agreement's assignee"
            if signed.assignee == request.analyst
            else f"is not the agreement's assignee {signed.assignee!r}"
        ),
    )
    checks.check(
        "target",
        signed.target,
        request.dataset_id,
        signed.target == request.dataset_id,
        f"dataset {request.dataset_id!r} "
        + (
            "is the agreement's target"
            if signed.target == request.dataset_id
            else f"is not the agreement's target {signed.target!r}"
        ),
    )
    return signed


def _offer_of(signed: SignedAgreement) -> str | None:
    offer = signed.agreement.get(OFFER_PROPERTY)
    return offer if isinstance(offer, str) and offer else None


def _epsilon_total(policy: Policy, permission: int | None) -> float | None:
    """The granting permission's ``epsilonTotal``, the member's total epsilon on the dataset."""
    if permission is None:
        return None
    for c in policy.permissions[permission].constraints:
        if c.left_operand == "epsilonTotal":
            return float(str(c.right_operand))
    return None


def _check_dataset(reads: _Reads, request: UseRequest, checks: Checks) -> PublishedDataset | None:
    try:
        published = reads.dataset(request.dataset_id)
    except NotFoundError:
        checks.check(
            "dataset", request.dataset_id, None, False, f"no dataset {request.dataset_id!r} here"
        )
        return None
    table = published.dataset.table
    names = {f.name: f for f in table.fields}
    for column in request.columns:
        field = names.get(column)
        if field is None:
            checks.check("column", column, None, False, f"dataset has no column {column!r}")
        elif column == published.dataset.key_column:
            checks.check("column", column, "key", False, f"{column!r} is the entity key")
        elif field.type not in NUMERIC_TYPES:
            checks.check("column", column, field.type.value, False, f"{column!r} is not numeric")
        elif field.grade >= 5:
            checks.check(
                "column",
                column,
                field.grade,
                False,
                f"{column!r} has grade 5: important data never leaves, not even encrypted",
            )
        else:
            checks.check("column", column, field.grade, True, f"{column!r} may be computed on")
    return published


def _policy_kind(request: UseRequest) -> str:
    """The policy's ``computation`` for a use: a lookup is a raw-row pull (``transfer``)."""
    return "transfer" if request.kind == LOOKUP else request.kind


def _check_lookup_tier(published: PublishedDataset, checks: Checks) -> None:
    """A lookup reads ``conditional`` data only.

    Zone rows never leave raw; unconditional rows need no agreement (a transfer serves them).
    """
    tier = published.dataset.tier.value
    why = {
        "conditional": "is tier 'conditional': its rows may be looked up under an agreement",
        "zone": "is tier 'zone': computation only, its rows never leave raw",
        "unconditional": "is tier 'unconditional': it needs no agreement, pull it as a transfer",
    }
    checks.check(
        "tier",
        "conditional",
        tier,
        tier == "conditional",
        f"dataset {published.dataset.id!r} {why.get(tier, f'is tier {tier!r}')}",
        rule="floor",
    )


_Granted = tuple[PublishedDataset, int, int, tuple[str, ...], float | None, str | None]


def _decide(
    reads: _Reads,
    node: ComputeNode,
    request: UseRequest,
    at: datetime,
    roles: frozenset[str],
) -> RefusedError | _Granted:
    """One use decided and recorded inside ``tx``: its refusal, or what the grant needs."""
    registry = node.consents
    refusal: RefusedError | None = None
    entities_salt: str | None = None
    grant: tuple[PublishedDataset, int, int, tuple[str, ...], float | None] | None = None
    checks = Checks(
        DecisionSubject(
            assignee=request.analyst,
            query_kind=_policy_kind(request),
            at=at,
            agreement=request.agreement_id,
            target=request.dataset_id,
            purpose=request.purpose,
            output=request.output,
            query=request.query_id,
        )
    )
    tx = reads.tx
    signed = _check_agreement(reads, node, request, at, checks)
    published = _check_dataset(reads, request, checks) if signed is not None else None
    if request.kind == LOOKUP and published is not None:
        _check_lookup_tier(published, checks)
    if checks.failed is not None or signed is None or published is None:
        refusal = checks.refusal(tx, participant=node.participant_id)
    else:
        policy = reads.policy(signed)
        decision = evaluate(
            policy,
            UsageRequest(
                assignee=request.analyst,
                purpose=request.purpose,
                query_kind=_policy_kind(request),
                output=str(request.output),
                at=at,
                roles=roles,
                protocol=request.protocol,
                agreement_id=request.agreement_id,
                cohort_size=request.cohort_size
                if request.cohort_size is not None
                else (len(request.entities) if request.entities else None),
                entities=request.entities,
                query_id=request.query_id,
                offer_id=_offer_of(signed),
                epsilon=request.epsilon if request.kind == "aggregate" else None,
                model=request.model if request.kind == "score" else None,
                model_stats=request.model_stats,
                release=(request.release or "logit") if request.kind == "score" else None,
                bands=request.bands if request.kind == "score" else None,
            ),
            tx=tx,
            consent=registry.checker(tx) if registry is not None else None,
            tier=published.dataset.tier.value,
            max_grade=published.dataset.max_grade,
            prior=checks.steps,
        )
        if decision.ledger_index is None:  # pragma: no cover - evaluate always records
            raise ValueError("policy decision was not recorded")
        if not decision.allowed:
            refusal = Checks.refused(decision, participant=node.participant_id)
        else:
            entities_commitment, entities_salt = (
                commit(
                    tx,
                    "entities",
                    entities_digest(request.entities),
                    detail=list(request.entities),
                )
                if request.entities
                else (None, None)
            )
            use_index = record_event(
                tx,
                "query.use",
                {
                    "query": request.query_id,
                    "analyst": request.analyst,
                    "agreement": request.agreement_id,
                    "dataset": request.dataset_id,
                    "columns": list(request.columns),
                    "protocol": request.protocol,
                    "kind": request.kind,
                    "purpose": request.purpose,
                    "entities": request.size,
                    "entities_commitment": entities_commitment,
                    "epsilon": request.epsilon,
                    "model": _model_entry(request),
                    "release": _release_entry(request),
                    "decision": decision.ledger_index,
                },
                time=at,
            )
            grant = (
                published,
                decision.ledger_index,
                use_index,
                tuple(decision.permitted_entities),
                _epsilon_total(policy, decision.permission_index),
            )
    if refusal is not None:
        return refusal
    if grant is None:  # pragma: no cover - one of the two is always set
        raise ValueError("no decision")
    return (*grant, entities_salt)


def _grant(node: ComputeNode, granted: _Granted, proof: Receipt) -> UseGrant:
    """The grant of a committed use, with its receipt (built after the commit: durable first)."""
    published_ds, decision_index, use_index, entities, epsilon_total, entities_salt = granted
    receipt = proof.to_json()
    receipt |= {"vkey": node.ledger.vkey, "participant": node.participant_id}
    if entities_salt is not None:  # the analyst's opening: it recomputes from its own ids
        receipt["openings"] = {"entities_commitment": entities_salt}
    return UseGrant(published_ds, decision_index, use_index, receipt, entities, epsilon_total)


def authorize_use(
    node: ComputeNode, request: UseRequest, *, roles: frozenset[str] = frozenset()
) -> UseGrant:
    """Enforce the provider's policy for one use, record it, and return the grant with a receipt.

    Args:
        node: the provider's compute node (store, ledger, clock, ``consents``).
        request: the use, with ``analyst`` set to the authenticated sender.
        roles: the sender's roles from its membership credential (for ``role`` constraints).

    Returns:
        The :class:`UseGrant`.

    Raises:
        RefusedError: refused (agreement, dataset, columns or policy); the refusal's
            ``policy.decision`` entry is committed before this is raised.
    """
    outcome = authorize_uses(node, [request], roles=roles)[0]
    if isinstance(outcome, RefusedError):
        raise outcome
    return outcome


def authorize_uses(
    node: ComputeNode, requests: Sequence[UseRequest], *, roles: frozenset[str] = frozenset()
) -> list[UseGrant | RefusedError]:
    """Decide several uses in one store transaction (group commit), each on its own.

    Why: the serving path answers many small requests per protocol run; each is still its own
    use (its own decision, ``query.use`` entry, budget charge and receipt naming its own
    entities), but one commit makes them all durable at once and one signed checkpoint covers
    all their receipts. Nothing is returned before that
    commit, so no receipt is handed out for a use that could still be lost. A refusal of one
    request does not touch the others: it is returned in its place (its ``policy.decision``
    committed with the rest).
    """
    at = node.clock()
    outcomes: list[RefusedError | _Granted] = []
    with node.store.transaction() as tx:
        reads = _Reads(tx)
        for request in requests:
            outcomes.append(_decide(reads, node, request, at, roles))
        # Metered per call, counted once per kind of call in the group (the same totals).
        calls = Counter(
            (r.agreement_id, r.analyst, r.kind)
            for r, o in zip(requests, outcomes, strict=True)
            if not isinstance(o, RefusedError)
        )
        for (agreement, analyst, kind), count in calls.items():
            record_use(tx, agreement, analyst, kind, count=count)
    if all(isinstance(o, RefusedError) for o in outcomes):
        return [o for o in outcomes if isinstance(o, RefusedError)]
    granted = [o for o in outcomes if not isinstance(o, RefusedError)]
    # One signed head covers every use of the group; their proofs read the log once.
    proofs = iter(node.ledger.receipts([g[2] for g in granted]))
    return [o if isinstance(o, RefusedError) else _grant(node, o, next(proofs)) for o in outcomes]
