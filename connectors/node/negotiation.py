"""The negotiation driver: carries DSP messages between nodes and takes the automatic steps.

The core's :class:`~trusted_space.contracts.Negotiator` keeps each side's state machine; this
module moves its messages over signed HTTP and decides what happens next without a person:

1. the consumer's staff call :func:`start_negotiation` (``POST /management/negotiations``): the
   consumer fetches the dataset from the provider's catalog, picks the offer and sends the
   ``ContractRequestMessage`` to ``{provider}/negotiations/request``;
2. the provider, once it has ACKed a request (or an ``ACCEPTED`` event), asks
   :func:`decide_agreement` and either signs and sends the ``ContractAgreementMessage`` to the
   consumer's callback address, or terminates with the decision's reason;
3. the consumer, once it has ACKed an agreement, countersigns and sends the verification;
4. the provider, once it has ACKed the verification, sends the ``FINALIZED`` event.

Steps 2-4 run in a small thread pool owned by each runtime (:class:`NegotiationWorker`), after the
HTTP handler that received the triggering message has answered; every message is signed by
``runtime.client`` and every ACK applied with ``Negotiator.acknowledge``, so a side moves only
once the other has accepted.

Ordering between two nodes is not guaranteed: the provider's agreement can reach the consumer
before the consumer has applied the ACK of its own request (the consumer then answers ``404``),
and the consumer's verification can reach the provider before the provider has applied the ACK of
its agreement (``409``). Such answers, and unreachable peers, are retried a few times with
back-off; when a reply may have been lost (a timeout, a ``409``) the sender asks the peer for its
state (``GET /negotiations/{pid}``) and takes a peer already in the expected state as the ACK.

No negotiation is left silently stuck: an automatic step that fails for good is logged and the
negotiation is terminated with the reason; if the peer cannot even be told, this side terminates
its own record anyway (recorded in its ledger) and the peer's next message is refused.

Threats handled here: a member cannot make a provider send requests to an arbitrary host (the
``callbackAddress`` must be the URL the operator registered for that member), a consumer cannot
write its own terms (the requested offer must be one the provider published, checked when the
request arrives and again by :func:`decide_agreement`), and the sender of every message is the
verified signer of the request, never a claim in the body.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from connectors.node.runtime import NodeRuntime
from trusted_space import dsp
from trusted_space.catalog import TS_NAMESPACE, Caller, load_dataset, visible_datasets
from trusted_space.contracts import (
    NEGOTIATION_NAMESPACE,
    TERMINAL_STATES,
    MessageKind,
    Negotiation,
    NegotiationState,
    Outgoing,
    Role,
    negotiation_ack,
    offer_for,
)
from trusted_space.contracts.granting import grant_mode, hold, offer_admits, release_hold
from trusted_space.errors import (
    NotFoundError,
    NotReadyError,
    RemoteError,
    TrustedSpaceError,
    ValidationError,
)
from trusted_space.store import Transaction

__all__ = [
    "RETRY_DELAYS",
    "AgreeDecision",
    "NegotiationWorker",
    "after_receipt",
    "approve",
    "check_callback",
    "choose_offer",
    "decide_agreement",
    "drain",
    "endpoint_for",
    "fetch_dataset",
    "reject",
    "send",
    "resume",
    "shutdown",
    "start_negotiation",
    "terminate",
    "wait_for",
    "worker_for",
]

log = logging.getLogger("trusted_space.negotiation")

RETRY_DELAYS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Seconds to wait before each retry of a message that met a transient failure (~3 s in all)."""

_CONSUMER_PATHS = {
    MessageKind.REQUEST: "request",
    MessageKind.ACCEPTED: "events",
    MessageKind.VERIFICATION: "agreement/verification",
    MessageKind.TERMINATION: "termination",
}
_PROVIDER_PATHS = {
    MessageKind.OFFER: "offers",
    MessageKind.AGREEMENT: "agreement",
    MessageKind.FINALIZED: "events",
    MessageKind.TERMINATION: "termination",
}


# -- the worker ---------------------------------------------------------------------------------


class NegotiationWorker:
    """A small thread pool running one node's automatic negotiation steps.

    Jobs are independent; a job never raises (failures are handled inside the step). ``drain``
    waits until every submitted job has finished, which tests and shutdown use.
    """

    def __init__(self, name: str, *, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending: set[Future[None]] = set()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> Future[None] | None:
        """Run ``job`` in the background (``None`` once the worker is shut down)."""
        with self._lock:
            if self._closed:
                return None
            future = self._pool.submit(job)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until no job is pending (jobs may submit jobs); ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = set(self._pending)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait_futures(pending, timeout=left)

    def shutdown(self, *, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def worker_for(runtime: NodeRuntime) -> NegotiationWorker:
    """The runtime's worker, created on first use and kept as long as the runtime lives."""
    return runtime.service(NegotiationWorker, lambda rt: NegotiationWorker(f"negotiation-{rt.id}"))


def drain(runtime: NodeRuntime, timeout: float = 10.0) -> bool:
    """Wait for the runtime's pending automatic steps; ``False`` if some still run at timeout."""
    worker = runtime.existing_service(NegotiationWorker)
    return True if worker is None else worker.drain(timeout)


def shutdown(runtime: NodeRuntime, *, wait: bool = True) -> None:
    """Stop the runtime's worker (call before closing the runtime's store)."""
    worker = runtime.drop_service(NegotiationWorker)
    if worker is not None:
        worker.shutdown(wait=wait)


# -- where messages go ----------------------------------------------------------------------------


def _segment(value: str) -> str:
    return quote(value, safe=":@")


def _peer_base(runtime: NodeRuntime, record: Negotiation) -> str:
    if record.role is Role.PROVIDER and record.callback_address:
        return record.callback_address.rstrip("/")
    return runtime.peer_url(record.counterparty).rstrip("/")


def endpoint_for(runtime: NodeRuntime, record: Negotiation, kind: MessageKind) -> str:
    """The URL at which the counter-party receives ``kind`` for ``record`` (DSP HTTPS binding).

    A consumer writes to the provider's registered URL; a provider writes to the consumer's
    callback address (checked against the registered URL when the negotiation began).
    """
    base = _peer_base(runtime, record)
    if record.role is Role.CONSUMER:
        if kind is MessageKind.REQUEST and not record.provider_pid:
            return f"{base}/negotiations/request"
        suffix, pid = _CONSUMER_PATHS.get(kind), record.provider_pid
    else:
        if kind is MessageKind.OFFER and not record.consumer_pid:
            return f"{base}/negotiations/offers"
        suffix, pid = _PROVIDER_PATHS.get(kind), record.consumer_pid
    if suffix is None:
        raise ValidationError(f"the {record.role.value} does not send {kind.value}")
    return f"{base}/negotiations/{_segment(pid)}/{suffix}"


def check_callback(runtime: NodeRuntime, sender: str, callback: object) -> None:
    """Refuse a ``callbackAddress`` that is not the URL registered for ``sender``.

    Without this a member could make this node send signed requests to any host it names.

    Raises:
        ValidationError: missing, or another URL than the registered one.
        NotReadyError: the sender's URL is unknown here and the operator cannot be asked.
    """
    if not isinstance(callback, str) or not callback:
        raise ValidationError("callbackAddress: a new negotiation needs a callback address")
    registered = runtime.peer_url(sender).rstrip("/")
    if callback.rstrip("/") != registered:
        raise ValidationError(
            f"callbackAddress {callback!r} is not the URL registered for {sender!r} with the "
            f"operator ({registered!r})"
        )


# -- sending ------------------------------------------------------------------------------------


def _transient(exc: Exception, initial: bool) -> bool:
    if isinstance(exc, NotReadyError):
        return True
    if isinstance(exc, RemoteError):
        if exc.status == 503:
            return True
        # A peer that has not yet applied the ACK of its previous message answers 404 (it does
        # not know its own pid yet) or 409 (its record is still in the earlier state).
        return not initial and exc.status in (404, 409)
    return False


def _reconcile(runtime: NodeRuntime, outgoing: Outgoing) -> Negotiation | None:
    """If the peer already made the transition (our earlier reply got lost), take it as the ACK."""
    record = outgoing.pending
    peer_pid = record.consumer_pid if record.role is Role.PROVIDER else record.provider_pid
    if not peer_pid:
        return None
    url = f"{_peer_base(runtime, record)}/negotiations/{_segment(peer_pid)}"
    try:
        doc = runtime.client.get_json(url, audience=outgoing.recipient)
    except (NotReadyError, RemoteError):
        return None
    if not isinstance(doc, dict) or doc.get("state") != record.state.value:
        return None
    try:
        return runtime.negotiator.acknowledge(outgoing, doc)
    except TrustedSpaceError:
        return None


def send(
    runtime: NodeRuntime,
    outgoing: Outgoing,
    *,
    delays: Iterable[float] = RETRY_DELAYS,
    sleep: Callable[[float], None] = time.sleep,
) -> Negotiation:
    """Deliver ``outgoing`` signed to its recipient, then apply the recipient's ACK.

    The same message (same agreement, same signatures) is re-sent on a transient failure.

    Raises:
        RemoteError: the recipient refused the message (its problem document is attached).
        NotReadyError: the recipient stayed unreachable.
        ValidationError / ConflictError: the ACK does not fit, or our record changed meanwhile.
    """
    record = outgoing.pending
    initial = outgoing.before is None
    url = endpoint_for(runtime, record, outgoing.kind)
    schedule = [0.0, *delays]
    last: Exception | None = None
    for attempt, delay in enumerate(schedule):
        if delay:
            sleep(delay)
        try:
            ack = runtime.client.post_json(url, outgoing.message, audience=outgoing.recipient)
        except (NotReadyError, RemoteError) as exc:
            if not _transient(exc, initial) or attempt == len(schedule) - 1:
                raise
            last = exc
            log.info(
                "%s for %s to %s: %s (attempt %d)",
                outgoing.kind.value, record.pid, outgoing.recipient, exc, attempt + 1,
            )  # fmt: skip
            if isinstance(exc, NotReadyError) or exc.status == 409:
                reconciled = _reconcile(runtime, outgoing)
                if reconciled is not None:
                    return reconciled
            continue
        if not isinstance(ack, dict):
            raise ValidationError(
                f"{outgoing.recipient} answered {outgoing.kind.value} without ACK"
            )
        return runtime.negotiator.acknowledge(outgoing, ack)
    raise last if last is not None else NotReadyError("no attempt made")  # pragma: no cover


# -- the consumer's start -----------------------------------------------------------------------


def fetch_dataset(runtime: NodeRuntime, provider_id: str, dataset_id: str) -> dict[str, Any]:
    """The provider's DSP ``Dataset`` as it shows it to this node (signed request).

    Raises:
        NotFoundError: no such member, or the provider has no such dataset, or does not show it
            to us.
        ValidationError: the answer is not that dataset, or not from that provider.
    """
    try:
        base = runtime.peer_url(provider_id)
    except RemoteError as exc:  # the operator knows no such member: the staff named a wrong one
        if exc.status == 404:
            raise NotFoundError(f"no member {provider_id!r} in this space") from exc
        raise
    url = f"{base.rstrip('/')}/catalog/datasets/{_segment(dataset_id)}"
    try:
        doc = runtime.client.get_json(url, audience=provider_id)
    except RemoteError as exc:
        if exc.status == 404:
            raise NotFoundError(
                f"provider {provider_id!r} has no dataset {dataset_id!r} visible to {runtime.id!r}"
            ) from exc
        raise
    if not isinstance(doc, dict):
        raise ValidationError(f"{provider_id} answered the dataset request with a non-object")
    dsp.validate(doc, "catalog/dataset-schema.json")
    if doc.get("@id") != dataset_id:
        raise ValidationError(f"{provider_id} answered with dataset {doc.get('@id')!r}")
    owner = doc.get(TS_NAMESPACE + "owner", provider_id)
    if owner != provider_id:
        raise ValidationError(f"dataset {dataset_id!r} is owned by {owner!r}, not {provider_id!r}")
    return doc


def choose_offer(dataset: Mapping[str, Any], offer_id: str | None) -> dict[str, Any]:
    """The offer to request: ``offer_id``, or the dataset's only offer.

    Raises:
        ValidationError: no such offer, or several offers and none chosen (the ids are listed).
    """
    offers = [dict(o) for o in dataset.get("hasPolicy", []) if isinstance(o, Mapping)]
    ids = [str(o.get("@id")) for o in offers]
    if offer_id is not None:
        for offer in offers:
            if offer.get("@id") == offer_id:
                return offer
        raise ValidationError(
            f"dataset {dataset.get('@id')!r} has no offer {offer_id!r}; its offers: {ids}"
        )
    if len(offers) != 1:
        raise ValidationError(
            f"dataset {dataset.get('@id')!r} has {len(offers)} offers; choose one with offerId: "
            f"{ids}"
        )
    return offers[0]


def start_negotiation(
    runtime: NodeRuntime,
    provider_id: str,
    dataset_id: str,
    offer_id: str | None = None,
    *,
    offer: Mapping[str, Any] | None = None,
) -> Negotiation:
    """Consumer: request ``dataset_id`` from ``provider_id``; the rest proceeds automatically.

    Args:
        runtime: the consumer's runtime.
        provider_id: the provider's participant id.
        dataset_id: the dataset to negotiate for.
        offer_id: which of the dataset's offers (required when it has several).
        offer: the catalog offer itself (skips fetching the dataset; the provider still checks
            that it published exactly this offer).

    Returns:
        The consumer's record, ``REQUESTED`` (or further, if the provider was quick).

    Raises:
        NotFoundError: the provider shows no such dataset to us.
        ValidationError: no such offer, or ambiguous.
        RemoteError: the provider refused the request (its problem says why).
        NotReadyError: the provider cannot be reached.
    """
    if offer is None:
        offer = choose_offer(fetch_dataset(runtime, provider_id, dataset_id), offer_id)
    outgoing = runtime.negotiator.request(provider_id, offer_for(dataset_id, offer))
    record = send(runtime, outgoing)
    log.info(
        "negotiation %s with %s for %s: %s",
        record.pid, provider_id, dataset_id, record.state.value,
    )  # fmt: skip
    return record


# -- automatic steps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgreeDecision:
    """Whether the provider agrees to a requested offer, and why (said to the consumer if not)."""

    allowed: bool
    reason: str


def decide_agreement(runtime: NodeRuntime, record: Negotiation) -> AgreeDecision:
    """The provider's one decision point before it signs an agreement.

    Today: the offer must still be one published for the dataset (a counter-request could name
    other terms; a dataset or offer may have been withdrawn since the request), and the dataset
    must be visible to the consumer. Finer checks (policy evaluation of the consumer's role or
    purpose) plug in here.
    """
    target = record.dataset_id
    with runtime.transaction(readonly=True) as tx:
        try:
            published = load_dataset(tx, target)
        except NotFoundError:
            return AgreeDecision(False, f"dataset {target!r} is no longer published")
    requested = {k: v for k, v in record.offer.items() if k != "target"}
    if not any(dict(o) == requested for o in published.offers):
        return AgreeDecision(
            False, f"offer {record.offer.get('@id')!r} is not an offer published for {target!r}"
        )
    if not visible_datasets([published], Caller(record.counterparty, member=True)):
        return AgreeDecision(False, f"dataset {target!r} is not offered to {record.counterparty!r}")
    return AgreeDecision(True, f"offer {record.offer.get('@id')!r} is published for {target!r}")


def _roles_of(runtime: NodeRuntime, tx: Transaction, participant: str) -> frozenset[str]:
    """The roles of ``participant``'s stored, operator-signed credential (empty if none)."""
    directory = runtime.directory
    if directory is None:
        return frozenset()
    try:
        return frozenset(directory.get(tx, participant).roles)
    except NotFoundError:
        return frozenset()


def _held(runtime: NodeRuntime, record: Negotiation) -> bool:
    """Hold the request for the staff when the provider's grant mode says so (stays REQUESTED)."""
    offer_id = str(record.offer.get("@id", ""))
    with runtime.transaction() as tx:
        mode = grant_mode(tx, offer_id or None)
        if mode == "auto":
            return False
        if mode == "policy":
            roles = _roles_of(runtime, tx, record.counterparty)
            if offer_admits(record.offer, record.counterparty, roles):
                return False
        hold(
            tx,
            pid=record.pid,
            consumer=record.counterparty,
            dataset_id=record.dataset_id,
            offer_id=offer_id,
            mode=mode,
            at=runtime.clock(),
        )
    log.info("negotiation %s held for the staff (grant mode %s)", record.pid, mode)
    return True


def _agree(runtime: NodeRuntime, pid: str, *, approved: bool = False) -> None:
    record = runtime.negotiator.negotiation(pid)
    if record.state not in (NegotiationState.REQUESTED, NegotiationState.ACCEPTED):
        return
    decision = decide_agreement(runtime, record)
    if not decision.allowed:
        log.info("negotiation %s refused: %s", pid, decision.reason)
        terminate(runtime, pid, reason=decision.reason, code="offer-refused")
        return
    if not approved and _held(runtime, record):
        return
    send(runtime, runtime.negotiator.agree(pid))


def approve(runtime: NodeRuntime, pid: str) -> Negotiation:
    """The staff approve a held request: the provider agrees now (as it would have automatically).

    Raises:
        NotFoundError: no request ``pid`` is held here.
    """
    with runtime.transaction() as tx:
        if not release_hold(tx, pid):
            raise NotFoundError(f"no request {pid!r} is held for approval here")
    _agree(runtime, pid, approved=True)
    return runtime.negotiator.negotiation(pid)


def reject(runtime: NodeRuntime, pid: str, *, reason: str) -> tuple[Negotiation, bool]:
    """The staff reject a held request: the provider terminates it and tells the consumer."""
    with runtime.transaction() as tx:
        if not release_hold(tx, pid):
            raise NotFoundError(f"no request {pid!r} is held for approval here")
    return terminate(runtime, pid, reason=reason, code="rejected-by-staff")


def _verify(runtime: NodeRuntime, pid: str) -> None:
    if runtime.negotiator.negotiation(pid).state is NegotiationState.AGREED:
        send(runtime, runtime.negotiator.verify(pid))


def _finalize(runtime: NodeRuntime, pid: str) -> None:
    if runtime.negotiator.negotiation(pid).state is NegotiationState.VERIFIED:
        record = send(runtime, runtime.negotiator.finalize(pid))
        log.info("negotiation %s %s", pid, record.state.value)


_STEPS: dict[MessageKind, tuple[str, Callable[[NodeRuntime, str], None], Role]] = {
    MessageKind.REQUEST: ("agreement", _agree, Role.PROVIDER),
    MessageKind.ACCEPTED: ("agreement", _agree, Role.PROVIDER),
    MessageKind.AGREEMENT: ("verification", _verify, Role.CONSUMER),
    MessageKind.VERIFICATION: ("finalization", _finalize, Role.PROVIDER),
}


def _run_step(
    runtime: NodeRuntime, pid: str, name: str, step: Callable[[NodeRuntime, str], None]
) -> None:
    try:
        step(runtime, pid)
    except Exception as exc:
        log.warning("automatic %s of negotiation %s failed: %s", name, pid, exc)
        try:
            record = runtime.negotiator.negotiation(pid)
            if record.state not in TERMINAL_STATES:
                terminate(runtime, pid, reason=f"{name} failed: {exc}", code="step-failed")
        except Exception:
            log.exception("could not terminate negotiation %s after a failed %s", pid, name)


def after_receipt(runtime: NodeRuntime, kind: MessageKind, ack: Mapping[str, Any]) -> None:
    """Schedule this side's next automatic step after it ACKed a ``kind`` message."""
    entry = _STEPS.get(kind)
    if entry is None:
        return
    name, step, role = entry
    pid = str(ack["providerPid"] if role is Role.PROVIDER else ack["consumerPid"])
    worker_for(runtime).submit(lambda: _run_step(runtime, pid, name, step))


_OWED: dict[tuple[Role, NegotiationState], MessageKind] = {
    (Role.PROVIDER, NegotiationState.REQUESTED): MessageKind.REQUEST,
    (Role.PROVIDER, NegotiationState.ACCEPTED): MessageKind.ACCEPTED,
    (Role.CONSUMER, NegotiationState.AGREED): MessageKind.AGREEMENT,
    (Role.PROVIDER, NegotiationState.VERIFIED): MessageKind.VERIFICATION,
}


def resume(runtime: NodeRuntime) -> int:
    """Schedule every automatic step this node still owes (call once at start).

    Steps live in memory; a node that stopped between ACKing a message and taking its next step
    would otherwise leave both sides waiting. Returns how many steps were scheduled.
    """
    with runtime.transaction(readonly=True) as tx:
        records = [
            Negotiation.from_json(doc.body, doc.version) for doc in tx.scan(NEGOTIATION_NAMESPACE)
        ]
    count = 0
    for record in records:
        kind = _OWED.get((record.role, record.state))
        if kind is not None:
            ack = {"providerPid": record.provider_pid, "consumerPid": record.consumer_pid}
            after_receipt(runtime, kind, ack)
            count += 1
    return count


def terminate(
    runtime: NodeRuntime, pid: str, *, reason: str | None = None, code: str = "terminated"
) -> tuple[Negotiation, bool]:
    """Terminate negotiation ``pid`` and tell the counter-party.

    Returns:
        The terminated record, and whether the counter-party acknowledged. If it could not be
        told (unreachable, or it refused), this side terminates anyway.

    Raises:
        NotFoundError: no such negotiation.
        IllegalTransitionError: it is already FINALIZED or TERMINATED.
    """
    outgoing = runtime.negotiator.terminate(pid, code=code, reason=[reason] if reason else None)
    try:
        return send(runtime, outgoing, delays=RETRY_DELAYS[:3]), True
    except (NotReadyError, RemoteError, ValidationError) as exc:
        log.warning("negotiation %s: the counter-party was not told of termination: %s", pid, exc)
    record = outgoing.pending
    own_ack = negotiation_ack(
        provider_pid=record.provider_pid,
        consumer_pid=record.consumer_pid,
        state=NegotiationState.TERMINATED,
    )
    return runtime.negotiator.acknowledge(outgoing, own_ack), False


def wait_for(
    runtime: NodeRuntime,
    pid: str,
    states: Iterable[NegotiationState | str],
    timeout: float = 10.0,
    *,
    poll: float = 0.02,
) -> Negotiation:
    """Wait until negotiation ``pid`` is in one of ``states``.

    Raises:
        TimeoutError: it is not, ``timeout`` seconds later (the message names its state).
    """
    wanted = {NegotiationState(s) for s in states}
    deadline = time.monotonic() + timeout
    while True:
        try:
            record: Negotiation | None = runtime.negotiator.negotiation(pid)
        except NotFoundError:
            record = None
        if record is not None and record.state in wanted:
            return record
        if time.monotonic() >= deadline:
            state = "unknown" if record is None else record.state.value
            raise TimeoutError(f"negotiation {pid} is {state} after {timeout} s")
        time.sleep(poll)
