"""The management API: the institution's own staff run their node (admin token only).

- ``PUT /management/credential`` ``{"token"}``: install this node's membership credential (from
  the operator's admission); it is verified first. A token that does not verify is the one
  indistinguishable ``401``; a valid credential for another participant or key is a ``400``.
- ``POST /management/datasets`` ``{"dataset", "source", "offers"}``: publish a table. Everything
  is checked before anything is written: the description (:class:`~trusted_space.catalog.Dataset`),
  the grade floor of the tier and of every offer's policy, the offers (inline ODRL, or
  ``{"policyId"}`` naming a stored policy), and the source itself, every row of it
  (:func:`connectors.node.sources.validate_against`). The dataset, its ``dataset.published`` ledger
  event and its source spec are then written in one transaction, and the catalog is pushed to
  the operator's federated catalog (best effort: ``federated`` says whether it took it).
  ``GET /management/datasets[/{id}]``, ``PUT /management/datasets/{id}`` (replace, with the
  current ``version``), ``DELETE /management/datasets/{id}`` (withdraw: ``dataset.withdrawn`` in
  the ledger, and the id is never reused, so an agreement made for the old dataset can never
  cover a different table published under the same name).
- ``POST /management/policies`` ``{"id", "policy"}``, ``GET /management/policies[/{id}]``:
  reusable ODRL offers (``policy.stored`` in the ledger).
- ``GET /management/offers``: every offer of every published dataset.
- ``POST /management/consents/entity-keys``, ``POST /management/consents`` ``{"token"}``,
  ``GET /management/consents/{id}``, ``POST /management/consents/{id}/revoke``: data-subject
  consents (``503`` until the node has an operator anchor, which consents are checked against).
- ``GET /management/metering?agreement=ID`` or ``?participant=ID``: usage counts.
- ``GET /management/peers``: the members this node knows how to reach.

Threats: the admin token is the only way in (``AdminDep`` on every route). A dataset published
more openly than its grades allow is refused with ``grade-floor``; a source that does not hold
what the description declares (a missing column, a malformed USCC, a duplicate key, a text cell
in a numeric field) is refused naming the column and row, so a bad import cannot publish a table
that silently joins to the wrong enterprises. Source paths come from staff, who already control
the node's file system; they are opened read-only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError

from connectors.node import federation
from connectors.node.deps import RuntimeDep, require_admin
from connectors.node.pagination import PagerDep
from connectors.node.runtime import PEER_NAMESPACE, NodeRuntime
from connectors.node.sources import SOURCE_NAMESPACE, SourceSpec, open_source, validate_against
from connectors.node.wire.management import (
    ID_PATTERN,
    ConsentRegister,
    ConsentRevoke,
    ConsentView,
    CredentialInstall,
    CredentialInstalled,
    DatasetRegistered,
    DatasetRegistration,
    DatasetReplacement,
    DatasetSummary,
    DatasetView,
    DatasetWithdrawn,
    EntityKeyRegister,
    EntityKeyView,
    OfferView,
    PeerView,
    PolicyCreate,
    PolicyView,
    UsageView,
    consent_view,
    credential_installed,
    dataset_summary,
    dataset_view,
    usage_view,
)
from trusted_space import policy as policies
from trusted_space.catalog import (
    DATASET_NAMESPACE,
    Dataset,
    check_grade_floor,
    list_datasets,
    load_dataset,
    publish,
)
from trusted_space.consent import ConsentRegistry
from trusted_space.errors import (
    ConflictError,
    GradeFloorError,
    NotReadyError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, record_event
from trusted_space.keys import VerifyKey
from trusted_space.metering import usage

__all__ = [
    "POLICY_NAMESPACE",
    "WITHDRAWN_NAMESPACE",
    "dataset",
    "datasets",
    "get_consent",
    "get_policy",
    "install_credential",
    "list_policies",
    "metering",
    "offers",
    "peers",
    "register_consent",
    "register_dataset",
    "register_entity_key",
    "replace_dataset",
    "revoke_consent",
    "router",
    "store_policy",
    "withdraw_dataset",
]

log = logging.getLogger("trusted_space.management")

POLICY_NAMESPACE = "policy"
"""Stored reusable policies (key: policy id; body ``{"policy": ODRL}``)."""
WITHDRAWN_NAMESPACE = "dataset.withdrawn"
"""Tombstones of withdrawn datasets: their ids are never published again."""

_ID = re.compile(ID_PATTERN)
_ANY_TARGET = "urn:trusted-space:any-dataset"

router = APIRouter(prefix="/management", tags=["management"], dependencies=[Depends(require_admin)])


# -- credential ---------------------------------------------------------------------------------


@router.put("/credential")
def install_credential(body: CredentialInstall, runtime: RuntimeDep) -> CredentialInstalled:
    """Install this node's membership credential (verified against the operator's key first)."""
    runtime.install_credential(body.token)
    directory = runtime.require_directory()
    with runtime.transaction(readonly=True) as tx:
        credential = directory.get(tx, runtime.id)
    log.info("installed credential of %s, valid until %s", runtime.id, credential.expires_at)
    return credential_installed(credential)


# -- datasets -----------------------------------------------------------------------------------


def _check_id(value: object, path: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise ValidationError(
            f"{path}: {value!r} is not an id (letters, digits, '.', '_', ':', '-'; at most 128)"
        )
    return value


def _parse_dataset(runtime: NodeRuntime, doc: dict[str, Any], path_id: str | None) -> Dataset:
    if "provider" not in runtime.roles:
        raise ValidationError(f"{runtime.id} has no provider role: it does not publish datasets")
    doc = dict(doc)
    owner = doc.setdefault("owner", runtime.id)
    if owner != runtime.id:
        raise ValidationError(f"dataset.owner: {owner!r} is not this node ({runtime.id!r})")
    if path_id is not None:
        doc.setdefault("id", path_id)
        if doc["id"] != path_id:
            raise ValidationError(f"dataset.id: {doc['id']!r} is not {path_id!r} of the URL")
    _check_id(doc.get("id"), "dataset.id")
    dataset = Dataset.from_json(doc)
    check_grade_floor(dataset)
    return dataset


def _stored_policy(runtime: NodeRuntime, policy_id: str, path: str) -> dict[str, Any]:
    with runtime.transaction(readonly=True) as tx:
        doc = tx.get(POLICY_NAMESPACE, policy_id)
    if doc is None:
        raise ValidationError(f"{path}.policyId: no stored policy {policy_id!r}")
    return dict(doc.body["policy"])


def _offer(
    runtime: NodeRuntime, dataset: Dataset, item: dict[str, Any], index: int
) -> dict[str, Any]:
    """One offer as published: parsed strictly, bound to this node, checked against the floor."""
    path = f"offers[{index}]"
    if set(item) == {"policyId"}:
        policy_id = _check_id(item["policyId"], f"{path}.policyId")
        doc = _stored_policy(runtime, policy_id, path)
        doc["@id"] = f"urn:trusted-space:{runtime.id}:offer:{dataset.id}:{policy_id}"
    else:
        doc = dict(item)
        doc.setdefault("assigner", runtime.id)
    try:
        parsed = policies.from_odrl(doc, target=dataset.id)
    except ValidationError as exc:
        raise ValidationError(f"{path}: {exc}") from exc
    if parsed.kind != "Offer":
        raise ValidationError(f"{path}.@type: a dataset is published under an Offer")
    if parsed.assigner != runtime.id:
        raise ValidationError(f"{path}.assigner: {parsed.assigner!r} is not this node")
    try:
        policies.check_grade_floor(parsed, dataset.tier.value, dataset.max_grade)
    except GradeFloorError as exc:
        raise GradeFloorError(f"{path}: {exc}") from exc
    return policies.to_odrl(parsed, in_dataset=True)


def _prepare(
    runtime: NodeRuntime, body: DatasetRegistration, path_id: str | None = None
) -> tuple[Dataset, list[dict[str, Any]], SourceSpec, int]:
    """Check everything a registration names; nothing is written here."""
    dataset = _parse_dataset(runtime, body.dataset, path_id)
    offers = [_offer(runtime, dataset, item, i) for i, item in enumerate(body.offers)]
    ids = [str(o["@id"]) for o in offers]
    if len(set(ids)) != len(ids):
        raise ValidationError(f"offers: duplicate offer @id among {ids}")
    if dataset.offer_ids and sorted(dataset.offer_ids) != sorted(ids):
        raise ValidationError(
            f"dataset.offerIds: {list(dataset.offer_ids)} are not the ids of the offers {ids}"
        )
    dataset = replace(dataset, offer_ids=tuple(ids))
    spec = SourceSpec.from_json(
        body.source.model_dump(exclude_none=True),
        base_dir=Path(runtime.settings.dir).resolve(),
    )
    rows = validate_against(open_source(spec), dataset)
    return dataset, offers, spec, rows


def _write(
    runtime: NodeRuntime,
    dataset: Dataset,
    offers: list[dict[str, Any]],
    spec: SourceSpec,
    rows: int,
    *,
    expect_version: int,
) -> int:
    """Publish and store the source in one transaction; returns the dataset's new version."""
    with runtime.transaction() as tx:
        if expect_version == 0 and tx.get(WITHDRAWN_NAMESPACE, dataset.id) is not None:
            raise ConflictError(
                f"dataset.id: {dataset.id!r} was withdrawn; an id is never published again"
            )
        published = publish(tx, dataset, offers, expect_version=expect_version)
        tx.put(
            SOURCE_NAMESPACE,
            dataset.id,
            spec.to_json() | {"rows": rows, "validatedAt": runtime.clock().isoformat()},
        )
    return published.version


def _federate(runtime: NodeRuntime) -> bool:
    """Push the catalog to the operator; a failure is logged, never raised (best effort)."""
    try:
        return bool(federation.push_catalog(runtime))
    except NotImplementedError:
        log.info("catalog federation is not available on this node")
    except TrustedSpaceError as exc:
        log.warning("catalog not pushed to the operator: %s", exc)
    return False


def _source_doc(runtime: NodeRuntime, dataset_id: str) -> dict[str, Any] | None:
    with runtime.transaction(readonly=True) as tx:
        doc = tx.get(SOURCE_NAMESPACE, dataset_id)
    return None if doc is None else dict(doc.body)


@router.post("/datasets", status_code=201)
def register_dataset(body: DatasetRegistration, runtime: RuntimeDep) -> DatasetRegistered:
    """Publish a dataset with its source and offers (all checked first, then one transaction)."""
    dataset, offers, spec, rows = _prepare(runtime, body)
    version = _write(runtime, dataset, offers, spec, rows, expect_version=0)
    log.info("published dataset %s (%d rows, tier %s)", dataset.id, rows, dataset.tier.value)
    return DatasetRegistered(
        id=dataset.id, version=version, rows=rows, federated=_federate(runtime)
    )


@router.get("/datasets")
def datasets(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[DatasetSummary]:
    """Every dataset this node publishes (paged by id)."""
    with runtime.transaction(readonly=True) as tx:
        published = list_datasets(tx)
        sources = {d.key: d.body for d in tx.scan(SOURCE_NAMESPACE)}
    chosen = pages(published, lambda p: (p.dataset.id,))
    return [dataset_summary(p, sources.get(p.dataset.id)) for p in chosen]


@router.get("/datasets/{dataset_id}")
def dataset(dataset_id: str, runtime: RuntimeDep) -> DatasetView:
    """One dataset: its description, offers and source."""
    with runtime.transaction(readonly=True) as tx:
        published = load_dataset(tx, dataset_id)
    return dataset_view(published, _source_doc(runtime, dataset_id))


@router.put("/datasets/{dataset_id}")
def replace_dataset(
    dataset_id: str, body: DatasetReplacement, runtime: RuntimeDep
) -> DatasetRegistered:
    """Replace a published dataset (description, source, offers) at its current version."""
    with runtime.transaction(readonly=True) as tx:
        load_dataset(tx, dataset_id)
    dataset, offers, spec, rows = _prepare(runtime, body, dataset_id)
    version = _write(runtime, dataset, offers, spec, rows, expect_version=body.version)
    log.info("replaced dataset %s (version %d)", dataset.id, version)
    return DatasetRegistered(
        id=dataset.id, version=version, rows=rows, federated=_federate(runtime)
    )


@router.delete("/datasets/{dataset_id}")
def withdraw_dataset(
    dataset_id: str,
    runtime: RuntimeDep,
    version: Annotated[
        int | None, Query(ge=1, description="Refuse unless at this version.")
    ] = None,
) -> DatasetWithdrawn:
    """Withdraw a dataset: no new negotiation, transfer or computation can reach it."""
    with runtime.transaction() as tx:
        doc = tx.require(DATASET_NAMESPACE, dataset_id)
        if version is not None and doc.version != version:
            raise ConflictError(
                f"dataset {dataset_id!r} is at version {doc.version}, not {version}"
            )
        published = load_dataset(tx, dataset_id)
        tx.delete(DATASET_NAMESPACE, dataset_id)
        tx.delete(SOURCE_NAMESPACE, dataset_id)
        tx.put(WITHDRAWN_NAMESPACE, dataset_id, {"version": doc.version})
        record_event(
            tx,
            "dataset.withdrawn",
            {"datasetId": dataset_id, "owner": published.dataset.owner, "version": doc.version},
            time=runtime.clock(),
        )
    log.info("withdrew dataset %s", dataset_id)
    return DatasetWithdrawn(id=dataset_id, version=doc.version, federated=_federate(runtime))


@router.get("/offers")
def offers(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[OfferView]:
    """Every offer of every published dataset, with its dataset id (paged by both ids)."""
    with runtime.transaction(readonly=True) as tx:
        published = list_datasets(tx)
    views = [OfferView(datasetId=p.dataset.id, offer=dict(o)) for p in published for o in p.offers]
    return pages(views, lambda v: (v.datasetId, str(v.offer.get("@id", ""))))


# -- policies -----------------------------------------------------------------------------------


@router.post("/policies", status_code=201)
def store_policy(body: PolicyCreate, runtime: RuntimeDep) -> PolicyView:
    """Store a reusable ODRL Offer (parsed strictly; ``policy.stored`` in the ledger)."""
    doc = dict(body.policy)
    doc.setdefault("@id", body.id)
    doc.setdefault("@type", "Offer")
    doc.setdefault("assigner", runtime.id)
    if doc["@id"] != body.id:
        raise ValidationError(f"policy.@id: {doc['@id']!r} is not the id {body.id!r}")
    has_target = "target" in doc
    try:
        parsed = policies.from_odrl(doc, target=None if has_target else _ANY_TARGET)
    except ValidationError as exc:
        raise ValidationError(f"policy: {exc}") from exc
    if parsed.kind != "Offer":
        raise ValidationError("policy.@type: a stored policy is an Offer")
    if parsed.assigner != runtime.id:
        raise ValidationError(f"policy.assigner: {parsed.assigner!r} is not this node")
    stored = policies.to_odrl(parsed, in_dataset=not has_target)
    with runtime.transaction() as tx:
        written = tx.insert(POLICY_NAMESPACE, body.id, {"policy": stored})
        record_event(
            tx,
            "policy.stored",
            {"policyId": body.id, "sha256": hashlib.sha256(canonical_json(stored)).hexdigest()},
            time=runtime.clock(),
        )
    return PolicyView(id=body.id, policy=stored, version=written.version)


@router.get("/policies")
def list_policies(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[PolicyView]:
    """Every stored policy (paged by id)."""
    with runtime.transaction(readonly=True) as tx:
        docs = tx.scan(POLICY_NAMESPACE)
    chosen = pages(docs, lambda d: (d.key,))
    return [PolicyView(id=d.key, policy=d.body["policy"], version=d.version) for d in chosen]


@router.get("/policies/{policy_id}")
def get_policy(policy_id: str, runtime: RuntimeDep) -> PolicyView:
    """One stored policy."""
    with runtime.transaction(readonly=True) as tx:
        doc = tx.require(POLICY_NAMESPACE, policy_id)
    return PolicyView(id=doc.key, policy=doc.body["policy"], version=doc.version)


# -- consents -----------------------------------------------------------------------------------


def _registry(runtime: NodeRuntime) -> ConsentRegistry:
    if runtime.consents is None:
        raise NotReadyError(
            f"{runtime.id} has no operator anchor yet: consents are checked against its key"
        )
    return runtime.consents


@router.post("/consents/entity-keys", status_code=201)
def register_entity_key(body: EntityKeyRegister, runtime: RuntimeDep) -> EntityKeyView:
    """Record an entity's own verify key, so that consents it signs can be checked."""
    registry = _registry(runtime)
    try:
        key = VerifyKey.from_b64(body.publicKey)
    except ValidationError as exc:
        raise ValidationError(f"publicKey: {exc}") from exc
    try:
        with runtime.transaction() as tx:
            registry.register_entity_key(tx, body.entity, key, now=runtime.clock())
    except ValidationError as exc:
        raise ValidationError(f"entity: {exc}") from exc
    return EntityKeyView(entity=body.entity, fingerprint=key.fingerprint)


@router.post("/consents", status_code=201)
def register_consent(body: ConsentRegister, runtime: RuntimeDep) -> ConsentView:
    """Verify and store a consent signed by the entity or by the operator.

    A token that does not verify is a ``400`` (the caller is this node's staff, already
    authenticated; the reason goes to the node's log, not to the response).
    """
    registry = _registry(runtime)
    try:
        with runtime.transaction() as tx:
            consent = registry.register(tx, body.token, now=runtime.clock())
    except VerificationError as exc:
        log.info("consent refused: %s", exc.reason)
        raise ValidationError(
            "token: the consent does not verify (signature, signer key or claims)"
        ) from exc
    return consent_view(consent, revoked=False)


@router.get("/consents/{consent_id}")
def get_consent(consent_id: str, runtime: RuntimeDep) -> ConsentView:
    """A registered consent, revoked or not."""
    registry = _registry(runtime)
    with runtime.transaction(readonly=True) as tx:
        consent = registry.get(tx, consent_id)
        revoked = registry.is_revoked(tx, consent_id)
    return consent_view(consent, revoked=revoked)


@router.post("/consents/{consent_id}/revoke")
def revoke_consent(consent_id: str, body: ConsentRevoke, runtime: RuntimeDep) -> ConsentView:
    """Withdraw a consent for good (``consent.revoked`` in the ledger)."""
    registry = _registry(runtime)
    with runtime.transaction() as tx:
        consent = registry.revoke(tx, consent_id, now=runtime.clock(), reason=body.reason)
    return consent_view(consent, revoked=True)


# -- metering and peers -------------------------------------------------------------------------


@router.get("/metering")
def metering(
    runtime: RuntimeDep,
    agreement: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    participant: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> UsageView:
    """Use counts of one agreement or one participant (exactly one of the two parameters)."""
    if (agreement is None) == (participant is None):
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "agreement" if agreement is None else "participant"),
                    "msg": "give exactly one of the query parameters agreement and participant",
                    "type": "value_error",
                }
            ]
        )
    with runtime.transaction(readonly=True) as tx:
        summary = usage(tx, agreement_id=agreement, participant=participant)
    return usage_view(summary)


@router.get("/peers")
def peers(
    runtime: RuntimeDep,
    pages: PagerDep,
) -> list[PeerView]:
    """The members this node knows how to reach (from admission and the operator's registry)."""
    with runtime.transaction(readonly=True) as tx:
        docs = tx.scan(PEER_NAMESPACE)
    chosen = pages(docs, lambda d: (d.key,))
    return [
        PeerView(id=d.key, url=str(d.body["url"]), roles=list(d.body.get("roles", [])))
        for d in chosen
    ]
