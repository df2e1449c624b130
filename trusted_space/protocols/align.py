"""Entity alignment between an analyst and one provider by private set intersection (PSI).

Why: before a joint score or aggregate over a *cohort*, the analyst (a bank) must learn which of
its candidate enterprises a provider (a tax bureau) holds, without either side handing over its
list. This module runs PSI in *align* mode over a :class:`~trusted_space.transport.Transport`:
:mod:`crypto.psi` (ECDH on X25519) or, for large sets, :mod:`crypto.psi_ot` (KKRT OT extension).
The analyst is the receiver, the provider the sender, in both. The provider chooses KKRT when
the analyst declares at least ``ot_min_ids`` ids (:data:`OT_MIN_IDS` by default) and names no
method; ``align(..., psi_method=...)`` names one. With KKRT the ``align.open`` reply carries the
provider's OT setup as its payload, and the request is the extended-OT rows (64 bytes per
cuckoo bin) instead of points.

Messages (operations registered on the provider by :func:`register_align`)::

    analyst                                                     provider
    align.open     {query, agreement, dataset, purpose, kind, protocol, columns, size,
                    [epsilon], [psi: ecdh | ot]}
                   ──────────▶  authorize_use (policy, ledger: query.use) — refused: 403 + trace
                                read its key column by scanning its dataset, start hashing and
                                blinding its ids (in the background, while the analyst works)
                   ◀──────────  {session (PSI session id, fresh, chosen by the provider), receipt,
                                 psi: ecdh | ot} [+ OT setup]
    align.request  {query, dataset, part, parts, total} + PSI request bytes, in parts ≤ 16 MiB
                   ──────────▶  on the last part: PSI response (re-blinded request ‖ own points,
                                shuffled); keeps its shuffled id order for the next step
                   ◀──────────  {total, offset} + first part of the response
    align.response {query, dataset, offset}  ──────────▶  next part, until all is fetched

What each party learns (semi-honest, non-colluding; see :mod:`crypto.psi`):

* the **analyst** learns which of its ids the provider holds (in its own order), the position of
  each in the provider's shuffled order (uniformly random, so nothing beyond the match), and the
  provider's number of distinct ids;
* the **provider** learns the analyst's number of distinct ids, the query's declared use, and
  nothing about which of its ids matched. It keeps its shuffled order in
  :attr:`~trusted_space.compute.ComputeNode.sessions` (bound to the analyst that aligned) so an
  aggregate can then run over *all* its rows in that order against an encrypted indicator
  (:mod:`trusted_space.protocols.aggregate`), never learning the cohort.

Policy at alignment vs at compute. Alignment already releases information about the provider's
data (membership of the analyst's ids), so it is a use: the provider calls
:func:`~trusted_space.enforcement.authorize_use` *before reading any id*, with the kind, purpose,
protocol and columns of the enclosing query, and the use is recorded (``query.use``) and counted
(``count``) like any other. The cohort is not known yet; for an aggregate the provider evaluates
``minCohort`` against the analyst's number of distinct ids (declared in ``align.open``, then
checked against the PSI request): the cohort can only be smaller, so a list that could never
reach the minimum is refused before any id is read. The exact cohort size is evaluated again at
release, by the aggregate protocol, with a second ``authorize_use`` (so an aggregate over a PSI
cohort counts as two uses of the agreement: alignment and release). For a score, ``minCohort``
does not apply. A privacy budget (``epsilon``) named at alignment is checked (not charged) so that
a query that could not be released is refused before any id is read.

Sizes: no call carries more than one part (:data:`~trusted_space.protocols._parts.PART_BYTES`);
the provider's ids are read by scanning its dataset in chunks and exist in one message only as
their PSI points, as the protocol requires.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, Final

from crypto import psi, psi_ot
from trusted_space.budget import check_budget, record_refusal
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.enforcement import UseRequest, authorize_use
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    RefusedError,
    TrustedSpaceError,
    ValidationError,
)
from trusted_space.events import decode_event
from trusted_space.ledger import Receipt
from trusted_space.protocols._common import crypto_errors
from trusted_space.protocols._parts import fetch_rest, receive_part, reply_part, send_in_parts
from trusted_space.protocols.align_wire import (
    AlignOpen,
    AlignOpened,
    AlignReceived,
    AlignRequest,
    AlignResponse,
)
from trusted_space.transport import Reply, Transport

__all__ = [
    "ALIGN_OPERATIONS",
    "OT_MIN_IDS",
    "AlignedOrder",
    "Alignment",
    "align",
    "aligned_order",
    "alignment_session",
    "check_receipt",
    "refuse_on_budget",
    "register_align",
    "sender_roles",
]

ALIGN_OPERATIONS: Final = ("align.open", "align.request", "align.response")
OT_MIN_IDS: Final = 4096
"""Declared analyst ids from which a provider runs OT-extension PSI (:mod:`crypto.psi_ot`)
rather than ECDH when the analyst names no method: below it, ECDH's smaller fixed cost wins."""
_SCAN_ROWS: Final = 100_000
_MESSAGE_OVERHEAD: Final = 256


def sender_roles(node: ComputeNode, sender: str) -> frozenset[str]:
    """The authenticated sender's roles, if the connector plugged a lookup into the node."""
    return node.sender_roles(sender)


def alignment_session(query_id: str, dataset_id: str) -> str:
    """The provider-side session key of one alignment (sessions are per analyst already)."""
    return f"align/{query_id}/{dataset_id}"


@dataclass(frozen=True)
class AlignedOrder:
    """What a provider keeps after aligning with an analyst: its ids in the PSI-shuffled order.

    Attributes:
        analyst: the authenticated analyst that aligned.
        query_id: the query.
        agreement_id: the agreement named at alignment.
        dataset_id: the provider's dataset.
        purpose: the declared purpose.
        kind: the enclosing query's kind.
        protocol: the enclosing query's protocol.
        columns: the columns the query declared.
        ids: every id of the provider, position ``j`` being the analyst's ``positions`` value.
        receipt: the alignment's ``query.use`` receipt.
    """

    analyst: str
    query_id: str
    agreement_id: str
    dataset_id: str
    purpose: str
    kind: str
    protocol: str
    columns: tuple[str, ...]
    ids: tuple[str, ...]
    receipt: dict[str, Any]


def aligned_order(node: ComputeNode, analyst: str, query_id: str, dataset_id: str) -> AlignedOrder:
    """The finished alignment of ``analyst``'s query on ``dataset_id`` at this provider.

    Raises:
        NotFoundError: no finished alignment for this analyst, query and dataset (another
            analyst's alignment is indistinguishable from none).
    """
    state = node.sessions.get(analyst, alignment_session(query_id, dataset_id))
    order = state.get("order")
    if not isinstance(order, AlignedOrder):
        raise NotFoundError(f"alignment of query {query_id!r} is not finished")
    return order


@dataclass(frozen=True)
class Alignment:
    """What the analyst learns from aligning with one provider.

    Attributes:
        provider: the provider.
        query_id: the query.
        agreement_id: the agreement used.
        dataset_id: the provider's dataset.
        ids: the matched ids, in the analyst's input order.
        positions: for each matched id, its position in the provider's shuffled order.
        provider_size: the provider's number of distinct ids (the length of its order).
        receipt: the provider's ``query.use`` receipt for the alignment.
    """

    provider: str
    query_id: str
    agreement_id: str
    dataset_id: str
    ids: tuple[str, ...]
    positions: tuple[int, ...]
    provider_size: int
    receipt: dict[str, Any]

    @property
    def session(self) -> str:
        """The provider-side session key of this alignment."""
        return alignment_session(self.query_id, self.dataset_id)


def check_receipt(
    receipt: Mapping[str, Any], *, provider: str, query_id: str, dataset_id: str
) -> dict[str, Any]:
    """Check a provider's ``query.use`` receipt: it verifies and records *this* use.

    The signature is checked against the ``vkey`` in the receipt; whoever holds the provider's
    registered ledger key (the operator's registry) can check it against that too.

    Returns:
        The decoded ``query.use`` body.

    Raises:
        ValidationError: malformed, not verifying, or about another use.
    """
    try:
        parsed = Receipt.from_json(dict(receipt))
        vkey = receipt.get("vkey")
        if not isinstance(vkey, str) or receipt.get("participant") != provider:
            raise ValidationError("receipt names another participant or has no vkey")
        parsed.verify(vkey)
        event = decode_event(parsed.index, parsed.entry)
    except (ValueError, KeyError, TypeError, TrustedSpaceError) as exc:
        raise ValidationError(f"{provider}: the alignment receipt does not verify") from exc
    body = event.body
    if (
        event.kind != "query.use"
        or body.get("query") != query_id
        or body.get("dataset") != (dataset_id)
    ):
        raise ValidationError(f"{provider}: receipt is not for this query's use of {dataset_id}")
    return dict(body)


# ----------------------------------------------------------------------------------------------
# Provider
# ----------------------------------------------------------------------------------------------


class _Background:
    """Run one function in a thread; :meth:`wait` re-raises its exception here."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="psi-prepare", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def refuse_on_budget(
    node: ComputeNode,
    *,
    analyst: str,
    query_id: str,
    agreement_id: str,
    dataset_id: str,
    purpose: str,
    epsilon: float,
    policy_total: float | None = None,
    early: bool = True,
) -> None:
    """Refuse (recorded, with a trace) unless ``epsilon`` fits the member's budget here.

    ``early``: before the policy is read only the staff's limits are known, so only an
    exceeded staff limit refuses; after it (``early=False``, with the granting permission's
    ``epsilonTotal`` as ``policy_total``) a missing budget refuses too.
    """
    with node.store.transaction() as tx:
        check = check_budget(
            tx,
            member=analyst,
            dataset_id=dataset_id,
            epsilon=epsilon,
            policy_total=policy_total,
            agreement_id=agreement_id,
        )
        if check.allowed or (early and check.limit is None):
            return
        index = record_refusal(tx, check, query_id=query_id, purpose=purpose, at=node.clock())
    raise RefusedError(
        check.message,
        [check.step().to_json()],
        participant=node.participant_id,
        decision_index=index,
    )


def _read_keys(node: ComputeNode, dataset_id: str) -> list[str]:
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    ids: list[str] = []
    for keys, _ in node.data.scan(dataset_id, [], chunk_rows=_SCAN_ROWS):
        ids.extend(keys)
    return ids


def _state(ctx: CallContext, query: str, dataset: str) -> dict[str, Any]:
    return ctx.node.sessions.get(ctx.sender, alignment_session(query, dataset))


def _make_open(
    executor: Executor | None, ot_min_ids: int
) -> Callable[[CallContext, dict[str, Any], bytes], Reply]:
    def align_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
        node = ctx.node
        message = AlignOpen.from_header(header)
        query, agreement, dataset = message.query, message.agreement, message.dataset
        purpose, kind, protocol = message.purpose, message.kind, message.protocol
        columns, size, epsilon = message.columns, message.size, message.epsilon
        if payload:
            raise ValidationError("align.open takes no payload")
        state = node.sessions.open(ctx.sender, alignment_session(query, dataset))
        marker = object()
        if state.setdefault("owner", marker) is not marker:
            raise ConflictError(f"query {query!r} was already aligned on {dataset!r}")
        try:
            if epsilon is not None:
                refuse_on_budget(
                    node,
                    analyst=ctx.sender,
                    query_id=query,
                    agreement_id=agreement,
                    dataset_id=dataset,
                    purpose=purpose,
                    epsilon=epsilon,
                )
            grant = authorize_use(
                node,
                UseRequest(
                    query_id=query,
                    analyst=ctx.sender,
                    agreement_id=agreement,
                    dataset_id=dataset,
                    columns=columns,
                    kind=kind,
                    purpose=purpose,
                    protocol=protocol,
                    cohort_size=size if kind == "aggregate" else None,
                    epsilon=epsilon if kind == "aggregate" else None,
                    # A cohort score runs with analyst-held weights only (the strictest mode
                    # for the policy's model binding); score.run checks its mode again.
                    model="analyst-held" if kind == "score" else None,
                ),
                roles=sender_roles(node, ctx.sender),
            )
            if epsilon is not None and kind == "aggregate":
                refuse_on_budget(
                    node,
                    analyst=ctx.sender,
                    query_id=query,
                    agreement_id=agreement,
                    dataset_id=dataset,
                    purpose=purpose,
                    epsilon=epsilon,
                    policy_total=grant.epsilon_total,
                    early=False,
                )
        except BaseException:
            node.sessions.close(ctx.sender, alignment_session(query, dataset))
            raise
        session_id = psi.new_session_id()
        method = message.psi or ("ot" if size >= ot_min_ids else "ecdh")
        ids = _read_keys(node, dataset)
        sender: psi.PsiSender | psi_ot.OtPsiSender
        setup = b""
        if method == "ot":
            sender = psi_ot.OtPsiSender(ids, session_id, executor=executor, align=True)
            setup = sender.setup()
        else:
            sender = psi.PsiSender(ids, session_id, executor=executor, align=True)
        state.update(
            {
                "size": size,
                "session": session_id,
                "psi": sender,
                "prepare": _Background(sender.prepare),
                "meta": AlignedOrder(
                    analyst=ctx.sender,
                    query_id=query,
                    agreement_id=agreement,
                    dataset_id=dataset,
                    purpose=purpose,
                    kind=kind,
                    protocol=protocol,
                    columns=columns,
                    ids=(),
                    receipt=grant.receipt,
                ),
            }
        )
        return Reply(AlignOpened(session_id, grant.receipt, method).to_header(), setup)

    return align_open


def _align_request(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    message = AlignRequest.from_header(header)
    state = _state(ctx, message.query, message.dataset)
    sender = state.get("psi")
    if not isinstance(sender, psi.PsiSender | psi_ot.OtPsiSender):
        raise ConflictError("this alignment was already answered")
    size = int(state["size"])
    if isinstance(sender, psi_ot.OtPsiSender):
        max_total = psi_ot.request_size(state["session"], size)
    else:
        max_total = _MESSAGE_OVERHEAD + psi.POINT_SIZE * size
    request = receive_part(state, "request", header, payload, max_total=max_total)
    if request is None:
        return Reply(AlignReceived(header["part"] + 1).to_header())
    expected = max_total if isinstance(sender, psi_ot.OtPsiSender) else _request_size(request, size)
    if len(request) != expected:
        raise ValidationError(
            f"the PSI request is {len(request)} bytes; {size} ids declared at open make {expected}"
        )
    state["prepare"].wait()
    with crypto_errors("PSI request"):
        if isinstance(sender, psi_ot.OtPsiSender):
            response = sender.respond(request, receiver_size=size)
        else:
            response = sender.respond(request)
        order = sender.aligned_ids
    state.update(
        {
            "psi": None,
            "prepare": None,
            "response": response,
            "order": replace(state["meta"], ids=order),
        }
    )
    return _serve(state, 0)


def _request_size(request: bytes, points: int) -> int:
    """Length of a PSI request of ``points`` points: prefix, session id, counts, points, digest."""
    sid_len = request[7] if len(request) > 7 else 0
    return 8 + sid_len + 8 + psi.POINT_SIZE * points + 32


def _serve(state: dict[str, Any], offset: int) -> Reply:
    response = state.get("response")
    if not isinstance(response, bytes):
        raise ConflictError("the PSI response was already fetched")
    reply = reply_part(response, offset)
    if offset + len(reply.payload) >= len(response):
        state["response"] = None  # fetched: nothing of it stays in memory
    return reply


def _align_response(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    message = AlignResponse.from_header(header)
    return _serve(_state(ctx, message.query, message.dataset), message.offset)


def register_align(
    node: ComputeNode, *, executor: Executor | None = None, ot_min_ids: int = OT_MIN_IDS
) -> None:
    """Register the provider's alignment operations (:data:`ALIGN_OPERATIONS`) on ``node``.

    Args:
        node: the provider's compute node.
        executor: optional process pool for the provider's scalar multiplications and hashes
            (:func:`crypto.psi.psi_executor`).
        ot_min_ids: declared analyst ids from which an alignment that names no method runs
            OT-extension PSI (:data:`OT_MIN_IDS`); smaller ones run ECDH.
    """
    node.register("align.open", _make_open(executor, ot_min_ids))
    node.register("align.request", _align_request)
    node.register("align.response", _align_response)


# ----------------------------------------------------------------------------------------------
# Analyst
# ----------------------------------------------------------------------------------------------


def align(
    transport: Transport,
    provider: str,
    query_id: str,
    agreement_id: str,
    dataset_id: str,
    ids: Iterable[str],
    *,
    purpose: str,
    kind: str,
    protocol: str,
    columns: Sequence[str],
    epsilon: float | None = None,
    executor: Executor | None = None,
    psi_method: str | None = None,
) -> Alignment:
    """As the analyst: align ``ids`` with ``provider``'s dataset by PSI.

    Args:
        transport: the analyst's transport.
        provider: the provider's participant id.
        query_id: the enclosing query's id.
        agreement_id: the agreement with ``provider`` for ``dataset_id``.
        dataset_id: the provider's dataset.
        ids: the analyst's candidate ids (duplicates are dropped, first occurrence kept).
        purpose: the query's declared purpose.
        kind: the query's kind (``score``, ``aggregate``, ``train``).
        protocol: the query's protocol.
        columns: the provider columns the query will read.
        epsilon: the privacy budget the query will ask for (checked early by the provider).
        executor: optional process pool for the analyst's scalar multiplications and hashes.
        psi_method: ``ecdh`` or ``ot`` (:data:`~trusted_space.protocols.align_wire.PSI_METHODS`)
            to ask for one; by default the provider chooses by the number of ids.

    Returns:
        The :class:`Alignment`.

    Raises:
        RemoteError: the provider refused (403 with its policy trace) or failed.
        ValidationError: no ids, or a malformed answer.
    """
    distinct = list(dict.fromkeys(ids))
    if not distinct:
        raise ValidationError("nothing to align: no ids")
    message = AlignOpen(
        query=query_id,
        agreement=agreement_id,
        dataset=dataset_id,
        purpose=purpose,
        kind=kind,
        protocol=protocol,
        columns=tuple(columns),
        size=len(distinct),
        epsilon=epsilon,
        psi=psi_method,
    )
    reply = transport.call(provider, "align.open", message.to_header())
    opened = AlignOpened.from_header(reply.header, provider)
    session_id, receipt = opened.session, opened.receipt
    check_receipt(receipt, provider=provider, query_id=query_id, dataset_id=dataset_id)
    if psi_method is not None and opened.psi != psi_method:
        raise ValidationError(f"{provider} answered with {opened.psi} PSI, not {psi_method}")
    receiver: psi.PsiReceiver | psi_ot.OtPsiReceiver
    with crypto_errors(f"{provider}: PSI"):
        if opened.psi == "ot":
            receiver = psi_ot.OtPsiReceiver(distinct, session_id, executor=executor)
            request = receiver.request(reply.payload)
            max_total = psi_ot.response_limit(session_id, len(distinct))
        else:
            receiver = psi.PsiReceiver(distinct, session_id, executor=executor)
            request = receiver.request()
            max_total = _MESSAGE_OVERHEAD + psi.POINT_SIZE * (len(distinct) + psi.MAX_SET_SIZE)
    # The parts layer adds part/parts/total to the request and the offset of each AlignResponse.
    ref = AlignRequest(query_id, dataset_id).to_header()
    first = send_in_parts(transport, provider, "align.request", ref, request)
    del request  # sent: at 10^6 ids an OT request is ≈ 85 MB the rest of the session needs not
    response = fetch_rest(
        transport,
        provider,
        "align.response",
        ref,
        first,
        max_total=max_total,
    )
    with crypto_errors(f"{provider}: PSI response"):
        result = receiver.finish(response)
    if result.sender_positions is None:
        raise ValidationError(f"{provider} did not agree to alignment")
    return Alignment(
        provider=provider,
        query_id=query_id,
        agreement_id=agreement_id,
        dataset_id=dataset_id,
        ids=result.ids,
        positions=result.sender_positions,
        provider_size=result.sender_size,
        receipt=dict(receipt),
    )
