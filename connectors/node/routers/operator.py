"""The operator's routes: admission, the member registry, revocation, federated catalog, witness.

Mounted only on the operator node. Who may call what:

=========================================  ==========  ==========================================
route                                      caller      what
=========================================  ==========  ==========================================
``GET /operator/identity``                 anyone      the trust anchor (id, key, witness vkey)
``POST /operator/participants``            admin       admit: sign a membership credential
``GET /operator/participants[/{id}]``      member      the registry (URLs, keys, credentials)
``POST /operator/participants/{id}/revoke``  admin     revoke, sign the list, push it to members
``GET /operator/revocations``              anyone      the current signed revocation list
``PUT /operator/catalog/{participant}``    member      a provider registers its own DSP catalog
``POST /operator/catalog/request``         anyone      the federated DSP catalog, per caller
``POST /operator/witness/cosign``          member      cosign the sender's ledger checkpoint
``GET /operator/witness/logs[/{id}]``      anyone      per member log: registered ledger key, the
                                                       latest cosigned checkpoint, submissions,
                                                       refusals and alarms (the verifier's anchor)
=========================================  ==========  ==========================================

Threats and decisions:

- **Impersonation at admission**: the ledger verifier key must name the very key being admitted,
  and its name (the log origin) must not belong to another participant, so one member cannot get
  the witness to vouch for (or fork-flag) another member's log.
- **Re-admission** of a known id: with the *same* key it renews the credential (roles and URL may
  change) unless the member was revoked; with a *different* key only after a revocation. So a
  typo by staff cannot hand an identity to another key, and a revoked (maybe compromised) key
  never comes back: a revoked member returns with a fresh key.
- **A revoked member lingering elsewhere**: the new signed list is pushed to every other admitted
  member at once (short timeout, result reported per member) and nodes also pull it
  periodically (:func:`connectors.node.federation.sync_revocations`). Its federated catalog is
  dropped
  in the revoking transaction.
- **Catalog poisoning**: only the provider itself (signed request, role ``provider``) may replace
  its catalog, which must validate against the DSP 2025-1 schema and name the sender as
  ``participantId`` and owner of each dataset. Anonymous callers see only ``unconditional``
  datasets, as on each provider's own endpoint.
- **Split views of a log**: the witness checks every checkpoint against the sender's *registered*
  ledger key and its last cosigned head; a bad signature is the usual indistinguishable ``401``, a
  history that does not extend the cosigned one is ``409`` and the evidence is kept
  (``trusted_space.ledger.WitnessState.forks``). A proof that starts from another size than the
  witness's last cosigned one (the node never received an earlier answer: a crash, a timeout) is
  ``409`` ``witness-size`` with ``witnessSize``, recorded as nothing, so the node can retry.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi import APIRouter, Body, Response
from fastapi.responses import JSONResponse

from connectors.node.deps import (
    OPTIONAL_MEMBER_OPENAPI,
    AdminDep,
    MemberDep,
    OptionalMemberDep,
    RuntimeDep,
)
from connectors.node.federation import plain_client
from connectors.node.problems import problem
from connectors.node.runtime import PEER_NAMESPACE, NodeRuntime
from connectors.node.wire.operator import (
    AdmissionRequest,
    CosignRequest,
    CosignResult,
    OperatorIdentity,
    Participant,
    RevocationListOut,
    RevokeRequest,
    RevokeResult,
    WitnessedLog,
    anchor_out,
    participant_out,
    revocation_list_out,
)
from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, Tier
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    NotReadyError,
    ValidationError,
    VerificationError,
    WitnessSizeError,
)
from trusted_space.identity import (
    ROLES,
    MembershipCredential,
    OperatorAuthority,
    check_participant_id,
    record_refusal,
)
from trusted_space.keys import VerifyKey
from trusted_space.ledger import Witness, open_checkpoint, record_witness_refusal
from trusted_space.notes import SIG_ED25519, NoteVerifier, parse_vkey
from trusted_space.store import Transaction

__all__ = [
    "CATALOG_NAMESPACE",
    "PARTICIPANT_NAMESPACE",
    "admit",
    "cosign",
    "federated_catalog",
    "get_participant",
    "identity",
    "list_participants",
    "put_catalog",
    "revocations",
    "revoke",
    "router",
    "witness_log",
    "witness_logs",
]

router = APIRouter(prefix="/operator", tags=["operator"])

PARTICIPANT_NAMESPACE = "participant"
"""Admission records: url, roles, ledgerVkey, publicKey, origin (key = participant id)."""

CATALOG_NAMESPACE = "federated_catalog"
"""Each provider's latest DSP catalog as it sent it (key = participant id)."""

_MEMBER_NAMESPACE = "member"  # trusted_space.identity keeps each member's current credential here
_PUSH_TIMEOUT = 5.0
_TIER = TS_NAMESPACE + "tier"
_OWNER = TS_NAMESPACE + "owner"


def _authority(runtime: NodeRuntime) -> OperatorAuthority:
    if runtime.authority is None:  # the router is mounted on the operator only
        raise NotReadyError("this node is not an operator")
    return runtime.authority


def _witness(runtime: NodeRuntime) -> Witness:
    if runtime.witness is None:
        raise NotReadyError("this node is not an operator")
    return runtime.witness


# -- identity ------------------------------------------------------------------------------------


@router.get("/identity", response_model=OperatorIdentity)
def identity(runtime: RuntimeDep) -> OperatorIdentity:
    """The space's trust anchor; nodes fetch it once at ``node init`` and compare the key."""
    if runtime.anchor is None:
        raise NotReadyError("the operator has no anchor file (operator.json)")
    return anchor_out(runtime.anchor)


# -- admission and registry ----------------------------------------------------------------------


_URL = re.compile(
    r"https?://(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)


def _check_url(url: str) -> str:
    """An absolute http(s) URL with an ASCII host, optional port and path; nothing else."""
    match = _URL.fullmatch(url)
    if match is None or int(match.group("port") or 0) > 65535:
        raise ValidationError(
            "url: must be an absolute http(s) URL (ASCII host, optional port and path; "
            "no query, fragment, credentials or spaces)"
        )
    return url.rstrip("/")


def _check_admission(runtime: NodeRuntime, body: AdmissionRequest) -> tuple[VerifyKey, str, str]:
    pid = check_participant_id(body.id)
    if pid == runtime.id:
        raise ConflictError("the operator admits itself at start; it cannot be admitted again")
    roles = set(body.roles)
    if not roles <= ROLES or "operator" in roles:
        raise ValidationError(f"roles: choose from provider, consumer (got {sorted(roles)})")
    try:
        key = VerifyKey.from_b64(body.publicKey)
    except ValidationError as exc:
        raise ValidationError(f"publicKey: {exc}") from exc
    if key.to_b64() != body.publicKey:
        raise ValidationError("publicKey: not the canonical unpadded base64url of 32 bytes")
    try:
        verifier = parse_vkey(body.ledgerVkey)
    except ValidationError as exc:
        raise ValidationError(f"ledgerVkey: {exc}") from exc
    if verifier.sig_type != SIG_ED25519:
        raise ValidationError("ledgerVkey: not an Ed25519 (0x01) note key")
    if verifier.key != key:
        raise ValidationError("ledgerVkey: names another key than publicKey")
    return key, verifier.name, _check_url(body.url)


def _check_readmission(
    tx: Transaction, authority: OperatorAuthority, pid: str, key: VerifyKey
) -> None:
    try:
        current = authority.directory.get(tx, pid)
    except NotFoundError:
        return
    revoked = authority.directory.is_revoked(tx, current.credential_id)
    if current.public_key == key and revoked:
        raise ConflictError(f"{pid}: this key was revoked; re-admit the member with a new key")
    if current.public_key != key and not revoked:
        raise ConflictError(f"{pid} is admitted with another key; revoke it first to re-key")


def _check_origin_free(tx: Transaction, runtime: NodeRuntime, pid: str, origin: str) -> None:
    if origin == runtime.ledger.origin:
        raise ConflictError(f"ledger origin {origin!r} belongs to the operator")
    for doc in tx.scan(PARTICIPANT_NAMESPACE):
        if doc.key != pid and doc.body.get("origin") == origin:
            raise ConflictError(f"ledger origin {origin!r} belongs to {doc.key}")


@router.post("/participants", response_model=Participant, status_code=201)
def admit(body: AdmissionRequest, runtime: RuntimeDep, _: AdminDep) -> Participant:
    """Admit a participant: sign its credential and register its URL and ledger key.

    The credential, the admission record, the peer entry and the ``credential.issued`` ledger
    event are written in one transaction.
    """
    authority = _authority(runtime)
    key, origin, url = _check_admission(runtime, body)
    roles = sorted(set(body.roles))
    with runtime.transaction() as tx:
        _check_readmission(tx, authority, body.id, key)
        _check_origin_free(tx, runtime, body.id, origin)
        credential = authority.issue(tx, body.id, roles, key, now=runtime.clock())
        record = {
            "url": url,
            "roles": roles,
            "publicKey": key.to_b64(),
            "ledgerVkey": body.ledgerVkey,
            "origin": origin,
        }
        tx.put(PARTICIPANT_NAMESPACE, body.id, record)
        tx.put(PEER_NAMESPACE, body.id, {"url": url, "roles": roles})
    runtime.forget_peer(body.id)
    return participant_out(credential, record, revoked=False)


def _record(tx: Transaction, runtime: NodeRuntime, pid: str) -> dict[str, Any] | None:
    if pid == runtime.id:
        return {"url": runtime.url, "ledgerVkey": runtime.ledger.vkey}
    doc = tx.get(PARTICIPANT_NAMESPACE, pid)
    if doc is not None:
        return dict(doc.body)
    peer = tx.get(PEER_NAMESPACE, pid)  # admitted out of band: the URL only
    return None if peer is None else {"url": peer.body.get("url")}


def _participant(tx: Transaction, runtime: NodeRuntime, pid: str) -> Participant:
    directory = _authority(runtime).directory
    credential = directory.get(tx, pid)
    revoked = directory.is_revoked(tx, credential.credential_id)
    return participant_out(credential, _record(tx, runtime, pid), revoked=revoked)


@router.get("/participants", response_model=list[Participant])
def list_participants(runtime: RuntimeDep, _: MemberDep) -> list[Participant]:
    """Every member ever admitted, revoked ones flagged."""
    with runtime.transaction(readonly=True) as tx:
        ids = [doc.key for doc in tx.scan(_MEMBER_NAMESPACE)]
        return [_participant(tx, runtime, pid) for pid in ids]


@router.get("/participants/{participant_id}", response_model=Participant)
def get_participant(participant_id: str, runtime: RuntimeDep, _: MemberDep) -> Participant:
    with runtime.transaction(readonly=True) as tx:
        return _participant(tx, runtime, participant_id)


# -- revocation ----------------------------------------------------------------------------------


def _push_targets(tx: Transaction, runtime: NodeRuntime, revoked_id: str) -> dict[str, str]:
    """Members other than the operator and the revoked one, not revoked themselves: id -> URL."""
    directory = _authority(runtime).directory
    targets: dict[str, str] = {}
    for doc in tx.scan(_MEMBER_NAMESPACE):
        pid = doc.key
        if pid in (runtime.id, revoked_id):
            continue
        credential: MembershipCredential = directory.get(tx, pid)
        if directory.is_revoked(tx, credential.credential_id):
            continue
        record = _record(tx, runtime, pid)
        if record is not None and record.get("url"):
            targets[pid] = str(record["url"])
    return targets


def _push(runtime: NodeRuntime, token: str, targets: dict[str, str]) -> dict[str, bool]:
    pushed: dict[str, bool] = {}
    with plain_client(runtime, _PUSH_TIMEOUT) as http:
        for pid, url in sorted(targets.items()):
            try:
                response = http.post(f"{url}/identity/revocations", json={"token": token})
                pushed[pid] = response.is_success
            except (httpx.HTTPError, ValueError):  # unreachable, or a URL httpx cannot use
                pushed[pid] = False
    return pushed


@router.post("/participants/{participant_id}/revoke", response_model=RevokeResult)
def revoke(
    participant_id: str, body: RevokeRequest, runtime: RuntimeDep, _: AdminDep
) -> RevokeResult:
    """Revoke every credential of a member, sign the new list and push it to the others."""
    authority = _authority(runtime)
    pid = check_participant_id(participant_id)
    if pid == runtime.id:
        raise ValidationError("the operator cannot revoke itself")
    with runtime.transaction() as tx:
        rlist = authority.revoke(tx, pid, now=runtime.clock(), reason=body.reason)
        tx.delete(CATALOG_NAMESPACE, pid)
        targets = _push_targets(tx, runtime, pid)
    return RevokeResult(sequence=rlist.sequence, pushed=_push(runtime, rlist.token, targets))


@router.get("/revocations", response_model=RevocationListOut)
def revocations(runtime: RuntimeDep) -> RevocationListOut:
    """The current signed revocation list (sequence 0 and empty before any revocation)."""
    authority = _authority(runtime)
    with runtime.transaction() as tx:  # the first call signs the initial, empty list
        rlist = authority.revocation_list(tx, now=runtime.clock())
    return revocation_list_out(rlist)


# -- federated catalog ---------------------------------------------------------------------------


@router.put(
    "/catalog/{participant}",
    status_code=204,
    response_class=Response,
    responses={403: {"description": "not this provider"}},
)
def put_catalog(
    participant: str,
    runtime: RuntimeDep,
    sender: MemberDep,
    catalog: dict[str, Any] = Body(  # noqa: B008 - FastAPI's declaration style
        ..., description="the provider's full DSP 2025-1 Catalog"
    ),
) -> Response:
    """A provider replaces its own entry in the federated catalog."""
    if sender.participant_id != participant or "provider" not in sender.roles:
        return problem(
            403,
            "forbidden",
            "Forbidden",
            "only the provider itself may register its catalog",
        )
    dsp.validate(catalog, "catalog/catalog-schema.json")
    if catalog.get("participantId") != participant:
        raise ValidationError(f"participantId must be the sender, {participant!r}")
    for i, dataset in enumerate(catalog.get("dataset", [])):
        if dataset.get(_OWNER) != participant:
            raise ValidationError(f"dataset[{i}]: owner must be {participant!r}")
    with runtime.transaction() as tx:
        tx.put(
            CATALOG_NAMESPACE,
            participant,
            {"catalog": catalog, "updatedAt": runtime.clock().isoformat()},
        )
    return Response(status_code=204)


def _nested(catalog: dict[str, Any], member: bool) -> dict[str, Any] | None:
    datasets = [
        ds
        for ds in catalog.get("dataset", [])
        if member or ds.get(_TIER) == Tier.UNCONDITIONAL.value
    ]
    if not datasets:
        return None
    nested = {k: v for k, v in catalog.items() if k not in ("@context", "dataset", "catalog")}
    nested["dataset"] = datasets
    return nested


@router.post("/catalog/request", openapi_extra=OPTIONAL_MEMBER_OPENAPI)
def federated_catalog(
    runtime: RuntimeDep,
    caller: OptionalMemberDep,
    message: dict[str, Any] = Body(  # noqa: B008 - FastAPI's declaration style
        ..., description="a DSP CatalogRequestMessage"
    ),
) -> JSONResponse:
    """The space's catalog of catalogs, one nested catalog per provider, filtered for the caller.

    Anonymous callers see only ``unconditional`` datasets; members see every tier. A provider
    with nothing visible to the caller is left out.
    """
    dsp.validate(message, "catalog/catalog-request-message-schema.json")
    member = caller is not None
    directory = _authority(runtime).directory
    nested: list[dict[str, Any]] = []
    with runtime.transaction(readonly=True) as tx:
        for doc in tx.scan(CATALOG_NAMESPACE):
            try:
                directory.active(tx, doc.key, now=runtime.clock())
            except VerificationError:
                continue  # revoked or expired since it registered
            entry = _nested(doc.body["catalog"], member)
            if entry is not None:
                nested.append(entry)
    out: dict[str, Any] = {
        "@context": list(dsp.DSP_CONTEXT),
        "@id": f"urn:trusted-space:{runtime.id}:federated-catalog",
        "@type": "Catalog",
        "participantId": runtime.id,
    }
    if nested:
        out["catalog"] = nested
    dsp.validate(out, "catalog/catalog-schema.json")
    return JSONResponse(out)


# -- witness -------------------------------------------------------------------------------------


@router.post(
    "/witness/cosign",
    response_model=CosignResult,
    responses={409: {"description": "not consistent with the last cosigned checkpoint"}},
)
def cosign(body: CosignRequest, runtime: RuntimeDep, sender: MemberDep) -> Any:
    """Cosign the sender's checkpoint if it extends the last one cosigned for its log."""
    witness = _witness(runtime)
    with runtime.transaction(readonly=True) as tx:
        doc = tx.get(PARTICIPANT_NAMESPACE, sender.participant_id)
        credential = _authority(runtime).directory.get(tx, sender.participant_id)
    if doc is None or not doc.body.get("ledgerVkey"):
        raise NotFoundError(
            f"no ledger key registered for {sender.participant_id}: admit it with a ledgerVkey"
        )
    verifier: NoteVerifier = parse_vkey(str(doc.body["ledgerVkey"]))
    if verifier.key != credential.public_key:
        raise ConflictError("the registered ledger key is not the member's current key")
    try:
        open_checkpoint(body.checkpoint, verifier)
    except VerificationError as exc:  # the caller gets the same 401 as any; the ledger the reason
        with runtime.transaction() as tx:
            record_witness_refusal(
                tx,
                verifier.name,
                None,
                "signed with a key the operator did not register (re-signed?)",
                int(runtime.clock().timestamp()),
            )
            record_refusal(
                tx,
                VerificationError(f"checkpoint from {sender.participant_id}: {exc.reason}"),
                token=None,
                audience=runtime.id,
                method="POST",
                path="/operator/witness/cosign",
                now=runtime.clock(),
            )
        raise
    try:
        note = witness.cosign(
            body.checkpoint,
            verifier,
            body.proof_bytes(),
            now=int(runtime.clock().timestamp()),
            old_size=body.old,
        )
    except WitnessSizeError as exc:
        return problem(
            409,
            "witness-size",
            "The proof starts from another size than the witness's",
            str(exc),
            witnessSize=exc.witness_size,
        )
    except ConflictError:
        return problem(
            409,
            "rolled-back-checkpoint",
            "Checkpoint older than the witnessed history",
            f"the witness already cosigned a larger checkpoint of {verifier.name}: the log was "
            "rolled back; the refusal is recorded",
        )
    except VerificationError:
        return problem(
            409,
            "inconsistent-checkpoint",
            "Checkpoint not consistent with the witnessed history",
            f"the checkpoint of {verifier.name} does not extend the last one this witness "
            "cosigned; the evidence is kept",
        )
    return CosignResult(note=note)


def _witnessed_log(
    tx: Transaction, runtime: NodeRuntime, pid: str, record: dict[str, Any], now: int
) -> WitnessedLog | None:
    vkey = record.get("ledgerVkey")
    if not vkey:
        return None
    witness = _witness(runtime)
    origin = parse_vkey(str(vkey)).name
    note = witness.latest_cosigned(origin)
    latest = witness.state.latest_record(origin) or {}
    watch = witness.state.watch(origin)
    last = watch.get("last_submission_at")
    alarms = []
    if note is None:
        alarms.append("never-witnessed")
    if watch.get("silent_since") is not None or (
        isinstance(last, int) and now - last > runtime.settings.witness_silence
    ):
        alarms.append("not-submitting")
    refusals = int(watch.get("refusals", 0))
    if watch.get("last_refused") is True:
        alarms.append("refused")
    checkpoint = latest.get("checkpoint")
    return WitnessedLog(
        participant=pid,
        url=record.get("url"),
        origin=origin,
        ledgerVkey=str(vkey),
        checkpoint=note,
        size=None if checkpoint is None else int(str(checkpoint).split("\n")[1]),
        cosignedAt=latest.get("cosigned_at"),
        lastSubmissionAt=last if isinstance(last, int) else None,
        refusals=refusals,
        lastRefusal=watch.get("last_refusal"),
        alarms=alarms,
    )


@router.get("/witness/logs", response_model=list[WitnessedLog])
def witness_logs(runtime: RuntimeDep) -> list[WitnessedLog]:
    """Every member log the operator knows, with what its witness vouches for (public).

    This is the anchor of ``trusted-space ledger verify``: the log key as registered at
    admission (not as the node says), and the newest head the witness cosigned, which the node's
    current log must extend. Only public keys, checkpoints (sizes and roots) and times: no entry.
    """
    now = int(runtime.clock().timestamp())
    out = []
    with runtime.transaction(readonly=True) as tx:
        ids = [doc.key for doc in tx.scan(_MEMBER_NAMESPACE)]
        for pid in ids:
            record = _record(tx, runtime, pid)
            row = None if record is None else _witnessed_log(tx, runtime, pid, record, now)
            if row is not None:
                out.append(row)
    return out


@router.get("/witness/logs/{participant_id}", response_model=WitnessedLog)
def witness_log(participant_id: str, runtime: RuntimeDep) -> WitnessedLog:
    """One member's witnessed log (see :func:`witness_logs`); ``404`` if none is registered."""
    now = int(runtime.clock().timestamp())
    with runtime.transaction(readonly=True) as tx:
        record = _record(tx, runtime, participant_id)
        row = None if record is None else _witnessed_log(tx, runtime, participant_id, record, now)
    if row is None:
        raise NotFoundError(f"no ledger registered for {participant_id}")
    return row
