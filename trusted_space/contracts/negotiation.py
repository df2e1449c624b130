"""Negotiation records and the :class:`Negotiator` that moves them, plus the in-process driver.

Each side keeps its own record; a move is a compare-and-set on the record's version, written to
the ledger (``negotiation.transition``) in the same transaction. :func:`deliver` and
:func:`run_negotiation` run two negotiators in one process (tests, demos); the connector carries
the same messages over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from trusted_space import dsp
from trusted_space.catalog import check_participant_id
from trusted_space.contracts.agreements import (
    AgreementSignature,
    SignedAgreement,
    agreement_authorises,
    build_agreement,
    load_agreement,
    sign_agreement,
    store_agreement,
    verify_agreement_signature,
)
from trusted_space.contracts.messages import (
    ParsedMessage,
    agreement_verification_message,
    contract_agreement_message,
    contract_offer_message,
    contract_request_message,
    negotiation_ack,
    negotiation_event_message,
    parse_message,
    termination_message,
)
from trusted_space.contracts.states import (
    NEGOTIATION_NAMESPACE,
    OFFER_PROPERTY,
    RULE_KINDS,
    SIGNATURE_PROPERTY,
    VALID_FROM_PROPERTY,
    VALID_UNTIL_PROPERTY,
    MessageKind,
    NegotiationState,
    Role,
    check_message_offer,
    new_id,
    next_state,
    parse_xsd_datetime,
    utc_now,
)
from trusted_space.errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import record_event
from trusted_space.keys import SigningKey, VerifyKey
from trusted_space.store import Store, Transaction

__all__ = [
    "Negotiation",
    "Negotiator",
    "Outgoing",
    "deliver",
    "load_negotiation",
    "run_negotiation",
]


@dataclass(frozen=True)
class Negotiation:
    """One side's record of a negotiation (stored under its own process id ``pid``)."""

    role: Role
    provider_pid: str
    consumer_pid: str
    participant: str
    counterparty: str
    state: NegotiationState
    offer: dict[str, Any]
    callback_address: str | None = None
    agreement: dict[str, Any] | None = None
    provider_signature: AgreementSignature | None = None
    consumer_signature: AgreementSignature | None = None
    version: int = 0

    @property
    def pid(self) -> str:
        return self.provider_pid if self.role is Role.PROVIDER else self.consumer_pid

    @property
    def dataset_id(self) -> str:
        return str(self.offer["target"])

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "providerPid": self.provider_pid,
            "consumerPid": self.consumer_pid,
            "participant": self.participant,
            "counterparty": self.counterparty,
            "state": self.state.value,
            "offer": self.offer,
            "callbackAddress": self.callback_address,
            "agreement": self.agreement,
            "providerSignature": (
                self.provider_signature.to_json() if self.provider_signature else None
            ),
            "consumerSignature": (
                self.consumer_signature.to_json() if self.consumer_signature else None
            ),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], version: int) -> Negotiation:
        ps, cs = doc.get("providerSignature"), doc.get("consumerSignature")
        return cls(
            role=Role(doc["role"]),
            provider_pid=str(doc["providerPid"]),
            consumer_pid=str(doc["consumerPid"]),
            participant=str(doc["participant"]),
            counterparty=str(doc["counterparty"]),
            state=NegotiationState(doc["state"]),
            offer=dict(doc["offer"]),
            callback_address=doc.get("callbackAddress"),
            agreement=dict(doc["agreement"]) if doc.get("agreement") else None,
            provider_signature=AgreementSignature.from_json(ps) if ps else None,
            consumer_signature=AgreementSignature.from_json(cs) if cs else None,
            version=version,
        )

    def signed_agreement(self) -> SignedAgreement | None:
        if self.agreement and self.provider_signature and self.consumer_signature:
            return SignedAgreement(
                self.agreement,
                self.provider_signature,
                self.consumer_signature,
                self.provider_pid,
                self.consumer_pid,
            )
        return None


def load_negotiation(tx: Transaction, pid: str) -> Negotiation:
    """This side's negotiation record by its own process id (:class:`NotFoundError`)."""
    doc = tx.require(NEGOTIATION_NAMESPACE, pid)
    return Negotiation.from_json(doc.body, doc.version)


def _write(
    tx: Transaction,
    before: NegotiationState | None,
    record: Negotiation,
    kind: MessageKind,
    expect_version: int,
) -> Negotiation:
    doc = tx.put(NEGOTIATION_NAMESPACE, record.pid, record.to_json(), expect_version=expect_version)
    record_event(
        tx,
        "negotiation.transition",
        {
            "role": record.role.value,
            "providerPid": record.provider_pid,
            "consumerPid": record.consumer_pid,
            "counterparty": record.counterparty,
            "message": kind.value,
            "from": before.value if before else None,
            "to": record.state.value,
        },
    )
    if before is not NegotiationState.VERIFIED and record.state is NegotiationState.VERIFIED:
        signed = record.signed_agreement()
        if signed is None:  # pragma: no cover - guarded by the message handlers
            raise ConflictError("VERIFIED without both agreement signatures")
        store_agreement(tx, signed)
    return replace(record, version=doc.version)


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send, and the transition this side makes once it is acknowledged."""

    message: dict[str, Any]
    kind: MessageKind
    recipient: str
    before: NegotiationState | None
    pending: Negotiation
    expect_version: int


class Negotiator:
    """One participant's side of every negotiation it takes part in, as provider or consumer.

    Args:
        participant_id: this participant's slug.
        store: this participant's store (negotiations, agreements, ledger events).
        signing_key: this participant's Ed25519 key (signs agreements).
        resolve_key: participant id → its verify key (from membership credentials); raises
            :class:`NotFoundError` for unknown participants.
        callback_address: where counter-parties send messages for this participant.
        offer_check: called on every offer received as provider in a new negotiation; raises to
            refuse an offer this provider never made (the connector plugs in the catalog).
        clock: the current time (tests inject one).
        agreement_validity: default validity window of agreements this provider signs.
    """

    def __init__(
        self,
        participant_id: str,
        store: Store,
        signing_key: SigningKey,
        resolve_key: Callable[[str], VerifyKey],
        *,
        callback_address: str,
        offer_check: Callable[[Mapping[str, Any]], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
        agreement_validity: timedelta = timedelta(days=365),
    ) -> None:
        self.participant_id = check_participant_id(participant_id)
        self.store = store
        self._key = signing_key
        self._resolve_key = resolve_key
        self.callback_address = callback_address
        self._offer_check = offer_check
        self._clock = clock
        self._validity = agreement_validity

    # -- queries ------------------------------------------------------------------------------
    def negotiation(self, pid: str) -> Negotiation:
        with self.store.transaction() as tx:
            return load_negotiation(tx, pid)

    def agreement(self, agreement_id: str) -> SignedAgreement:
        with self.store.transaction() as tx:
            return load_agreement(tx, agreement_id)

    def authorises(self, agreement_id: str, at: datetime | None = None) -> bool:
        """Whether the agreement ``agreement_id`` authorises use now (or at ``at``)."""
        with self.store.transaction() as tx:
            signed = load_agreement(tx, agreement_id)
            pid = (
                signed.provider_pid
                if signed.assigner == self.participant_id
                else signed.consumer_pid
            )
            state = load_negotiation(tx, pid).state
        return agreement_authorises(signed, state, at or self._clock())

    # -- actions (prepare a message; the transition happens on acknowledge) -------------------
    def _prepare(self, pid: str, kind: MessageKind, role: Role) -> Negotiation:
        record = self.negotiation(pid)
        if record.role is not role:
            raise IllegalTransitionError(
                f"{kind.value}: this participant is the {record.role.value} in negotiation "
                f"{pid!r}, not the {role.value}"
            )
        next_state(record.state, kind, role)
        return record

    def _outgoing(
        self, record: Negotiation, kind: MessageKind, message: dict[str, Any], **changes: Any
    ) -> Outgoing:
        after = next_state(record.state, kind, record.role)
        return Outgoing(
            message=message,
            kind=kind,
            recipient=record.counterparty,
            before=record.state,
            pending=replace(record, state=after, **changes),
            expect_version=record.version,
        )

    def request(self, provider_id: str, offer: Mapping[str, Any]) -> Outgoing:
        """Consumer: start a negotiation for ``offer`` (which names its dataset in ``target``)."""
        check_participant_id(provider_id, "provider")
        if provider_id == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = check_message_offer(offer)
        consumer_pid = new_id()
        msg = contract_request_message(
            consumer_pid=consumer_pid, offer=offer, callback_address=self.callback_address
        )
        pending = Negotiation(
            Role.CONSUMER, "", consumer_pid, self.participant_id, provider_id,
            next_state(None, MessageKind.REQUEST, Role.CONSUMER), offer,
        )  # fmt: skip
        return Outgoing(msg, MessageKind.REQUEST, provider_id, None, pending, 0)

    def offer(self, consumer_id: str, offer: Mapping[str, Any]) -> Outgoing:
        """Provider: start a negotiation by offering ``offer`` to ``consumer_id``."""
        check_participant_id(consumer_id, "consumer")
        if consumer_id == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = check_message_offer(offer)
        provider_pid = new_id()
        msg = contract_offer_message(
            provider_pid=provider_pid, offer=offer, callback_address=self.callback_address
        )
        pending = Negotiation(
            Role.PROVIDER, provider_pid, "", self.participant_id, consumer_id,
            next_state(None, MessageKind.OFFER, Role.PROVIDER), offer,
        )  # fmt: skip
        return Outgoing(msg, MessageKind.OFFER, consumer_id, None, pending, 0)

    def counter_request(self, pid: str, offer: Mapping[str, Any]) -> Outgoing:
        """Consumer, in OFFERED: answer the provider's offer with another request."""
        record = self._prepare(pid, MessageKind.REQUEST, Role.CONSUMER)
        offer = check_message_offer(offer)
        msg = contract_request_message(
            consumer_pid=record.consumer_pid, provider_pid=record.provider_pid, offer=offer
        )
        return self._outgoing(record, MessageKind.REQUEST, msg, offer=offer)

    def counter_offer(self, pid: str, offer: Mapping[str, Any]) -> Outgoing:
        """Provider, in REQUESTED: answer the consumer's request with another offer."""
        record = self._prepare(pid, MessageKind.OFFER, Role.PROVIDER)
        offer = check_message_offer(offer)
        msg = contract_offer_message(
            provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, offer=offer
        )
        return self._outgoing(record, MessageKind.OFFER, msg, offer=offer)

    def accept(self, pid: str) -> Outgoing:
        """Consumer, in OFFERED: accept the latest offer."""
        record = self._prepare(pid, MessageKind.ACCEPTED, Role.CONSUMER)
        msg = negotiation_event_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            event_type="ACCEPTED",
        )
        return self._outgoing(record, MessageKind.ACCEPTED, msg)

    def agree(
        self,
        pid: str,
        *,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
    ) -> Outgoing:
        """Provider, in REQUESTED or ACCEPTED: agree to the latest offer and sign the agreement."""
        record = self._prepare(pid, MessageKind.AGREEMENT, Role.PROVIDER)
        now = self._clock()
        start = valid_from or now
        agreement = build_agreement(
            offer=record.offer,
            assigner=self.participant_id,
            assignee=record.counterparty,
            valid_from=start,
            valid_until=valid_until or start + self._validity,
            timestamp=now,
        )
        signature = sign_agreement(
            agreement, self._key, signer=self.participant_id, role=Role.PROVIDER
        )
        msg = contract_agreement_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            agreement=agreement,
            signature=signature,
        )
        return self._outgoing(
            record, MessageKind.AGREEMENT, msg, agreement=agreement, provider_signature=signature
        )

    def verify(self, pid: str) -> Outgoing:
        """Consumer, in AGREED: countersign the provider-signed agreement."""
        record = self._prepare(pid, MessageKind.VERIFICATION, Role.CONSUMER)
        if record.agreement is None:  # pragma: no cover - AGREED always carries it
            raise ConflictError(f"negotiation {pid!r} is AGREED without an agreement")
        signature = sign_agreement(
            record.agreement, self._key, signer=self.participant_id, role=Role.CONSUMER
        )
        msg = agreement_verification_message(
            provider_pid=record.provider_pid, consumer_pid=record.consumer_pid, signature=signature
        )
        return self._outgoing(record, MessageKind.VERIFICATION, msg, consumer_signature=signature)

    def finalize(self, pid: str) -> Outgoing:
        """Provider, in VERIFIED: finalize; the agreement now authorises use."""
        record = self._prepare(pid, MessageKind.FINALIZED, Role.PROVIDER)
        msg = negotiation_event_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            event_type="FINALIZED",
        )
        return self._outgoing(record, MessageKind.FINALIZED, msg)

    def terminate(
        self, pid: str, *, code: str | None = None, reason: list[Any] | None = None
    ) -> Outgoing:
        """Either side, in any non-terminal state: terminate the negotiation."""
        record = self.negotiation(pid)
        next_state(record.state, MessageKind.TERMINATION, record.role)
        msg = termination_message(
            provider_pid=record.provider_pid,
            consumer_pid=record.consumer_pid,
            code=code,
            reason=reason,
        )
        return self._outgoing(record, MessageKind.TERMINATION, msg)

    # -- acknowledgement of our own message -----------------------------------------------------
    def acknowledge(self, outgoing: Outgoing, ack: Mapping[str, Any]) -> Negotiation:
        """Apply our own transition after the counter-party's ACK (a ``ContractNegotiation``).

        Raises:
            ValidationError: the ACK is malformed or names another negotiation or state.
            ConflictError: our record changed since the message was prepared.
        """
        dsp.validate(ack, "negotiation/contract-negotiation-schema.json")
        if ack.get("@type") != "ContractNegotiation":
            raise ValidationError("ACK: expected a ContractNegotiation")
        pending = outgoing.pending
        if ack["state"] != pending.state.value:
            raise ValidationError(f"ACK: state {ack['state']} but expected {pending.state.value}")
        mine = "providerPid" if pending.role is Role.PROVIDER else "consumerPid"
        theirs = "consumerPid" if pending.role is Role.PROVIDER else "providerPid"
        if ack[mine] != pending.pid:
            raise ValidationError(f"ACK: {mine} {ack[mine]!r} is not {pending.pid!r}")
        other = pending.consumer_pid if pending.role is Role.PROVIDER else pending.provider_pid
        if other and ack[theirs] != other:
            raise ValidationError(f"ACK: {theirs} {ack[theirs]!r} is not {other!r}")
        if not other and pending.role is Role.PROVIDER:
            pending = replace(pending, consumer_pid=str(ack["consumerPid"]))
        elif not other:
            pending = replace(pending, provider_pid=str(ack["providerPid"]))
        with self.store.transaction() as tx:
            return _write(tx, outgoing.before, pending, outgoing.kind, outgoing.expect_version)

    # -- receiving the counter-party's messages -------------------------------------------------
    def receive(self, message: Mapping[str, Any], *, sender: str) -> dict[str, Any]:
        """Handle a message from ``sender`` (authenticated by the transport); return the ACK.

        Raises:
            SchemaValidationError / ValidationError: malformed message or terms.
            NotFoundError: no negotiation with these ids for this sender.
            IllegalTransitionError: the message is not allowed in the current state.
            VerificationError: an agreement signature does not verify.
            ConflictError: a concurrent transition won.
        """
        parsed = parse_message(message)
        kind = parsed.kind
        with self.store.transaction() as tx:
            record = self._find(tx, parsed, sender)
            if record is None:
                record = self._new_from(parsed, sender)
                before: NegotiationState | None = None
                sender_role = record.role.other
                expect = 0
            else:
                before = record.state
                sender_role = record.role.other
                expect = record.version
            after = next_state(before, kind, sender_role)
            record = self._apply(record, parsed, sender)
            saved = _write(tx, before, replace(record, state=after), kind, expect)
        return negotiation_ack(
            provider_pid=saved.provider_pid, consumer_pid=saved.consumer_pid, state=saved.state
        )

    def _find(self, tx: Transaction, msg: ParsedMessage, sender: str) -> Negotiation | None:
        roles = {r.other for r in msg.kind.senders}  # our possible roles
        for role in (Role.PROVIDER, Role.CONSUMER):
            if role not in roles:
                continue
            pid = msg.provider_pid if role is Role.PROVIDER else msg.consumer_pid
            if pid is None:
                continue
            doc = tx.get(NEGOTIATION_NAMESPACE, pid)
            if doc is None:
                continue
            record = Negotiation.from_json(doc.body, doc.version)
            other = msg.consumer_pid if role is Role.PROVIDER else msg.provider_pid
            other_known = record.consumer_pid if role is Role.PROVIDER else record.provider_pid
            # Unknown ids and someone else's negotiation look the same: not found.
            if record.role is role and record.counterparty == sender and other == other_known:
                return record
            raise NotFoundError(f"no negotiation {pid!r} with {sender!r}")
        if msg.kind is MessageKind.REQUEST and msg.provider_pid is None:
            return None
        if msg.kind is MessageKind.OFFER and msg.consumer_pid is None:
            return None
        raise NotFoundError(
            f"no negotiation for providerPid={msg.provider_pid!r} consumerPid={msg.consumer_pid!r}"
        )

    def _new_from(self, msg: ParsedMessage, sender: str) -> Negotiation:
        check_participant_id(sender, "sender")
        if sender == self.participant_id:
            raise ValidationError("a participant cannot negotiate a contract with itself")
        offer = check_message_offer(msg.body["offer"])
        callback = msg.body.get("callbackAddress")
        if msg.kind is MessageKind.REQUEST:
            if self._offer_check is not None:
                self._offer_check(offer)
            return Negotiation(
                Role.PROVIDER, new_id(), str(msg.consumer_pid), self.participant_id, sender,
                NegotiationState.REQUESTED, offer, callback,
            )  # fmt: skip
        return Negotiation(
            Role.CONSUMER, str(msg.provider_pid), new_id(), self.participant_id, sender,
            NegotiationState.OFFERED, offer, callback,
        )  # fmt: skip

    def _apply(self, record: Negotiation, msg: ParsedMessage, sender: str) -> Negotiation:
        body = msg.body
        if msg.kind in (MessageKind.REQUEST, MessageKind.OFFER):
            offer = check_message_offer(body["offer"])
            if offer["target"] != record.dataset_id:
                raise ValidationError(
                    f"offer.target {offer['target']!r} is not the negotiated dataset "
                    f"{record.dataset_id!r}"
                )
            return replace(record, offer=offer)
        if msg.kind is MessageKind.AGREEMENT:
            agreement = dict(body["agreement"])
            self._check_terms(record, agreement, sender)
            signature = _signature_of(body)
            verify_agreement_signature(
                agreement, signature, self._resolve_key(sender), signer=sender, role=Role.PROVIDER
            )
            return replace(record, agreement=agreement, provider_signature=signature)
        if msg.kind is MessageKind.VERIFICATION:
            if record.agreement is None:  # pragma: no cover - AGREED always carries it
                raise ConflictError("verification of a negotiation without an agreement")
            signature = _signature_of(body)
            verify_agreement_signature(
                record.agreement,
                signature,
                self._resolve_key(sender),
                signer=sender,
                role=Role.CONSUMER,
            )
            return replace(record, consumer_signature=signature)
        return record

    def _check_terms(self, record: Negotiation, agreement: dict[str, Any], sender: str) -> None:
        """The consumer's check that the agreement is the offer it negotiated, for it."""
        expected = {
            "target": record.dataset_id,
            "assigner": sender,
            "assignee": self.participant_id,
            OFFER_PROPERTY: record.offer["@id"],
        }
        for key, value in expected.items():
            if agreement.get(key) != value:
                raise ValidationError(
                    f"agreement.{key}: {agreement.get(key)!r} does not match {value!r}"
                )
        for rule in RULE_KINDS:
            if agreement.get(rule) != record.offer.get(rule):
                raise ValidationError(f"agreement.{rule} differs from the negotiated offer")
        start = parse_xsd_datetime(agreement.get(VALID_FROM_PROPERTY), "agreement.validFrom")
        end = parse_xsd_datetime(agreement.get(VALID_UNTIL_PROPERTY), "agreement.validUntil")
        if end <= start:
            raise ValidationError("agreement: validUntil must be after validFrom")


def _signature_of(body: Mapping[str, Any]) -> AgreementSignature:
    if SIGNATURE_PROPERTY not in body:
        raise VerificationError("message carries no agreement signature")
    try:
        return AgreementSignature.from_json(body[SIGNATURE_PROPERTY])
    except ValidationError as exc:
        raise VerificationError(f"malformed agreement signature: {exc}") from exc


def deliver(sender: Negotiator, outgoing: Outgoing, receiver: Negotiator) -> dict[str, Any]:
    """Carry one message: the receiver handles it, then the sender applies the ACK.

    If the receiver refuses (any exception), the sender does not move either. The connector layer
    does the same over HTTP.
    """
    if outgoing.recipient != receiver.participant_id:
        raise ValidationError(
            f"message for {outgoing.recipient!r} delivered to {receiver.participant_id!r}"
        )
    ack = receiver.receive(outgoing.message, sender=sender.participant_id)
    sender.acknowledge(outgoing, ack)
    return ack


def run_negotiation(
    provider: Negotiator,
    consumer: Negotiator,
    offer: Mapping[str, Any],
    *,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> SignedAgreement:
    """A full negotiation to FINALIZED: request → agreement → verification → finalization.

    Returns the consumer's copy of the signed agreement (identical to the provider's).
    """
    out = consumer.request(provider.participant_id, offer)
    deliver(consumer, out, provider)
    consumer_pid = out.pending.consumer_pid
    with consumer.store.transaction() as tx:
        provider_pid = load_negotiation(tx, consumer_pid).provider_pid
    deliver(
        provider,
        provider.agree(provider_pid, valid_from=valid_from, valid_until=valid_until),
        consumer,
    )
    deliver(consumer, consumer.verify(consumer_pid), provider)
    deliver(provider, provider.finalize(provider_pid), consumer)
    signed = consumer.negotiation(consumer_pid).signed_agreement()
    if signed is None:  # pragma: no cover - VERIFIED guarantees both signatures
        raise ConflictError("negotiation finalized without a signed agreement")
    return signed
