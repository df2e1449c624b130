"""Raw-row transfer after the Dataspace Protocol 2025-1, both sides, with a short-lived pull token.

Datasets of tier ``unconditional`` and ``conditional`` may leave their owner as rows, under an
agreement; ``zone`` datasets never do (they only feed joint computations). This module is the
transfer process of DSP 2025-1 for ``HttpData-PULL``:

1. The consumer sends ``TransferRequestMessage`` (agreement, its ``consumerPid``, its callback
   address). The provider checks the agreement, the dataset's tier and its usage policy, and
   answers ``TransferProcess`` (``REQUESTED``).
2. The provider sends ``TransferStartMessage`` to the consumer with a ``dataAddress``: its data
   endpoint and a bearer **pull token**.
3. The consumer ``GET`` s the rows (CSV or NDJSON, streamed) with that token, then sends
   ``TransferCompletionMessage``. Either side may suspend or terminate.

Threats and what stops them:

- *Someone else's agreement.* The assignee is the participant that signed the request (never a
  body claim); an agreement of another consumer and an unknown one answer the same ``404``.
- *A contract that no longer holds.* Only an agreement whose negotiation is ``FINALIZED`` and
  whose validity window contains "now" authorises a transfer
  (:func:`trusted_space.contracts.agreement_authorises`).
- *Raw rows of computation-only data.* A ``zone`` dataset is refused before any policy is read,
  and the policy engine re-applies the grade floor on every request anyway.
- *A use nobody can account for.* Every decision, allow or deny, is on the provider's ledger
  (:func:`trusted_space.policy.evaluate` writes it in the transaction that creates the transfer),
  the use is metered, and each state change of each side is a ``transfer.transition`` event.
- *A stolen or replayed pull token.* 256 random bits (:func:`secrets.token_urlsafe`); the
  provider stores only its SHA-256 and compares digests in constant time; it expires after
  :data:`TOKEN_LIFETIME`, serves one pull only, and dies with the transfer (completion,
  suspension, termination). Every failure answers the same ``401``; the ledger keeps the real
  reason (``auth.refused``). The token is never logged and never in a response model.
- *Sending the token elsewhere (SSRF).* The provider sends the start message only to the
  requester's registered URL (``callbackAddress`` must be it), and the consumer follows a data
  address only on its provider's registered URL.
- *Memory exhaustion.* Rows are read from the source chunk by chunk and streamed; the consumer
  writes them to a file as they arrive.

Transfer state machine (sender: P provider, C consumer)::

    —          TransferRequestMessage (C)      → REQUESTED
    REQUESTED  TransferStartMessage (P)        → STARTED
    SUSPENDED  TransferStartMessage (P)        → STARTED
    STARTED    TransferCompletionMessage (C|P) → COMPLETED
    STARTED    TransferSuspensionMessage (C|P) → SUSPENDED
    REQUESTED, STARTED, SUSPENDED  TransferTerminationMessage (C|P) → TERMINATED

COMPLETED and TERMINATED are terminal. The provider's record also moves REQUESTED → STARTED when
the consumer acknowledges the start message, or when the token is first presented (whichever
comes first: holding the token proves the start message arrived).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

from connectors.node import sources
from connectors.node.runtime import NodeRuntime
from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, Dataset, Tier, load_dataset
from trusted_space.contracts import (
    SignedAgreement,
    agreement_authorises,
    load_agreement,
    load_negotiation,
    new_id,
)
from trusted_space.errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    NotReadyError,
    RefusedError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import record_event
from trusted_space.identity import VerifiedRequest, record_refusal
from trusted_space.metering import record_use
from trusted_space.policy import (
    Checks,
    DecisionSubject,
    Policy,
    UsageRequest,
    evaluate,
    from_odrl,
)
from trusted_space.store import Transaction

__all__ = [
    "HTTP_ENDPOINT_TYPE",
    "MEDIA_CSV",
    "MEDIA_NDJSON",
    "PULL_FORMAT",
    "PURPOSE_PROPERTY",
    "TOKEN_LIFETIME",
    "TOKEN_NAMESPACE",
    "TRANSFER_NAMESPACE",
    "TRANSITIONS",
    "AcceptedTransfer",
    "Pull",
    "TransferMessage",
    "TransferRecord",
    "TransferState",
    "accept_request",
    "agreement_purpose",
    "list_transfers",
    "load_transfer",
    "next_state",
    "open_pull",
    "parse_message",
    "process_of",
    "pull",
    "receive",
    "request_transfer",
    "send_start",
    "stream_rows",
    "transfer_completion_message",
    "transfer_process",
    "transfer_request_message",
    "transfer_start_message",
    "transfer_suspension_message",
    "transfer_termination_message",
    "wait_started",
]

log = logging.getLogger("trusted_space.transfer")

PULL_FORMAT: Final = "HttpData-PULL"
HTTP_ENDPOINT_TYPE: Final = "https://w3id.org/idsa/v4.1/HTTP"
PURPOSE_PROPERTY: Final = TS_NAMESPACE + "purpose"
"""Extension property of ``TransferRequestMessage``: the purpose the consumer declares."""
TRANSFER_NAMESPACE: Final = "transfer"
TOKEN_NAMESPACE: Final = "transfer.token"  # noqa: S105 - a store namespace, not a secret
"""Consumer side only: the pull token received in the start message, apart from the record."""
SOURCE_NAMESPACE: Final = "source"
TOKEN_LIFETIME: Final = timedelta(minutes=5)
MEDIA_CSV: Final = "text/csv"
MEDIA_NDJSON: Final = "application/x-ndjson"
_MAX_PURPOSE = 128
_NO_TOKEN_HASH = hashlib.sha256(b"").hexdigest()

Role = Literal["provider", "consumer"]


class TransferState(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


_TERMINAL = frozenset({TransferState.COMPLETED, TransferState.TERMINATED})


class TransferMessage(StrEnum):
    REQUEST = "TransferRequestMessage"
    START = "TransferStartMessage"
    COMPLETION = "TransferCompletionMessage"
    SUSPENSION = "TransferSuspensionMessage"
    TERMINATION = "TransferTerminationMessage"


_SCHEMAS: Final = {
    TransferMessage.REQUEST: "transfer/transfer-request-message-schema.json",
    TransferMessage.START: "transfer/transfer-start-message-schema.json",
    TransferMessage.COMPLETION: "transfer/transfer-completion-message-schema.json",
    TransferMessage.SUSPENSION: "transfer/transfer-suspension-message-schema.json",
    TransferMessage.TERMINATION: "transfer/transfer-termination-message-schema.json",
}
_PROCESS_SCHEMA: Final = "transfer/transfer-process-schema.json"

_S = TransferState
_M = TransferMessage
TRANSITIONS: Final[Mapping[tuple[TransferState, TransferMessage], TransferState]] = {
    (_S.REQUESTED, _M.START): _S.STARTED,
    (_S.SUSPENDED, _M.START): _S.STARTED,
    (_S.STARTED, _M.COMPLETION): _S.COMPLETED,
    (_S.STARTED, _M.SUSPENSION): _S.SUSPENDED,
    **{(s, _M.TERMINATION): _S.TERMINATED for s in _S if s not in _TERMINAL},
}
"""(state before, message received) → state after; the request itself creates ``REQUESTED``."""
_SENDERS: Final[Mapping[TransferMessage, frozenset[str]]] = {
    _M.REQUEST: frozenset({"consumer"}),
    _M.START: frozenset({"provider"}),
    _M.COMPLETION: frozenset({"provider", "consumer"}),
    _M.SUSPENSION: frozenset({"provider", "consumer"}),
    _M.TERMINATION: frozenset({"provider", "consumer"}),
}


def next_state(state: TransferState, kind: TransferMessage, sender: str) -> TransferState:
    """The state after ``kind`` from ``sender`` (``provider``/``consumer``) in ``state``.

    Raises:
        IllegalTransitionError: not allowed from this sender, or not in this state.
    """
    if sender not in _SENDERS[kind]:
        raise IllegalTransitionError(
            f"{kind.value} cannot be sent by the {sender} (transfer in state {state.value})"
        )
    after = TRANSITIONS.get((state, kind))
    if after is None:
        raise IllegalTransitionError(
            f"{kind.value} from the {sender} is not allowed in transfer state {state.value}"
        )
    return after


# -- messages ------------------------------------------------------------------------------------


def _base(kind: TransferMessage | str) -> dict[str, Any]:
    return {"@context": list(dsp.DSP_CONTEXT), "@type": str(kind)}


def _finish(message: dict[str, Any]) -> dict[str, Any]:
    dsp.validate(message, _SCHEMAS[TransferMessage(message["@type"])])
    return message


def transfer_request_message(
    *,
    consumer_pid: str,
    agreement_id: str,
    callback_address: str,
    purpose: str | None = None,
    format: str = PULL_FORMAT,
) -> dict[str, Any]:
    """``TransferRequestMessage`` for a pull, with the declared purpose as an extension."""
    msg = _base(TransferMessage.REQUEST) | {
        "consumerPid": consumer_pid,
        "agreementId": agreement_id,
        "format": format,
        "callbackAddress": callback_address,
    }
    if purpose is not None:
        msg[PURPOSE_PROPERTY] = purpose
    return _finish(msg)


def transfer_start_message(
    *, provider_pid: str, consumer_pid: str, endpoint: str, token: str
) -> dict[str, Any]:
    """``TransferStartMessage`` whose ``dataAddress`` carries the endpoint and the pull token."""
    return _finish(
        _base(TransferMessage.START)
        | {
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "dataAddress": {
                "@type": "DataAddress",
                "endpointType": HTTP_ENDPOINT_TYPE,
                "endpoint": endpoint,
                "endpointProperties": [
                    {"@type": "EndpointProperty", "name": "authorization", "value": token},
                    {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
                ],
            },
        }
    )


def transfer_completion_message(*, provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    """``TransferCompletionMessage``."""
    return _finish(
        _base(TransferMessage.COMPLETION)
        | {"providerPid": provider_pid, "consumerPid": consumer_pid}
    )


def _coded(
    kind: TransferMessage,
    provider_pid: str,
    consumer_pid: str,
    code: str | None,
    reason: list[Any] | None,
) -> dict[str, Any]:
    msg = _base(kind) | {"providerPid": provider_pid, "consumerPid": consumer_pid}
    if code is not None:
        msg["code"] = code
    if reason:
        msg["reason"] = list(reason)
    return _finish(msg)


def transfer_termination_message(
    *,
    provider_pid: str,
    consumer_pid: str,
    code: str | None = None,
    reason: list[Any] | None = None,
) -> dict[str, Any]:
    """``TransferTerminationMessage`` with an optional code and reasons."""
    return _coded(TransferMessage.TERMINATION, provider_pid, consumer_pid, code, reason)


def transfer_suspension_message(
    *,
    provider_pid: str,
    consumer_pid: str,
    code: str | None = None,
    reason: list[Any] | None = None,
) -> dict[str, Any]:
    """``TransferSuspensionMessage`` with an optional code and reasons."""
    return _coded(TransferMessage.SUSPENSION, provider_pid, consumer_pid, code, reason)


def transfer_process(
    *, provider_pid: str, consumer_pid: str, state: TransferState
) -> dict[str, Any]:
    """The ``TransferProcess`` a side returns as ACK and for ``GET /transfers/{pid}``."""
    msg = _base("TransferProcess") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": state.value,
    }
    dsp.validate(msg, _PROCESS_SCHEMA)
    return msg


def parse_message(message: object, kind: TransferMessage) -> dict[str, Any]:
    """Check that ``message`` is a ``kind`` and validates against its DSP 2025-1 schema.

    Raises:
        ValidationError: not a JSON object, or another ``@type``.
        SchemaValidationError: it does not validate.
    """
    if not isinstance(message, Mapping):
        raise ValidationError("a DSP message is a JSON object")
    if message.get("@type") != kind.value:
        raise ValidationError(f"@type: expected {kind.value!r}, got {message.get('@type')!r}")
    body = dict(message)
    dsp.validate(body, _SCHEMAS[kind])
    return body


def _parse_process(ack: object, *, provider_pid: str, consumer_pid: str) -> TransferState:
    if not isinstance(ack, Mapping) or ack.get("@type") != "TransferProcess":
        raise ValidationError("ACK: expected a TransferProcess")
    dsp.validate(dict(ack), _PROCESS_SCHEMA)
    if ack["consumerPid"] != consumer_pid:
        raise ValidationError(f"ACK: consumerPid {ack['consumerPid']!r} is not {consumer_pid!r}")
    if provider_pid and ack["providerPid"] != provider_pid:
        raise ValidationError(f"ACK: providerPid {ack['providerPid']!r} is not {provider_pid!r}")
    return TransferState(ack["state"])


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferRecord:
    """One side's record of a transfer process (namespace ``transfer``, key: its own pid).

    ``callback_address`` is where the counter-party is reached (the consumer's callback on the
    provider side, the provider's URL on the consumer side). The provider keeps only
    ``token_hash``; the consumer keeps the token itself in :data:`TOKEN_NAMESPACE`.
    """

    role: Role
    provider_pid: str
    consumer_pid: str
    participant: str
    counterparty: str
    agreement_id: str
    dataset_id: str
    state: TransferState
    format: str
    callback_address: str
    created_at: str
    updated_at: str
    purpose: str | None = None
    reason: str | None = None
    decision_index: int | None = None
    token_hash: str | None = field(default=None, repr=False)
    token_expires_at: str | None = None
    token_used: bool = False
    endpoint: str | None = None
    rows: int | None = None
    path: str | None = None
    version: int = 0

    @property
    def pid(self) -> str:
        return self.provider_pid if self.role == "provider" else self.consumer_pid

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
            "participant": self.participant,
            "counterparty": self.counterparty,
            "agreementId": self.agreement_id,
            "datasetId": self.dataset_id,
            "state": self.state.value,
            "format": self.format,
            "callbackAddress": self.callback_address,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "purpose": self.purpose,
            "reason": self.reason,
            "decisionIndex": self.decision_index,
            "tokenHash": self.token_hash,
            "tokenExpiresAt": self.token_expires_at,
            "tokenUsed": self.token_used,
            "endpoint": self.endpoint,
            "rows": self.rows,
            "path": self.path,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], version: int) -> TransferRecord:
        role = doc["role"]
        if role not in ("provider", "consumer"):
            raise ValidationError(f"stored transfer has role {role!r}")
        return cls(
            role=role,
            provider_pid=str(doc["providerPid"]),
            consumer_pid=str(doc["consumerPid"]),
            participant=str(doc["participant"]),
            counterparty=str(doc["counterparty"]),
            agreement_id=str(doc["agreementId"]),
            dataset_id=str(doc["datasetId"]),
            state=TransferState(doc["state"]),
            format=str(doc["format"]),
            callback_address=str(doc["callbackAddress"]),
            created_at=str(doc["createdAt"]),
            updated_at=str(doc["updatedAt"]),
            purpose=doc.get("purpose"),
            reason=doc.get("reason"),
            decision_index=doc.get("decisionIndex"),
            token_hash=doc.get("tokenHash"),
            token_expires_at=doc.get("tokenExpiresAt"),
            token_used=bool(doc.get("tokenUsed", False)),
            endpoint=doc.get("endpoint"),
            rows=doc.get("rows"),
            path=doc.get("path"),
            version=version,
        )


def load_transfer(tx: Transaction, pid: str) -> TransferRecord:
    """This side's transfer record by its own process id (:class:`NotFoundError`)."""
    doc = tx.get(TRANSFER_NAMESPACE, pid)
    if doc is None:
        raise NotFoundError(f"no transfer process {pid!r}")
    return TransferRecord.from_json(doc.body, doc.version)


def list_transfers(tx: Transaction) -> list[TransferRecord]:
    """Every transfer record of this node (both roles), ordered by pid."""
    return [TransferRecord.from_json(d.body, d.version) for d in tx.scan(TRANSFER_NAMESPACE)]


def _stamp(now: datetime) -> str:
    return now.isoformat(timespec="seconds")


def _write(
    tx: Transaction,
    record: TransferRecord,
    *,
    before: TransferState | None,
    message: str,
    now: datetime,
) -> TransferRecord:
    """Store ``record`` (compare-and-set on its version) and log the transition."""
    record = replace(record, updated_at=_stamp(now))
    doc = tx.put(TRANSFER_NAMESPACE, record.pid, record.to_json(), expect_version=record.version)
    body: dict[str, Any] = {
        "role": record.role,
        "providerPid": record.provider_pid,
        "consumerPid": record.consumer_pid,
        "counterparty": record.counterparty,
        "agreementId": record.agreement_id,
        "datasetId": record.dataset_id,
        "message": message,
        "from": before.value if before else None,
        "to": record.state.value,
    }
    if record.reason and record.state is TransferState.TERMINATED:
        body["reason"] = record.reason
    if before is None and record.decision_index is not None:
        body["decisionIndex"] = record.decision_index
    record_event(tx, "transfer.transition", body, time=now)
    return replace(record, version=doc.version)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _odrl_part(agreement: Mapping[str, Any]) -> dict[str, Any]:
    """The ODRL members of a signed agreement (our validity and offer extensions removed)."""
    return {k: v for k, v in agreement.items() if not k.startswith(TS_NAMESPACE)}


def agreement_purpose(policy: Policy) -> str | None:
    """The one purpose ``policy`` permits, or ``None`` if it permits several or does not say.

    A permission without a ``purpose`` constraint permits any purpose, so no single one follows.
    """
    found: set[str] = set()
    for rule in policy.permissions:
        allowed: set[str] | None = None
        for c in rule.constraints:
            if c.left_operand != "purpose" or c.operator not in ("eq", "isAnyOf"):
                continue
            right = c.right_operand
            values = set(right) if isinstance(right, tuple) else {str(right)}
            allowed = values if allowed is None else allowed & values
        if allowed is None:
            return None
        found |= allowed
    return next(iter(found)) if len(found) == 1 else None


def _check_purpose(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_PURPOSE:
        raise ValidationError(
            f"{PURPOSE_PROPERTY}: expected a purpose of 1-{_MAX_PURPOSE} characters"
        )
    return value


# -- provider ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptedTransfer:
    """An allowed request: the new record, the ACK to return, and the token for the start message.

    The token exists only here, in memory, until the start message carries it to the consumer.
    """

    record: TransferRecord
    ack: dict[str, Any]
    token: str = field(repr=False)


def accept_request(
    runtime: NodeRuntime, message: object, sender: VerifiedRequest
) -> AcceptedTransfer:
    """Provider: decide a ``TransferRequestMessage`` from ``sender``; on allow, create the process.

    Checks, in order: the message (schema, ``HttpData-PULL``, callback = the sender's registered
    URL); the agreement exists here and was granted by this node to the sender; it is in force
    (``FINALIZED``, inside its validity window); its dataset exists, is not ``zone`` and has a
    source; a purpose is known; then the usage policy of the agreement, evaluated inside the
    transaction that also creates the record, meters the use and logs everything.

    Raises:
        ValidationError / SchemaValidationError: malformed request, zone dataset (400).
        NotFoundError: unknown agreement or one not granted to the sender, unknown dataset (404).
        RefusedError: the agreement is not in force, or the policy refused (403 with trace).
        NotReadyError: no data source is registered for the dataset.

    Every refusal after the message checks is a ``policy.decision`` ledger entry (the engine's
    own for a policy refusal, one with a trace built here otherwise, in the same shape), committed
    before the error is raised.
    """
    body = parse_message(message, TransferMessage.REQUEST)
    if body["format"] != PULL_FORMAT:
        raise ValidationError(f"format: only {PULL_FORMAT!r} is supported, not {body['format']!r}")
    if "dataAddress" in body:
        raise ValidationError(
            "dataAddress: a pull transfer takes none (the provider sends its own in the start "
            "message)"
        )
    claimed_purpose = _check_purpose(body[PURPOSE_PROPERTY]) if PURPOSE_PROPERTY in body else None
    consumer = sender.participant_id
    callback = str(body["callbackAddress"]).rstrip("/")
    registered = runtime.peer_url(consumer).rstrip("/")
    if callback != registered:
        raise ValidationError(
            f"callbackAddress: {callback!r} is not the sender's registered URL {registered!r}"
        )
    agreement_id = str(body["agreementId"])
    now = runtime.clock()

    outcome: AcceptedTransfer | Exception
    checks = Checks(
        DecisionSubject(
            assignee=consumer,
            query_kind="transfer",
            at=now,
            agreement=agreement_id,
            purpose=claimed_purpose,
            output="raw",
        )
    )
    with runtime.transaction() as tx:
        checked = _precheck(tx, agreement_id, runtime.id, consumer, now, checks)
        if isinstance(checked, tuple):
            signed, dataset = checked
            outcome = _decide(
                runtime, tx, signed, dataset, body, claimed_purpose, sender, now, checks
            )
        else:
            outcome = checked
    # A refusal is raised only now, after the transaction that logged it has committed.
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _precheck(
    tx: Transaction,
    agreement_id: str,
    provider: str,
    consumer: str,
    now: datetime,
    checks: Checks,
) -> tuple[SignedAgreement, Dataset] | Exception:
    """The agreement is the sender's and in force, its dataset may be transferred; else why not.

    An unknown agreement and one granted to someone else give the same answer (404).
    """
    try:
        signed: SignedAgreement | None = load_agreement(tx, agreement_id)
    except NotFoundError:
        signed = None
    mine = signed is not None and signed.assigner == provider and signed.assignee == consumer
    unknown = f"no agreement {agreement_id!r} between {provider} and the sender"
    found = f"agreement {agreement_id!r} was granted by {provider} to the sender"
    checks.check("agreement", agreement_id, None, mine, found if mine else unknown)
    if signed is None or not mine:
        checks.record(tx)
        return NotFoundError(unknown)
    state = load_negotiation(tx, signed.provider_pid).state
    checks.check(
        "state",
        "FINALIZED",
        state.value,
        state.value == "FINALIZED",
        f"the negotiation of agreement {agreement_id!r} is {state.value}",
    )
    window = [signed.valid_from.isoformat(), signed.valid_until.isoformat()]
    inside = signed.valid_from <= now < signed.valid_until
    checks.check(
        "dateTime",
        window,
        now.astimezone(UTC).isoformat(),
        inside,
        f"{now.astimezone(UTC).isoformat()} is {'inside' if inside else 'outside'} the "
        f"agreement's validity window [{window[0]}, {window[1]})",
    )
    if not agreement_authorises(signed, state, now):
        return checks.refusal(tx, participant=provider, target=signed.target)
    dataset = load_dataset(tx, signed.target).dataset
    transferable = dataset.tier is not Tier.ZONE
    tiers = [Tier.UNCONDITIONAL.value, Tier.CONDITIONAL.value]
    if not checks.check(
        "tier",
        tiers,
        dataset.tier.value,
        transferable,
        f"dataset {dataset.id!r} is tier {dataset.tier.value!r}"
        + (
            ""
            if transferable
            else ": computation only, it has no transfer (its rows only feed joint "
            "computations bound to an agreement)"
        ),
        rule="floor",
    ):
        reason, _ = checks.record(tx, target=dataset.id)
        return ValidationError(reason)
    if tx.get(SOURCE_NAMESPACE, dataset.id) is None:
        return NotReadyError(f"dataset {dataset.id!r} has no data source registered here")
    return signed, dataset


def _decide(
    runtime: NodeRuntime,
    tx: Transaction,
    signed: SignedAgreement,
    dataset: Dataset,
    body: Mapping[str, Any],
    claimed_purpose: str | None,
    sender: VerifiedRequest,
    now: datetime,
    checks: Checks,
) -> AcceptedTransfer | RefusedError:
    """Evaluate the agreement's policy (the decision goes to the ledger); on allow, create."""
    policy = from_odrl(_odrl_part(signed.agreement))
    purpose = claimed_purpose or agreement_purpose(policy)
    if purpose is None:
        raise ValidationError(
            f"agreement {signed.id!r} does not name exactly one purpose: declare yours in "
            f"{PURPOSE_PROPERTY}"
        )
    request = UsageRequest(
        assignee=sender.participant_id,
        purpose=purpose,
        query_kind="transfer",
        output="raw",
        at=now,
        roles=sender.roles,
        agreement_id=signed.id,
    )
    consent = runtime.consents.checker(tx) if runtime.consents is not None else None
    decision = evaluate(
        policy,
        request,
        tx=tx,
        consent=consent,
        now=now,
        tier=dataset.tier.value,
        max_grade=dataset.max_grade,
        prior=checks.steps,
    )
    if not decision.allowed:
        return Checks.refused(decision, participant=runtime.id)
    token = secrets.token_urlsafe(32)
    record = TransferRecord(
        role="provider",
        provider_pid=new_id(),
        consumer_pid=str(body["consumerPid"]),
        participant=runtime.id,
        counterparty=sender.participant_id,
        agreement_id=signed.id,
        dataset_id=dataset.id,
        state=TransferState.REQUESTED,
        format=PULL_FORMAT,
        callback_address=str(body["callbackAddress"]).rstrip("/"),
        created_at=_stamp(now),
        updated_at=_stamp(now),
        purpose=purpose,
        decision_index=decision.ledger_index,
        token_hash=_token_hash(token),
        token_expires_at=_stamp(now + TOKEN_LIFETIME),
    )
    record = _write(tx, record, before=None, message=TransferMessage.REQUEST.value, now=now)
    record_use(tx, signed.id, sender.participant_id, "transfer")
    ack = transfer_process(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
    )
    return AcceptedTransfer(record, ack, token)


# -- provider: the data pull ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    """A pull the token allowed: the record (token now spent), the dataset and its open source."""

    record: TransferRecord
    dataset: Dataset
    source: sources.Source


def _source_spec(tx: Transaction, dataset_id: str) -> sources.SourceSpec:
    doc = tx.get(SOURCE_NAMESPACE, dataset_id)
    if doc is None:
        raise NotReadyError(f"dataset {dataset_id!r} has no data source registered here")
    body = doc.body
    table = body.get("table")
    return sources.SourceSpec(
        str(body["kind"]), str(body["path"]), None if table is None else str(table)
    )


def open_pull(runtime: NodeRuntime, pid: str, token: str | None, *, target: str) -> Pull:
    """Provider: spend the pull token of transfer ``pid`` and open the dataset's source.

    Every failure of the token (unknown transfer, wrong, spent, expired, transfer not running)
    raises the same :class:`VerificationError`; its real reason goes to the ledger
    (``auth.refused``) with ``target``, the request path.
    """
    now = runtime.clock()
    try:
        with runtime.transaction() as tx:
            return _spend_token(tx, pid, token or "", now)
    except VerificationError as exc:
        with runtime.transaction() as tx:
            record_refusal(
                tx, exc, token=None, audience=runtime.id, method="GET", path=target, now=now
            )
        log.info("refused pull of transfer %s: %s", pid[:100], exc.reason)
        raise


def _spend_token(tx: Transaction, pid: str, token: str, now: datetime) -> Pull:
    doc = tx.get(TRANSFER_NAMESPACE, pid)
    record = TransferRecord.from_json(doc.body, doc.version) if doc is not None else None
    ours = record is not None and record.role == "provider"
    expected = record.token_hash if record is not None and ours and record.token_hash else None
    matches = hmac.compare_digest(_token_hash(token), expected or _NO_TOKEN_HASH)
    if record is None or not ours:
        raise VerificationError("transfer-unknown")
    if expected is None:
        raise VerificationError("pull-token-revoked")
    if not token or not matches:
        raise VerificationError("pull-token-mismatch")
    if record.token_used:
        raise VerificationError("pull-token-used")
    if record.token_expires_at is None or now >= datetime.fromisoformat(record.token_expires_at):
        raise VerificationError("pull-token-expired")
    if record.state not in (TransferState.REQUESTED, TransferState.STARTED):
        raise VerificationError(f"transfer-{record.state.value.lower()}")
    dataset = load_dataset(tx, record.dataset_id).dataset
    source = sources.open_source(_source_spec(tx, dataset.id))
    spent = replace(record, token_used=True, state=TransferState.STARTED)
    try:
        record = _write(tx, spent, before=record.state, message="pull", now=now)
    except ConflictError as exc:
        raise VerificationError("pull-token-race") from exc
    return Pull(record, dataset, source)


def _cell(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _encode_chunk(chunk: sources.Chunk, names: list[str], key: str, media_type: str) -> bytes:
    columns = [None if n == key else chunk.columns[n] for n in names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n") if media_type == MEDIA_CSV else None
    for i, entity in enumerate(chunk.keys):
        row = [entity if col is None else _cell(col[i]) for col in columns]
        if writer is not None:
            writer.writerow(["" if v is None else v for v in row])
        else:
            buffer.write(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False))
            buffer.write("\n")
    return buffer.getvalue().encode("utf-8")


def stream_rows(runtime: NodeRuntime, pull: Pull, media_type: str) -> Iterator[bytes]:
    """The dataset's declared columns, chunk by chunk, as CSV (with a header) or NDJSON.

    Only the table's declared fields are sent, in declared order, whatever else the source file
    holds. When the stream ends (or breaks) a ``transfer.served`` event records how many rows went
    out and whether the stream finished.
    """
    names = [f.name for f in pull.dataset.table.fields]
    key = pull.dataset.key_column
    others = [n for n in names if n != key]
    rows = 0
    complete = False
    try:
        if media_type == MEDIA_CSV:
            header = io.StringIO()
            csv.writer(header, lineterminator="\n").writerow(names)
            yield header.getvalue().encode("utf-8")
        for chunk in pull.source.chunks(key, others, numeric=False):
            yield _encode_chunk(chunk, names, key, media_type)
            rows += len(chunk)
        complete = True
    finally:
        _record_served(runtime, pull.record, rows, complete)


def _record_served(runtime: NodeRuntime, record: TransferRecord, rows: int, complete: bool) -> None:
    try:
        with runtime.transaction() as tx:
            record_event(
                tx,
                "transfer.served",
                {
                    "providerPid": record.provider_pid,
                    "consumerPid": record.consumer_pid,
                    "agreementId": record.agreement_id,
                    "datasetId": record.dataset_id,
                    "assignee": record.counterparty,
                    "rows": rows,
                    "complete": complete,
                },
                time=runtime.clock(),
            )
    except TrustedSpaceError:
        log.exception("could not record the end of transfer %s", record.provider_pid)


# -- provider: the start message (after the ACK) -------------------------------------------------


def _local_move(
    runtime: NodeRuntime,
    pid: str,
    to: TransferState,
    *,
    message: str,
    only_from: frozenset[TransferState],
    **changes: Any,
) -> TransferRecord | None:
    """Move this side's record to ``to`` if it is in ``only_from``; return it, or ``None``."""
    with runtime.transaction() as tx:
        record = load_transfer(tx, pid)
        if record.state not in only_from:
            return None
        if to in _TERMINAL or to is TransferState.SUSPENDED:
            changes.setdefault("token_hash", None)
            tx.delete(TOKEN_NAMESPACE, pid)
        return _write(
            tx,
            replace(record, state=to, **changes),
            before=record.state,
            message=message,
            now=runtime.clock(),
        )


_LIVE = frozenset({TransferState.REQUESTED, TransferState.STARTED, TransferState.SUSPENDED})


def send_start(runtime: NodeRuntime, provider_pid: str, token: str) -> None:
    """Provider, after the ACK: send ``TransferStartMessage`` with the data address and token.

    On the consumer's ACK the record moves to STARTED; if the message cannot be delivered the
    transfer is TERMINATED (so its token is dead). Runs in the background: it never raises.
    """
    try:
        with runtime.transaction(readonly=True) as tx:
            record = load_transfer(tx, provider_pid)
        message = transfer_start_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            endpoint=f"{runtime.url}/transfers/{record.provider_pid}/data",
            token=token,
        )
        ack = runtime.client.post_json(
            f"{record.callback_address}/transfers/{record.consumer_pid}/start",
            message,
            audience=record.counterparty,
        )
        state = _parse_process(
            ack, provider_pid=record.provider_pid, consumer_pid=record.consumer_pid
        )
        if state is not TransferState.STARTED:
            raise ValidationError(f"ACK: state {state.value}, expected STARTED")
        _local_move(
            runtime,
            provider_pid,
            TransferState.STARTED,
            message=TransferMessage.START.value,
            only_from=frozenset({TransferState.REQUESTED}),
        )
    except Exception as exc:
        log.warning("start message of transfer %s not delivered: %s", provider_pid, exc)
        try:
            _local_move(
                runtime,
                provider_pid,
                TransferState.TERMINATED,
                message=TransferMessage.START.value,
                only_from=_LIVE,
                reason=f"start message not delivered: {exc}",
            )
        except Exception:
            log.exception("could not terminate transfer %s", provider_pid)


# -- both sides: messages from the counter-party ------------------------------------------------


def _counterparty_record(tx: Transaction, pid: str, sender: str) -> TransferRecord:
    """The record ``pid`` if ``sender`` is its counter-party; unknown and foreign look the same."""
    doc = tx.get(TRANSFER_NAMESPACE, pid)
    record = TransferRecord.from_json(doc.body, doc.version) if doc is not None else None
    if record is None or record.counterparty != sender:
        raise NotFoundError(f"no transfer process {pid!r}")
    return record


def process_of(runtime: NodeRuntime, pid: str, sender: str) -> dict[str, Any]:
    """``GET /transfers/{pid}``: the ``TransferProcess``, for the counter-party only."""
    with runtime.transaction(readonly=True) as tx:
        record = _counterparty_record(tx, pid, sender)
    return transfer_process(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
    )


def _data_address(body: Mapping[str, Any]) -> tuple[str, str]:
    address = body.get("dataAddress")
    if not isinstance(address, Mapping):
        raise ValidationError(
            "dataAddress: a pull transfer starts with the provider's data address"
        )
    if address.get("endpointType") != HTTP_ENDPOINT_TYPE:
        raise ValidationError(f"dataAddress.endpointType: expected {HTTP_ENDPOINT_TYPE!r}")
    endpoint = address.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise ValidationError("dataAddress.endpoint: missing")
    props = {p["name"]: p["value"] for p in address.get("endpointProperties", [])}
    token = props.get("authorization")
    if not token or str(props.get("authType", "bearer")).lower() != "bearer":
        raise ValidationError("dataAddress.endpointProperties: expected a bearer authorization")
    return endpoint, str(token)


def _reason_text(body: Mapping[str, Any]) -> str | None:
    parts = [str(body["code"])] if "code" in body else []
    parts += [r if isinstance(r, str) else json.dumps(r) for r in body.get("reason", [])]
    return "; ".join(parts)[:1000] or None


def receive(
    runtime: NodeRuntime, pid: str, message: object, kind: TransferMessage, sender: str
) -> dict[str, Any]:
    """Either side: apply a start/completion/suspension/termination message from ``sender``.

    ``pid`` is the process id of the path (this side's). Returns the ``TransferProcess`` ACK.

    Raises:
        SchemaValidationError / ValidationError: malformed, or ids that contradict the path.
        NotFoundError: no such process with this sender.
        IllegalTransitionError: the message is not allowed in the current state.
    """
    body = parse_message(message, kind)
    address = _data_address(body) if kind is TransferMessage.START else None
    now = runtime.clock()
    with runtime.transaction() as tx:
        record = _counterparty_record(tx, pid, sender)
        provider_side = record.role == "provider"
        mine, theirs = (
            ("providerPid", "consumerPid") if provider_side else ("consumerPid", "providerPid")
        )
        if body[mine] != pid:
            raise ValidationError(f"{mine}: {body[mine]!r} is not the process {pid!r} of the path")
        other = record.consumer_pid if provider_side else record.provider_pid
        if other and body[theirs] != other:
            raise NotFoundError(f"no transfer process {pid!r}")
        after = next_state(record.state, kind, "consumer" if provider_side else "provider")
        changes: dict[str, Any] = {"state": after}
        if not other:
            changes["provider_pid"] = str(body["providerPid"])
        if address is not None:
            endpoint, token = address
            if not endpoint.startswith(record.callback_address + "/"):
                raise ValidationError(
                    f"dataAddress.endpoint: {endpoint!r} is not on the provider's registered "
                    f"URL {record.callback_address!r}"
                )
            changes["endpoint"] = endpoint
            tx.put(TOKEN_NAMESPACE, pid, {"token": token})
        if kind in (TransferMessage.TERMINATION, TransferMessage.SUSPENSION):
            changes["reason"] = _reason_text(body)
        if after in _TERMINAL or after is TransferState.SUSPENDED:
            changes["token_hash"] = None
            tx.delete(TOKEN_NAMESPACE, pid)
        record = _write(
            tx, replace(record, **changes), before=record.state, message=kind.value, now=now
        )
    return transfer_process(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
    )


# -- consumer driver -----------------------------------------------------------------------------


def request_transfer(
    runtime: NodeRuntime, agreement_id: str, *, purpose: str | None = None
) -> TransferRecord:
    """Consumer: ask the agreement's provider for its dataset's rows; return our record.

    The record is stored (REQUESTED) before the message leaves, because the provider's start
    message may arrive before its ACK does. A refusal terminates the record and is raised
    (:class:`~trusted_space.errors.RemoteError` carrying the provider's problem, with its trace).

    Raises:
        NotFoundError: this node holds no agreement ``agreement_id`` as its consumer.
        ValidationError: no purpose given and the agreement does not name exactly one.
        RemoteError / NotReadyError: the provider refused or could not be reached.
    """
    with runtime.transaction(readonly=True) as tx:
        signed = load_agreement(tx, agreement_id)
    if signed.assignee != runtime.id:
        raise NotFoundError(f"this node holds no agreement {agreement_id!r} as its consumer")
    if purpose is None:
        purpose = agreement_purpose(from_odrl(_odrl_part(signed.agreement)))
        if purpose is None:
            raise ValidationError(
                f"agreement {agreement_id!r} does not name exactly one purpose: give one"
            )
    purpose = _check_purpose(purpose)
    provider = signed.assigner
    provider_url = runtime.peer_url(provider).rstrip("/")
    consumer_pid = new_id()
    message = transfer_request_message(
        consumer_pid=consumer_pid,
        agreement_id=agreement_id,
        callback_address=runtime.url,
        purpose=purpose,
    )
    now = runtime.clock()
    record = TransferRecord(
        role="consumer",
        provider_pid="",
        consumer_pid=consumer_pid,
        participant=runtime.id,
        counterparty=provider,
        agreement_id=agreement_id,
        dataset_id=signed.target,
        state=TransferState.REQUESTED,
        format=PULL_FORMAT,
        callback_address=provider_url,
        created_at=_stamp(now),
        updated_at=_stamp(now),
        purpose=purpose,
    )
    with runtime.transaction() as tx:
        _write(tx, record, before=None, message=TransferMessage.REQUEST.value, now=now)
    try:
        ack = runtime.client.post_json(
            f"{provider_url}/transfers/request", message, audience=provider
        )
        _parse_process(ack, provider_pid="", consumer_pid=consumer_pid)
    except TrustedSpaceError as exc:
        _local_move(
            runtime,
            consumer_pid,
            TransferState.TERMINATED,
            message="TransferRequestRefused",
            only_from=_LIVE,
            reason=f"request refused: {exc}",
        )
        raise
    provider_pid = str(ack["providerPid"])
    with runtime.transaction() as tx:
        current = load_transfer(tx, consumer_pid)
        if not current.provider_pid:
            current = _write(
                tx,
                replace(current, provider_pid=provider_pid),
                before=current.state,
                message="TransferProcess",
                now=runtime.clock(),
            )
        elif current.provider_pid != provider_pid:
            raise ValidationError(
                f"ACK: providerPid {provider_pid!r} is not {current.provider_pid!r}"
            )
    return current


def wait_started(
    runtime: NodeRuntime, consumer_pid: str, *, timeout: float = 30.0, interval: float = 0.05
) -> TransferRecord:
    """Consumer: wait until the provider's start message has arrived; return the record.

    Raises:
        ConflictError: the transfer is suspended or ended (completed or terminated).
        NotReadyError: not started within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        with runtime.transaction(readonly=True) as tx:
            record = load_transfer(tx, consumer_pid)
        if record.state is TransferState.STARTED:
            return record
        if record.state is not TransferState.REQUESTED:
            detail = f": {record.reason}" if record.reason else ""
            raise ConflictError(f"transfer {consumer_pid!r} is {record.state.value}{detail}")
        if time.monotonic() >= deadline:
            raise NotReadyError(
                f"transfer {consumer_pid!r} not started after {timeout:g} s "
                f"(state {record.state.value})"
            )
        time.sleep(interval)


def _count_rows(path: Path, media_type: str) -> int:
    with path.open(encoding="utf-8", newline="") as f:
        if media_type == MEDIA_CSV:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)
        return sum(1 for line in f if line.strip())


def pull(
    runtime: NodeRuntime,
    consumer_pid: str,
    out_path: str | Path,
    *,
    format: Literal["csv", "ndjson"] = "csv",
) -> TransferRecord:
    """Consumer: stream the rows of a started transfer to ``out_path``, then complete it.

    The rows go to a temporary file beside ``out_path``, renamed into place once complete, so a
    broken pull never leaves a half-written file under the final name; an existing file is never
    overwritten. The token is forgotten once presented (the provider spends it on first use).

    Returns:
        The record, COMPLETED, with ``rows`` and ``path``.

    Raises:
        ConflictError: the transfer is not STARTED, or ``out_path`` exists.
        RemoteError / NotReadyError: the provider refused the pull or the completion, or is down.
    """
    out = Path(out_path)
    if format not in ("csv", "ndjson"):
        raise ValidationError(f"format: {format!r} is not csv or ndjson")
    media_type = MEDIA_CSV if format == "csv" else MEDIA_NDJSON
    with runtime.transaction(readonly=True) as tx:
        record = load_transfer(tx, consumer_pid)
        token_doc = tx.get(TOKEN_NAMESPACE, consumer_pid)
    if record.role != "consumer":
        raise ValidationError(f"transfer {consumer_pid!r}: only the consumer side pulls")
    if record.state is not TransferState.STARTED or token_doc is None or not record.endpoint:
        raise ConflictError(
            f"transfer {consumer_pid!r} is {record.state.value} with no data address to pull"
        )
    if out.exists():
        raise ConflictError(f"{out} exists: a pull never overwrites a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    presented = False
    try:
        with os.fdopen(fd, "wb") as f:
            headers = {"Authorization": f"Bearer {token_doc.body['token']}", "Accept": media_type}
            presented = True
            with runtime.client.stream(
                record.endpoint, audience=record.counterparty, headers=headers
            ) as response:
                for block in response.iter_bytes():
                    f.write(block)
            f.flush()
            os.fsync(f.fileno())
        rows = _count_rows(tmp, media_type)
        if out.exists():
            raise ConflictError(f"{out} exists: a pull never overwrites a file")
        os.replace(tmp, out)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if presented and not isinstance(exc, NotReadyError):
            with runtime.transaction() as tx:
                tx.delete(TOKEN_NAMESPACE, consumer_pid)
        raise
    with runtime.transaction() as tx:
        tx.delete(TOKEN_NAMESPACE, consumer_pid)
        current = load_transfer(tx, consumer_pid)
        current = _write(
            tx,
            replace(current, rows=rows, path=str(out)),
            before=current.state,
            message="pull",
            now=runtime.clock(),
        )
    return _complete(runtime, current)


def _complete(runtime: NodeRuntime, record: TransferRecord) -> TransferRecord:
    next_state(record.state, TransferMessage.COMPLETION, record.role)
    message = transfer_completion_message(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid
    )
    ack = runtime.client.post_json(
        f"{record.callback_address}/transfers/{record.provider_pid}/completion",
        message,
        audience=record.counterparty,
    )
    state = _parse_process(ack, provider_pid=record.provider_pid, consumer_pid=record.consumer_pid)
    if state is not TransferState.COMPLETED:
        raise ValidationError(f"ACK: state {state.value}, expected COMPLETED")
    moved = _local_move(
        runtime,
        record.pid,
        TransferState.COMPLETED,
        message=TransferMessage.COMPLETION.value,
        only_from=frozenset({TransferState.STARTED}),
    )
    if moved is None:
        with runtime.transaction(readonly=True) as tx:
            return load_transfer(tx, record.pid)
    return moved
