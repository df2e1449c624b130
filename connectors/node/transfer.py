"""Raw-row transfer over HTTP: the node's half of the DSP 2025-1 transfer process.

The protocol — states, transitions, records, messages, the provider's decision and the consumer's
bookkeeping — lives beside negotiation in :mod:`trusted_space.contracts.transfer`. This module is
what needs the node: carrying messages to the peer over signed HTTP (the start message after the
ACK, the consumer's request and completion), opening the dataset's registered source and
streaming its rows, and the consumer's driver that waits, pulls and completes.

Threats handled here, beyond the protocol's:

- *A stolen or replayed pull token.* Every failure of the token answers the same ``401``; the
  ledger keeps the real reason (``auth.refused``). The token is never logged and never in a
  response model.
- *Memory exhaustion.* Rows are read from the source chunk by chunk and streamed; the consumer
  writes them to a file as they arrive, renamed into place only when complete.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from connectors.node import sources
from connectors.node.runtime import NodeRuntime
from trusted_space.catalog import Dataset, load_dataset
from trusted_space.contracts.transfer import (
    LIVE_STATES,
    TOKEN_NAMESPACE,
    AcceptedTransfer,
    TransferMessage,
    TransferRecord,
    TransferState,
    acknowledge_request,
    load_transfer,
    move_transfer,
    next_state,
    parse_process,
    prepare_request,
    record_pulled,
    record_served,
    spend_token,
    transfer_completion_message,
    transfer_start_message,
)
from trusted_space.contracts.transfer import accept_request as _accept
from trusted_space.contracts.transfer import process_of as _process_of
from trusted_space.contracts.transfer import receive as _receive
from trusted_space.errors import (
    ConflictError,
    NotReadyError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.identity import VerifiedRequest, record_refusal
from trusted_space.store import Transaction

__all__ = [
    "MEDIA_CSV",
    "MEDIA_NDJSON",
    "Pull",
    "accept_request",
    "open_pull",
    "process_of",
    "pull",
    "receive",
    "request_transfer",
    "send_start",
    "stream_rows",
    "wait_started",
]

log = logging.getLogger("trusted_space.transfer")

MEDIA_CSV: Final = "text/csv"
MEDIA_NDJSON: Final = "application/x-ndjson"


def _has_source(tx: Transaction, dataset_id: str) -> bool:
    return tx.get(sources.SOURCE_NAMESPACE, dataset_id) is not None


def accept_request(
    runtime: NodeRuntime, message: object, sender: VerifiedRequest
) -> AcceptedTransfer:
    """Provider: :func:`trusted_space.contracts.transfer.accept_request` with this node's setup."""
    return _accept(
        runtime.store,
        message,
        sender,
        provider=runtime.id,
        peer_url=runtime.peer_url,
        has_source=_has_source,
        consents=runtime.consents,
        now=runtime.clock(),
    )


def process_of(runtime: NodeRuntime, pid: str, sender: str) -> dict[str, Any]:
    """``GET /transfers/{pid}``: the ``TransferProcess``, for the counter-party only."""
    return _process_of(runtime.store, pid, sender)


def receive(
    runtime: NodeRuntime, pid: str, message: object, kind: TransferMessage, sender: str
) -> dict[str, Any]:
    """Either side: apply a counter-party's message (``contracts.transfer.receive``)."""
    return _receive(runtime.store, pid, message, kind, sender, now=runtime.clock())


# -- provider: the data pull ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    """A pull the token allowed: the record (token now spent), the dataset and its open source."""

    record: TransferRecord
    dataset: Dataset
    source: sources.Source


def _source_spec(tx: Transaction, dataset_id: str) -> sources.SourceSpec:
    doc = tx.get(sources.SOURCE_NAMESPACE, dataset_id)
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
    (``auth.refused``) with ``target``, the request path. The token is spent only if the source
    opens (one transaction).
    """
    now = runtime.clock()
    try:
        with runtime.transaction() as tx:
            record = spend_token(tx, pid, token or "", now)
            dataset = load_dataset(tx, record.dataset_id).dataset
            source = sources.open_source(_source_spec(tx, dataset.id))
            return Pull(record, dataset, source)
    except VerificationError as exc:
        with runtime.transaction() as tx:
            record_refusal(
                tx, exc, token=None, audience=runtime.id, method="GET", path=target, now=now
            )
        log.info("refused pull of transfer %s: %s", pid[:100], exc.reason)
        raise


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
            record_served(tx, record, rows, complete, runtime.clock())
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
    return move_transfer(
        runtime.store,
        pid,
        to,
        message=message,
        only_from=only_from,
        now=runtime.clock(),
        **changes,
    )


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
        state = parse_process(
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
                only_from=LIVE_STATES,
                reason=f"start message not delivered: {exc}",
            )
        except Exception:
            log.exception("could not terminate transfer %s", provider_pid)


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
    record, message = prepare_request(
        runtime.store,
        agreement_id,
        consumer=runtime.id,
        callback_address=runtime.url,
        peer_url=runtime.peer_url,
        purpose=purpose,
        now=runtime.clock(),
    )
    try:
        ack = runtime.client.post_json(
            f"{record.callback_address}/transfers/request", message, audience=record.counterparty
        )
        parse_process(ack, provider_pid="", consumer_pid=record.consumer_pid)
    except TrustedSpaceError as exc:
        _local_move(
            runtime,
            record.consumer_pid,
            TransferState.TERMINATED,
            message="TransferRequestRefused",
            only_from=LIVE_STATES,
            reason=f"request refused: {exc}",
        )
        raise
    return acknowledge_request(runtime.store, record.consumer_pid, ack, now=runtime.clock())


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
    current = record_pulled(
        runtime.store, consumer_pid, rows=rows, path=str(out), now=runtime.clock()
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
    state = parse_process(ack, provider_pid=record.provider_pid, consumer_pid=record.consumer_pid)
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
