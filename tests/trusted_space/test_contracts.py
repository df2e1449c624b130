"""Contract negotiation: the DSP state machine on both sides, schemas, dual-signed agreements."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trusted_space import dsp
from trusted_space.contracts import (
    AGREEMENT_NAMESPACE,
    SIGNATURE_PROPERTY,
    TRANSITIONS,
    MessageKind,
    NegotiationState,
    Negotiator,
    Outgoing,
    Role,
    agreement_authorises,
    agreement_verification_message,
    build_agreement,
    contract_agreement_message,
    contract_offer_message,
    contract_request_message,
    deliver,
    load_agreement,
    negotiation_ack,
    negotiation_error,
    negotiation_event_message,
    next_state,
    offer_for,
    parse_message,
    run_negotiation,
    sign_agreement,
    store_agreement,
    termination_message,
)
from trusted_space.errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.keys import SigningKey, VerifyKey
from trusted_space.store import MemoryStore

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "dsp_examples" / "negotiation"
PROVIDER_KEY = SigningKey.generate()
CONSUMER_KEY = SigningKey.generate()
KEYS: dict[str, VerifyKey] = {
    "tax-bureau": PROVIDER_KEY.verify_key,
    "bank-a": CONSUMER_KEY.verify_key,
}
S = NegotiationState


def resolve(participant: str) -> VerifyKey:
    if participant not in KEYS:
        raise NotFoundError(participant)
    return KEYS[participant]


def parties(clock: Any = None) -> tuple[Negotiator, Negotiator]:
    kw: dict[str, Any] = {"clock": clock} if clock else {}
    provider = Negotiator(
        "tax-bureau", MemoryStore(), PROVIDER_KEY, resolve, callback_address="https://tax/dsp", **kw
    )
    consumer = Negotiator(
        "bank-a", MemoryStore(), CONSUMER_KEY, resolve, callback_address="https://bank/dsp", **kw
    )
    return provider, consumer


def an_offer(n: int = 1) -> dict[str, Any]:
    catalog_offer = {
        "@id": f"urn:uuid:offer-{n}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": "pre-loan-review"}
                ],
            }
        ],
    }
    return offer_for("urn:uuid:dataset-tax", catalog_offer)


def events(negotiator: Negotiator) -> list[str]:
    with negotiator.store.transaction() as tx:
        size = tx.log_size(EVENT_LOG)
        return [decode_event(i, e).kind for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, size))]


# -- the state machine as data -----------------------------------------------------------------


def test_transition_table_matches_dsp() -> None:
    assert next_state(None, MessageKind.REQUEST, Role.CONSUMER) is S.REQUESTED
    assert next_state(S.REQUESTED, MessageKind.AGREEMENT, Role.PROVIDER) is S.AGREED
    assert next_state(S.OFFERED, MessageKind.ACCEPTED, Role.CONSUMER) is S.ACCEPTED
    for state in (S.REQUESTED, S.OFFERED, S.ACCEPTED, S.AGREED, S.VERIFIED):
        for role in Role:
            assert next_state(state, MessageKind.TERMINATION, role) is S.TERMINATED
    for terminal in (S.FINALIZED, S.TERMINATED):
        assert not [k for (s, k) in TRANSITIONS if s is terminal]


def test_illegal_transition_names_state_and_message() -> None:
    with pytest.raises(IllegalTransitionError) as info:
        next_state(S.OFFERED, MessageKind.AGREEMENT, Role.PROVIDER)
    assert "ContractAgreementMessage" in str(info.value) and "OFFERED" in str(info.value)
    with pytest.raises(IllegalTransitionError, match="cannot be sent by the consumer"):
        next_state(S.VERIFIED, MessageKind.FINALIZED, Role.CONSUMER)


# -- messages --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("contract-*message*.json")), ids=str)
def test_published_examples_parse(path: Path) -> None:
    parsed = parse_message(json.loads(path.read_text()))
    assert parsed.kind.dsp_type == json.loads(path.read_text())["@type"]


def test_parse_refuses_unknown_and_invalid() -> None:
    with pytest.raises(ValidationError):
        parse_message({"@type": "CatalogRequestMessage"})
    with pytest.raises(ValidationError):
        parse_message({"@type": "ContractRequestMessage", "consumerPid": "x"})


def test_builders_validate() -> None:
    agreement = build_agreement(
        offer=an_offer(),
        assigner="tax-bureau",
        assignee="bank-a",
        valid_from=datetime(2025, 1, 1, tzinfo=UTC),
        valid_until=datetime(2026, 1, 1, tzinfo=UTC),
    )
    sig = sign_agreement(agreement, PROVIDER_KEY, signer="tax-bureau", role=Role.PROVIDER)
    messages = [
        contract_request_message(consumer_pid="c", offer=an_offer(), callback_address="https://x"),
        contract_request_message(consumer_pid="c", offer=an_offer(), provider_pid="p"),
        contract_offer_message(provider_pid="p", offer=an_offer(), callback_address="https://x"),
        contract_offer_message(provider_pid="p", offer=an_offer(), consumer_pid="c"),
        contract_agreement_message(
            provider_pid="p", consumer_pid="c", agreement=agreement, signature=sig
        ),
        agreement_verification_message(provider_pid="p", consumer_pid="c", signature=sig),
        negotiation_event_message(provider_pid="p", consumer_pid="c", event_type="ACCEPTED"),
        negotiation_event_message(provider_pid="p", consumer_pid="c", event_type="FINALIZED"),
        termination_message(provider_pid="p", consumer_pid="c", code="x", reason=["r"]),
    ]
    assert [parse_message(m).kind for m in messages] == [
        MessageKind.REQUEST,
        MessageKind.REQUEST,
        MessageKind.OFFER,
        MessageKind.OFFER,
        MessageKind.AGREEMENT,
        MessageKind.VERIFICATION,
        MessageKind.ACCEPTED,
        MessageKind.FINALIZED,
        MessageKind.TERMINATION,
    ]
    dsp.validate(
        negotiation_ack(provider_pid="p", consumer_pid="c", state=S.AGREED),
        "negotiation/contract-negotiation-schema.json",
    )
    negotiation_error(provider_pid="p", consumer_pid="c", code="400", reason=["bad"])
    with pytest.raises(ValidationError, match="target"):
        contract_request_message(
            consumer_pid="c", offer={"@id": "o", "@type": "Offer"}, callback_address="x"
        )


# -- full negotiations -----------------------------------------------------------------------------


def test_happy_path_both_sides_finalized_and_signatures_verify() -> None:
    provider, consumer = parties()
    signed = run_negotiation(provider, consumer, an_offer())
    signed.verify(PROVIDER_KEY.verify_key, CONSUMER_KEY.verify_key)
    assert provider.agreement(signed.id) == consumer.agreement(signed.id) == signed
    assert provider.negotiation(signed.provider_pid).state is S.FINALIZED
    assert consumer.negotiation(signed.consumer_pid).state is S.FINALIZED
    assert provider.authorises(signed.id) and consumer.authorises(signed.id)
    assert signed.assigner == "tax-bureau" and signed.assignee == "bank-a"
    for side in (provider, consumer):
        kinds = events(side)
        assert kinds.count("negotiation.transition") == 4
        assert kinds.count("agreement.signed") == 1


def test_counter_offer_path() -> None:
    provider, consumer = parties()
    out = consumer.request("tax-bureau", an_offer(1))
    deliver(consumer, out, provider)
    cpid = out.pending.consumer_pid
    ppid = consumer.negotiation(cpid).provider_pid
    deliver(provider, provider.counter_offer(ppid, an_offer(2)), consumer)
    assert consumer.negotiation(cpid).offer["@id"] == "urn:uuid:offer-2"
    deliver(consumer, consumer.accept(cpid), provider)
    deliver(provider, provider.agree(ppid), consumer)
    agreement = consumer.negotiation(cpid).agreement
    assert agreement is not None and agreement["https://w3id.org/trusted-space/v1/offer"] == (
        "urn:uuid:offer-2"
    )
    deliver(consumer, consumer.verify(cpid), provider)
    deliver(provider, provider.finalize(ppid), consumer)
    assert consumer.negotiation(cpid).state is provider.negotiation(ppid).state is S.FINALIZED


def test_provider_initiated_offer() -> None:
    provider, consumer = parties()
    out = provider.offer("bank-a", an_offer())
    ack = deliver(provider, out, consumer)
    assert ack["state"] == "OFFERED"
    assert consumer.negotiation(ack["consumerPid"]).state is S.OFFERED
    assert provider.negotiation(ack["providerPid"]).consumer_pid == ack["consumerPid"]


def _to_agreed(provider: Negotiator, consumer: Negotiator) -> tuple[str, str, Outgoing]:
    out = consumer.request("tax-bureau", an_offer())
    deliver(consumer, out, provider)
    cpid = out.pending.consumer_pid
    ppid = consumer.negotiation(cpid).provider_pid
    return cpid, ppid, provider.agree(ppid)


def test_tampered_agreement_refused_by_consumer() -> None:
    provider, consumer = parties()
    cpid, _, out = _to_agreed(provider, consumer)
    message = json.loads(json.dumps(out.message))
    message["agreement"]["https://w3id.org/trusted-space/v1/validUntil"] = "2999-01-01T00:00:00Z"
    with pytest.raises(VerificationError):
        consumer.receive(message, sender="tax-bureau")
    assert consumer.negotiation(cpid).state is S.REQUESTED


def test_tampered_signature_value_refused() -> None:
    provider, consumer = parties()
    cpid, ppid, out = _to_agreed(provider, consumer)
    message = json.loads(json.dumps(out.message))
    value = message[SIGNATURE_PROPERTY]["value"]
    message[SIGNATURE_PROPERTY]["value"] = ("A" if value[0] != "A" else "B") + value[1:]
    with pytest.raises(VerificationError) as info:
        consumer.receive(message, sender="tax-bureau")
    assert str(info.value) == "verification failed"
    deliver(provider, out, consumer)
    verification = consumer.verify(cpid)
    forged = json.loads(json.dumps(verification.message))
    forged[SIGNATURE_PROPERTY] = sign_agreement(
        {"@id": "other"}, CONSUMER_KEY, signer="bank-a", role=Role.CONSUMER
    ).to_json()
    with pytest.raises(VerificationError):
        provider.receive(forged, sender="bank-a")
    assert provider.negotiation(ppid).state is S.AGREED


def test_agreement_with_other_terms_refused() -> None:
    provider, consumer = parties()
    cpid, _, out = _to_agreed(provider, consumer)
    agreement = dict(out.message["agreement"])
    agreement["permission"] = [{"action": "use"}]
    sig = sign_agreement(agreement, PROVIDER_KEY, signer="tax-bureau", role=Role.PROVIDER)
    message = contract_agreement_message(
        provider_pid=out.message["providerPid"],
        consumer_pid=cpid,
        agreement=agreement,
        signature=sig,
    )
    with pytest.raises(ValidationError, match="permission"):
        consumer.receive(message, sender="tax-bureau")


def test_agreement_immutable() -> None:
    provider, consumer = parties()
    signed = run_negotiation(provider, consumer, an_offer())
    with provider.store.transaction() as tx, pytest.raises(ConflictError):
        store_agreement(tx, signed)
    with provider.store.transaction() as tx:
        assert load_agreement(tx, signed.id) == signed
        assert tx.get(AGREEMENT_NAMESPACE, signed.id) is not None


def test_expired_agreement_authorises_nothing() -> None:
    provider, consumer = parties()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    signed = run_negotiation(
        provider, consumer, an_offer(), valid_from=start, valid_until=start + timedelta(days=30)
    )
    assert provider.authorises(signed.id, start + timedelta(days=1))
    assert not provider.authorises(signed.id, start + timedelta(days=30))
    assert not provider.authorises(signed.id, start - timedelta(seconds=1))
    with pytest.raises(ValidationError):
        agreement_authorises(signed, S.FINALIZED, datetime(2025, 2, 1))


def test_terminated_agreement_authorises_nothing() -> None:
    provider, consumer = parties()
    cpid, ppid, out = _to_agreed(provider, consumer)
    deliver(provider, out, consumer)
    deliver(consumer, consumer.verify(cpid), provider)
    agreement_id = provider.negotiation(ppid).agreement["@id"]  # type: ignore[index]
    assert not provider.authorises(agreement_id)  # VERIFIED is not yet FINALIZED
    deliver(provider, provider.terminate(ppid, code="revoked"), consumer)
    assert not provider.authorises(agreement_id) and not consumer.authorises(agreement_id)
    with pytest.raises(IllegalTransitionError, match="TERMINATED"):
        provider.finalize(ppid)


def test_concurrent_transitions_cannot_both_win() -> None:
    provider, consumer = parties()
    out = consumer.request("tax-bureau", an_offer())
    deliver(consumer, out, provider)
    ppid = consumer.negotiation(out.pending.consumer_pid).provider_pid
    first = provider.agree(ppid)
    second = provider.terminate(ppid)  # prepared from the same version
    deliver(provider, first, consumer)
    ack = negotiation_ack(
        provider_pid=ppid, consumer_pid=out.pending.consumer_pid, state=S.TERMINATED
    )
    with pytest.raises(ConflictError):
        provider.acknowledge(second, ack)
    assert provider.negotiation(ppid).state is S.AGREED


def test_message_from_another_participant_not_found() -> None:
    provider, consumer = parties()
    out = consumer.request("tax-bureau", an_offer())
    deliver(consumer, out, provider)
    ppid = consumer.negotiation(out.pending.consumer_pid).provider_pid
    msg = termination_message(provider_pid=ppid, consumer_pid=out.pending.consumer_pid)
    with pytest.raises(NotFoundError):
        provider.receive(msg, sender="bank-b")
    with pytest.raises(NotFoundError):
        provider.receive(
            termination_message(provider_pid="urn:uuid:x", consumer_pid="urn:uuid:y"),
            sender="bank-a",
        )


def test_no_contract_with_oneself() -> None:
    provider, _ = parties()
    with pytest.raises(ValidationError):
        provider.request("tax-bureau", an_offer())


# -- random message sequences on both sides ------------------------------------------------------

_ACTIONS: dict[MessageKind, tuple[Role, str]] = {
    MessageKind.REQUEST: (Role.CONSUMER, "counter_request"),
    MessageKind.OFFER: (Role.PROVIDER, "counter_offer"),
    MessageKind.ACCEPTED: (Role.CONSUMER, "accept"),
    MessageKind.AGREEMENT: (Role.PROVIDER, "agree"),
    MessageKind.VERIFICATION: (Role.CONSUMER, "verify"),
    MessageKind.FINALIZED: (Role.PROVIDER, "finalize"),
}
_REACHED_AGREED = {S.AGREED, S.VERIFIED, S.FINALIZED}


class NegotiationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.provider, self.consumer = parties()
        self.state: NegotiationState | None = None
        self.ppid = ""
        self.cpid = ""
        self.agreed = False
        self.verified = False

    def _side(self, role: Role) -> tuple[Negotiator, Negotiator, str]:
        if role is Role.PROVIDER:
            return self.provider, self.consumer, self.ppid
        return self.consumer, self.provider, self.cpid

    def _send(self, kind: MessageKind, role: Role, make: Any) -> None:
        legal = (self.state, kind) in TRANSITIONS and role in kind.senders
        sender, receiver, _ = self._side(role)
        try:
            out = make()
        except IllegalTransitionError:
            assert not legal
            return
        assert legal, f"{kind} from {role} accepted in {self.state}"
        parse_message(out.message)  # every emitted message validates against its schema
        ack = deliver(sender, out, receiver)
        dsp.validate(ack, "negotiation/contract-negotiation-schema.json")
        self.state = TRANSITIONS[(self.state, kind)]
        assert ack["state"] == self.state.value
        self.ppid, self.cpid = ack["providerPid"], ack["consumerPid"]
        self.agreed |= self.state is S.AGREED
        self.verified |= self.state is S.VERIFIED

    @precondition(lambda self: self.state is None)
    @rule(by_consumer=st.booleans())
    def start(self, by_consumer: bool) -> None:
        if by_consumer:
            self._send(
                MessageKind.REQUEST,
                Role.CONSUMER,
                lambda: self.consumer.request("tax-bureau", an_offer()),
            )
        else:
            self._send(
                MessageKind.OFFER, Role.PROVIDER, lambda: self.provider.offer("bank-a", an_offer())
            )

    @precondition(lambda self: self.state is not None)
    @rule(kind=st.sampled_from(sorted(_ACTIONS)), n=st.integers(1, 3))
    def act(self, kind: MessageKind, n: int) -> None:
        role, method = _ACTIONS[kind]
        sender, _, pid = self._side(role)
        args: tuple[Any, ...] = (
            (pid, an_offer(n)) if kind in (MessageKind.REQUEST, MessageKind.OFFER) else (pid,)
        )
        self._send(kind, role, lambda: getattr(sender, method)(*args))

    @precondition(lambda self: self.state is not None)
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """Bias towards progress so that AGREED, VERIFIED and FINALIZED are reached often."""
        legal = sorted(k for (s, k) in TRANSITIONS if s is self.state and k in _ACTIONS)
        if legal:
            self.act(data.draw(st.sampled_from(legal)), 1)

    @precondition(lambda self: self.state is not None)
    @rule(role=st.sampled_from(list(Role)), roll=st.integers(0, 3))
    def terminate(self, role: Role, roll: int) -> None:
        if roll:  # terminating is always legal early on; keep it from ending most runs at once
            return
        sender, _, pid = self._side(role)
        self._send(MessageKind.TERMINATION, role, lambda: sender.terminate(pid, code="stop"))

    @precondition(lambda self: self.state is not None)
    @rule(kind=st.sampled_from([k for k in MessageKind if k is not MessageKind.AGREEMENT]))
    def inject(self, kind: MessageKind) -> None:
        """A counter-party that skips its own checks: the receiver must refuse illegal messages."""
        if (self.state, kind) in TRANSITIONS:
            return
        role = min(kind.senders)
        sender, receiver, _ = self._side(role)
        pids = {"provider_pid": self.ppid, "consumer_pid": self.cpid}
        sig = sign_agreement({"@id": "x"}, CONSUMER_KEY, signer="bank-a", role=Role.CONSUMER)
        message = {
            MessageKind.REQUEST: lambda: contract_request_message(offer=an_offer(), **pids),
            MessageKind.OFFER: lambda: contract_offer_message(offer=an_offer(), **pids),
            MessageKind.ACCEPTED: lambda: negotiation_event_message(event_type="ACCEPTED", **pids),
            MessageKind.FINALIZED: lambda: negotiation_event_message(
                event_type="FINALIZED", **pids
            ),
            MessageKind.VERIFICATION: lambda: agreement_verification_message(signature=sig, **pids),
            MessageKind.TERMINATION: lambda: termination_message(
                provider_pid=self.ppid, consumer_pid=self.cpid
            ),
        }[kind]()
        with pytest.raises(IllegalTransitionError):
            receiver.receive(message, sender=sender.participant_id)

    @invariant()
    def both_sides_agree(self) -> None:
        if self.state is None:
            return
        p = self.provider.negotiation(self.ppid)
        c = self.consumer.negotiation(self.cpid)
        assert p.state is c.state is self.state
        for side in (p, c):
            assert (side.agreement is not None) == self.agreed
            assert (side.signed_agreement() is not None) == self.verified
        if self.agreed:
            assert p.agreement == c.agreement
        for negotiator, record in ((self.provider, p), (self.consumer, c)):
            with negotiator.store.transaction() as tx:
                stored = tx.scan(AGREEMENT_NAMESPACE)
            assert len(stored) == (1 if self.verified else 0)
            if self.verified:
                signed = record.signed_agreement()
                assert signed is not None
                signed.verify(PROVIDER_KEY.verify_key, CONSUMER_KEY.verify_key)
        if self.state in _REACHED_AGREED:
            assert self.agreed


NegotiationMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=20, deadline=None
)
test_negotiation_state_machine = NegotiationMachine.TestCase
