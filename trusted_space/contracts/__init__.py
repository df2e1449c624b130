"""Contract negotiation after the Dataspace Protocol 2025-1, and agreements signed by both parties.

A bank may use a department's data only under an agreement, and an agreement is only worth
something if neither side can later deny it or quietly change it. So:

- The negotiation is the DSP 2025-1 state machine, kept by **both** sides, each in its own store
  (namespace ``negotiation``, one record per side keyed by that side's process id). A side moves
  only when the counter-party acknowledges its message, or when it acknowledges one itself; every
  move is a compare-and-set on the record's version, so two concurrent transitions of the same
  negotiation cannot both win, and each is written to the ledger (``negotiation.transition``) in
  the same transaction.
- A message that the state machine does not allow in the current state is refused with
  :class:`~trusted_space.errors.IllegalTransitionError` naming the state, the message and the
  sender's role — on the sending side before anything leaves, and again on the receiving side,
  which never trusts the sender to have checked.
- Every message built here, and every message accepted, validates against the vendored DSP
  2025-1 JSON schemas.
- The agreement (an ODRL ``Agreement`` with a validity window) is canonicalised (sorted-key JSON)
  and signed with Ed25519 by the provider inside the ``ContractAgreementMessage``; the consumer
  verifies that signature, checks that the terms are the offer it negotiated, and countersigns in
  the ``ContractAgreementVerificationMessage``. Only an agreement carrying both signatures is
  written to namespace ``agreement`` — insert-only, so it can never be changed — and recorded as
  ``agreement.signed``. Until then the provider-signed terms live in the negotiation record.
- :func:`agreement_authorises` is the one check other modules call: only an agreement whose
  negotiation is ``FINALIZED`` and whose validity window contains the instant authorises anything;
  a terminated or expired one authorises nothing.

Transition table (sender: C consumer, P provider; "—" is a new negotiation)::

    —          ContractRequestMessage (C)                 → REQUESTED
    —          ContractOfferMessage (P)                   → OFFERED
    REQUESTED  ContractOfferMessage (P)                   → OFFERED     (counter-offer)
    REQUESTED  ContractAgreementMessage (P)               → AGREED
    OFFERED    ContractRequestMessage (C)                 → REQUESTED   (counter-request)
    OFFERED    ContractNegotiationEventMessage ACCEPTED (C) → ACCEPTED
    ACCEPTED   ContractAgreementMessage (P)               → AGREED
    AGREED     ContractAgreementVerificationMessage (C)   → VERIFIED
    VERIFIED   ContractNegotiationEventMessage FINALIZED (P) → FINALIZED
    any non-terminal state  ContractNegotiationTerminationMessage (C or P) → TERMINATED

FINALIZED and TERMINATED are terminal. The specification's prose lets either party terminate "at
any state"; its diagram draws only some of those arrows. We follow the prose.

The same :class:`Negotiator` objects run in-process (tests, :func:`deliver`,
:func:`run_negotiation`) and behind the connector's HTTP endpoints, which carry the same messages.

Layout: :mod:`.states` (the state machine and its transition table), :mod:`.agreements` (signed
agreements and what they authorise), :mod:`.messages` (DSP message builders and the parser),
:mod:`.negotiation` (records, :class:`Negotiator`, the in-process driver), and beside it
:mod:`.transfer`, the DSP transfer process (states, messages, records, the provider's decision and
the consumer's bookkeeping; its HTTP half is ``connectors.node.transfer``). Transfer names mirror
negotiation's (``TRANSITIONS``, ``next_state``, ``parse_message``), so they are imported from
:mod:`trusted_space.contracts.transfer`, not re-exported here. The DSP schemas themselves are
checked by :mod:`trusted_space.dsp`, shared with the catalog.
"""

from __future__ import annotations

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
    negotiation_error,
    negotiation_event_message,
    offer_for,
    parse_message,
    termination_message,
)
from trusted_space.contracts.negotiation import (
    Negotiation,
    Negotiator,
    Outgoing,
    deliver,
    load_negotiation,
    run_negotiation,
)
from trusted_space.contracts.standing import (
    STANDINGS,
    AgreementStanding,
    Standing,
    agreement_standing,
    change_standing,
)
from trusted_space.contracts.states import (
    AGREEMENT_NAMESPACE,
    NEGOTIATION_NAMESPACE,
    SIGNATURE_PROPERTY,
    TERMINAL_STATES,
    TRANSITIONS,
    MessageKind,
    NegotiationState,
    Role,
    new_id,
    next_state,
)

__all__ = [
    "AGREEMENT_NAMESPACE",
    "NEGOTIATION_NAMESPACE",
    "SIGNATURE_PROPERTY",
    "STANDINGS",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "AgreementSignature",
    "AgreementStanding",
    "MessageKind",
    "Negotiation",
    "NegotiationState",
    "Negotiator",
    "Outgoing",
    "ParsedMessage",
    "Role",
    "SignedAgreement",
    "Standing",
    "agreement_authorises",
    "agreement_standing",
    "agreement_verification_message",
    "build_agreement",
    "change_standing",
    "contract_agreement_message",
    "contract_offer_message",
    "contract_request_message",
    "deliver",
    "load_agreement",
    "load_negotiation",
    "negotiation_ack",
    "negotiation_error",
    "negotiation_event_message",
    "new_id",
    "next_state",
    "offer_for",
    "parse_message",
    "run_negotiation",
    "sign_agreement",
    "store_agreement",
    "termination_message",
    "verify_agreement_signature",
]
