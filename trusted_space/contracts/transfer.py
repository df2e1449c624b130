"""The DSP 2025-1 transfer process (``HttpData-PULL``): states, messages, records, decisions.

The sibling of :mod:`trusted_space.contracts.negotiation` (as EDC keeps ``dsp-negotiation`` and
``dsp-transfer-process`` side by side): everything of the transfer process that is protocol, not
HTTP. The node's :mod:`connectors.node.transfer` carries these messages over signed HTTP, streams
the rows and holds the consumer's driver; this module decides and records.

Datasets of tier ``unconditional`` and ``conditional`` may leave their owner as rows, under an
agreement; ``zone`` datasets never do (they only feed joint computations).

1. The consumer sends ``TransferRequestMessage`` (agreement, its ``consumerPid``, its callback
   address). The provider checks the agreement, the dataset's tier and its usage policy
   (:func:`accept_request`), and answers ``TransferProcess`` (``REQUESTED``).
2. The provider sends ``TransferStartMessage`` to the consumer with a ``dataAddress``: its data
   endpoint and a bearer **pull token**.
3. The consumer fetches the rows with that token (:func:`spend_token` at the provider), then sends
   ``TransferCompletionMessage``. Either side may suspend or terminate (:func:`receive`).

Threats and what stops them here:

- *Someone else's agreement.* The assignee is the participant that signed the request (never a
  body claim); an agreement of another consumer and an unknown one answer the same ``404``.
- *A contract that no longer holds.* Only an agreement whose negotiation is ``FINALIZED`` and
  whose validity window contains "now" authorises a transfer
  (:func:`trusted_space.contracts.agreement_authorises`).
- *Raw rows of computation-only data.* A ``zone`` dataset is refused before any policy is read,
  and the policy engine re-applies the grade floor on every request anyway.
- *A use nobody can account for.* Every decision, allow or deny, is on the provider's ledger
  (:func:`trusted_space.policy.evaluate`, or :meth:`trusted_space.policy.Checks.record` for a
  refusal before the policy, in the transaction that creates the transfer), the use is metered,
  and each state change of each side is a ``transfer.transition`` event (:func:`write_transfer`,
  its one writer; ``transfer.served`` has :func:`record_served`).
- *A stolen or replayed pull token.* 256 random bits (:func:`secrets.token_urlsafe`); the
  provider stores only its SHA-256 and compares digests in constant time; it expires after
  :data:`TOKEN_LIFETIME`, serves one pull only, and dies with the transfer (completion,
  suspension, termination). Every failure raises the same :class:`VerificationError` (the node
  answers ``401`` and ledgers the real reason as ``auth.refused``).
- *Sending the token elsewhere (SSRF).* The provider accepts as ``callbackAddress`` only the
  requester's registered URL, and the consumer accepts a data address only on its provider's
  registered URL.
- *Malformed messages.* Every message built here and every message accepted validates against
  its vendored DSP 2025-1 schema (:mod:`trusted_space.dsp`).

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

Its names (``TRANSITIONS``, ``next_state``, ``parse_message``) mirror negotiation's, so they are
imported from this module, not from :mod:`trusted_space.contracts`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Literal

from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, Dataset, Tier, load_dataset
from trusted_space.consent import ConsentRegistry
from trusted_space.contracts.agreements import (
    SignedAgreement,
    agreement_authorises,
    load_agreement,
)
from trusted_space.contracts.negotiation import load_negotiation
from trusted_space.contracts.standing import agreement_standing
from trusted_space.contracts.states import OFFER_PROPERTY, new_id
from trusted_space.errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    NotReadyError,
    RefusedError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import record_event
from trusted_space.identity import VerifiedRequest
from trusted_space.metering import record_use
from trusted_space.policy import (
    Checks,
    ConsentChecker,
    DecisionSubject,
    Policy,
    UsageRequest,
    evaluate,
    from_odrl,
)
from trusted_space.store import Store, Transaction

__all__ = [
    "HTTP_ENDPOINT_TYPE",
    "LIVE_STATES",
    "PULL_FORMAT",
    "PURPOSE_PROPERTY",
    "TERMINAL_STATES",
    "TOKEN_LIFETIME",
    "TOKEN_NAMESPACE",
    "TRANSFER_NAMESPACE",
    "TRANSITIONS",
    "AcceptedTransfer",
    "TransferMessage",
    "TransferRecord",
    "TransferRole",
    "TransferState",
    "accept_request",
    "acknowledge_request",
    "agreement_purpose",
    "check_purpose",
    "list_transfers",
    "load_transfer",
    "move_transfer",
    "next_state",
    "parse_message",
    "parse_process",
    "prepare_request",
    "process_of",
    "receive",
    "record_pulled",
    "record_served",
    "spend_token",
    "stamp",
    "transfer_completion_message",
    "transfer_process",
    "transfer_request_message",
    "transfer_start_message",
    "transfer_suspension_message",
    "transfer_termination_message",
    "write_transfer",
]

PULL_FORMAT: Final = "HttpData-PULL"
HTTP_ENDPOINT_TYPE: Final = "https://w3id.org/idsa/v4.1/HTTP"
PURPOSE_PROPERTY: Final = TS_NAMESPACE + "purpose"
"""Extension property of ``TransferRequestMessage``: the purpose the consumer declares."""
TRANSFER_NAMESPACE: Final = "transfer"
TOKEN_NAMESPACE: Final = "transfer.token"  # noqa: S105 - a store namespace, not a secret
"""Consumer side only: the pull token received in the start message, apart from the record."""
TOKEN_LIFETIME: Final = timedelta(minutes=5)
_MAX_PURPOSE = 128
_NO_TOKEN_HASH = hashlib.sha256(b"").hexdigest()

TransferRole = Literal["provider", "consumer"]


class TransferState(StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    SUSPENDED = "SUSPENDED"
    COMPLETED = "COMPLETED"
    TERMINATED = "TERMINATED"


TERMINAL_STATES: Final = frozenset({TransferState.COMPLETED, TransferState.TERMINATED})
LIVE_STATES: Final = frozenset(
    {TransferState.REQUESTED, TransferState.STARTED, TransferState.SUSPENDED}
)


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
    **{(s, _M.TERMINATION): _S.TERMINATED for s in _S if s not in TERMINAL_STATES},
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


def parse_process(ack: object, *, provider_pid: str, consumer_pid: str) -> TransferState:
    """The state in a counter-party's ``TransferProcess`` ACK, checked against our pids."""
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

    role: TransferRole
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


def stamp(now: datetime) -> str:
    """A record timestamp (ISO 8601, seconds)."""
    return now.isoformat(timespec="seconds")


def write_transfer(
    tx: Transaction,
    record: TransferRecord,
    *,
    before: TransferState | None,
    message: str,
    now: datetime,
) -> TransferRecord:
    """Store ``record`` (compare-and-set on its version) and log the transition.

    The one writer of ``transfer.transition``.
    """
    record = replace(record, updated_at=stamp(now))
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


def check_purpose(value: object) -> str:
    """A declared purpose: 1-128 characters, not blank (``ValidationError``)."""
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
    store: Store,
    message: object,
    sender: VerifiedRequest,
    *,
    provider: str,
    peer_url: Callable[[str], str],
    has_source: Callable[[Transaction, str], bool],
    consents: ConsentRegistry | None,
    now: datetime,
) -> AcceptedTransfer:
    """Provider: decide a ``TransferRequestMessage`` from ``sender``; on allow, create the process.

    Args:
        store: the provider's store.
        message: the request as received.
        sender: the verified signer of the request (the consumer).
        provider: this node's participant id.
        peer_url: a member's registered URL (the only ``callbackAddress`` accepted).
        has_source: whether a data source is registered here for a dataset.
        consents: the consent registry, for policies that require consent.
        now: the decision instant (the node's clock).

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
    claimed_purpose = check_purpose(body[PURPOSE_PROPERTY]) if PURPOSE_PROPERTY in body else None
    consumer = sender.participant_id
    callback = str(body["callbackAddress"]).rstrip("/")
    registered = peer_url(consumer).rstrip("/")
    if callback != registered:
        raise ValidationError(
            f"callbackAddress: {callback!r} is not the sender's registered URL {registered!r}"
        )
    agreement_id = str(body["agreementId"])

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
    with store.transaction() as tx:
        checked = _precheck(tx, agreement_id, provider, consumer, now, checks, has_source)
        if isinstance(checked, tuple):
            signed, dataset = checked
            consent = consents.checker(tx) if consents is not None else None
            outcome = _decide(
                tx, provider, signed, dataset, body, claimed_purpose, sender, now, checks, consent
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
    has_source: Callable[[Transaction, str], bool],
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
    standing = agreement_standing(tx, signed.id).standing
    checks.check(
        "standing",
        "active",
        standing,
        standing == "active",
        f"agreement {agreement_id!r} is {standing}"
        + ("" if standing == "active" else " by its provider: no use is allowed"),
    )
    if not agreement_authorises(signed, state, now) or standing != "active":
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
    if not has_source(tx, dataset.id):
        return NotReadyError(f"dataset {dataset.id!r} has no data source registered here")
    return signed, dataset


def _offer_id(signed: SignedAgreement) -> str | None:
    offer = signed.agreement.get(OFFER_PROPERTY)
    return offer if isinstance(offer, str) and offer else None


def _decide(
    tx: Transaction,
    provider: str,
    signed: SignedAgreement,
    dataset: Dataset,
    body: Mapping[str, Any],
    claimed_purpose: str | None,
    sender: VerifiedRequest,
    now: datetime,
    checks: Checks,
    consent: ConsentChecker | None,
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
        offer_id=_offer_id(signed),
    )
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
        return Checks.refused(decision, participant=provider)
    token = secrets.token_urlsafe(32)
    record = TransferRecord(
        role="provider",
        provider_pid=new_id(),
        consumer_pid=str(body["consumerPid"]),
        participant=provider,
        counterparty=sender.participant_id,
        agreement_id=signed.id,
        dataset_id=dataset.id,
        state=TransferState.REQUESTED,
        format=PULL_FORMAT,
        callback_address=str(body["callbackAddress"]).rstrip("/"),
        created_at=stamp(now),
        updated_at=stamp(now),
        purpose=purpose,
        decision_index=decision.ledger_index,
        token_hash=_token_hash(token),
        token_expires_at=stamp(now + TOKEN_LIFETIME),
    )
    record = write_transfer(tx, record, before=None, message=TransferMessage.REQUEST.value, now=now)
    record_use(tx, signed.id, sender.participant_id, "transfer")
    ack = transfer_process(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
    )
    return AcceptedTransfer(record, ack, token)


# -- provider: the pull token --------------------------------------------------------------------


def spend_token(tx: Transaction, pid: str, token: str, now: datetime) -> TransferRecord:
    """Provider: check the pull token of transfer ``pid`` and spend it; return the record.

    The record moves to STARTED with the token used, within ``tx`` (so a caller that fails to
    open the data afterwards rolls the spending back).

    Raises:
        VerificationError: unknown transfer, wrong, spent, revoked or expired token, transfer not
            running, or a concurrent pull won; ``reason`` says which (for the ledger only).
    """
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
    spent = replace(record, token_used=True, state=TransferState.STARTED)
    try:
        return write_transfer(tx, spent, before=record.state, message="pull", now=now)
    except ConflictError as exc:
        raise VerificationError("pull-token-race") from exc


def record_served(
    tx: Transaction, record: TransferRecord, rows: int, complete: bool, now: datetime
) -> int:
    """Provider: the ``transfer.served`` entry (its one writer) — rows sent, stream finished."""
    return record_event(
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
        time=now,
    )


# -- both sides: local moves and messages from the counter-party ---------------------------------


def move_transfer(
    store: Store,
    pid: str,
    to: TransferState,
    *,
    message: str,
    only_from: frozenset[TransferState],
    now: datetime,
    **changes: Any,
) -> TransferRecord | None:
    """Move this side's record to ``to`` if it is in ``only_from``; return it, or ``None``.

    Suspending or ending a transfer kills its token on both sides.
    """
    with store.transaction() as tx:
        record = load_transfer(tx, pid)
        if record.state not in only_from:
            return None
        if to in TERMINAL_STATES or to is TransferState.SUSPENDED:
            changes.setdefault("token_hash", None)
            tx.delete(TOKEN_NAMESPACE, pid)
        return write_transfer(
            tx, replace(record, state=to, **changes), before=record.state, message=message, now=now
        )


def _counterparty_record(tx: Transaction, pid: str, sender: str) -> TransferRecord:
    """The record ``pid`` if ``sender`` is its counter-party; unknown and foreign look the same."""
    doc = tx.get(TRANSFER_NAMESPACE, pid)
    record = TransferRecord.from_json(doc.body, doc.version) if doc is not None else None
    if record is None or record.counterparty != sender:
        raise NotFoundError(f"no transfer process {pid!r}")
    return record


def process_of(store: Store, pid: str, sender: str) -> dict[str, Any]:
    """The ``TransferProcess`` of this side's ``pid``, for its counter-party only."""
    with store.transaction(readonly=True) as tx:
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
    store: Store,
    pid: str,
    message: object,
    kind: TransferMessage,
    sender: str,
    *,
    now: datetime,
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
    with store.transaction() as tx:
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
        if after in TERMINAL_STATES or after is TransferState.SUSPENDED:
            changes["token_hash"] = None
            tx.delete(TOKEN_NAMESPACE, pid)
        record = write_transfer(
            tx, replace(record, **changes), before=record.state, message=kind.value, now=now
        )
    return transfer_process(
        provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, state=record.state
    )


# -- consumer ------------------------------------------------------------------------------------


def prepare_request(
    store: Store,
    agreement_id: str,
    *,
    consumer: str,
    callback_address: str,
    peer_url: Callable[[str], str],
    purpose: str | None,
    now: datetime,
) -> tuple[TransferRecord, dict[str, Any]]:
    """Consumer: store a REQUESTED record for ``agreement_id`` and build its request message.

    The record is stored before the message leaves, because the provider's start message may
    arrive before its ACK does.

    Raises:
        NotFoundError: this node holds no agreement ``agreement_id`` as its consumer.
        ValidationError: no purpose given and the agreement does not name exactly one.
    """
    with store.transaction(readonly=True) as tx:
        signed = load_agreement(tx, agreement_id)
    if signed.assignee != consumer:
        raise NotFoundError(f"this node holds no agreement {agreement_id!r} as its consumer")
    if purpose is None:
        purpose = agreement_purpose(from_odrl(_odrl_part(signed.agreement)))
        if purpose is None:
            raise ValidationError(
                f"agreement {agreement_id!r} does not name exactly one purpose: give one"
            )
    purpose = check_purpose(purpose)
    provider = signed.assigner
    provider_url = peer_url(provider).rstrip("/")
    consumer_pid = new_id()
    message = transfer_request_message(
        consumer_pid=consumer_pid,
        agreement_id=agreement_id,
        callback_address=callback_address,
        purpose=purpose,
    )
    record = TransferRecord(
        role="consumer",
        provider_pid="",
        consumer_pid=consumer_pid,
        participant=consumer,
        counterparty=provider,
        agreement_id=agreement_id,
        dataset_id=signed.target,
        state=TransferState.REQUESTED,
        format=PULL_FORMAT,
        callback_address=provider_url,
        created_at=stamp(now),
        updated_at=stamp(now),
        purpose=purpose,
    )
    with store.transaction() as tx:
        record = write_transfer(
            tx, record, before=None, message=TransferMessage.REQUEST.value, now=now
        )
    return record, message


def acknowledge_request(
    store: Store, consumer_pid: str, ack: object, *, now: datetime
) -> TransferRecord:
    """Consumer: apply the provider's ``TransferProcess`` ACK of our request (its ``providerPid``).

    Raises:
        ValidationError / SchemaValidationError: not a valid ACK of this request.
    """
    parse_process(ack, provider_pid="", consumer_pid=consumer_pid)
    if not isinstance(ack, Mapping):  # pragma: no cover - parse_process checked it
        raise ValidationError("ACK: expected a TransferProcess")
    provider_pid = str(ack["providerPid"])
    with store.transaction() as tx:
        current = load_transfer(tx, consumer_pid)
        if not current.provider_pid:
            current = write_transfer(
                tx,
                replace(current, provider_pid=provider_pid),
                before=current.state,
                message="TransferProcess",
                now=now,
            )
        elif current.provider_pid != provider_pid:
            raise ValidationError(
                f"ACK: providerPid {provider_pid!r} is not {current.provider_pid!r}"
            )
    return current


def record_pulled(
    store: Store, consumer_pid: str, *, rows: int, path: str, now: datetime
) -> TransferRecord:
    """Consumer: the rows are on disk — forget the token, note rows and path; return the record."""
    with store.transaction() as tx:
        tx.delete(TOKEN_NAMESPACE, consumer_pid)
        current = load_transfer(tx, consumer_pid)
        return write_transfer(
            tx,
            replace(current, rows=rows, path=path),
            before=current.state,
            message="pull",
            now=now,
        )
