"""Calls a node makes to its operator: catalog federation, checkpoint witnessing, revocations.

Why each exists:

- :func:`push_catalog`: the operator hosts the space's federated catalog; a provider sends its
  whole DSP catalog (signed request) whenever it publishes, so browsers find it in one place. The
  operator filters it per caller; the provider's own ``/catalog/request`` stays authoritative.
- :func:`submit_checkpoint`: a log that nobody else has seen can be rewritten unnoticed. The node
  signs a checkpoint and sends it with a consistency proof from the last size the witness
  cosigned for it; the witness cosigns only an extension of that history. The cosigned notes are
  kept here (namespace :data:`COSIGNED_NAMESPACE`) and published on ``GET /ledger/cosignatures``,
  so an auditor can later check that today's log still extends every head the witness vouched
  for (``trusted-space ledger verify``). The request names the size its proof starts from; if the
  witness cosigned a later head whose answer never arrived (either side crashed, a timeout), it
  says so (``witnessSize``) instead of reporting a fork, and the node proves again from there.
- :func:`sync_revocations`: the operator pushes each new revocation list, but a node that was down
  misses the push; the periodic pull closes that gap (the list is signed and its sequence only
  grows, so a stale or forged answer is refused).

Failure policy: these run in background loops and after publishing; a transport problem or a
refusal by the operator is logged and reported as ``False`` / ``None``, never raised. A node that
finds its own log inconsistent with a checkpoint it published (:class:`ConflictError` from
``Ledger.checkpoint``) does raise: that is tampering, not weather.
"""

from __future__ import annotations

import logging
import threading

import httpx

from connectors.node.runtime import NodeRuntime
from trusted_space.catalog import list_datasets, to_dsp_catalog
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    NotReadyError,
    RemoteError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
    WitnessSizeError,
)
from trusted_space.ledger import open_checkpoint
from trusted_space.notes import parse_note, parse_vkey, verify_cosignature, verify_note
from trusted_space.store import Transaction

__all__ = [
    "COSIGNED_NAMESPACE",
    "OPERATOR_CALL_TIMEOUT",
    "cosigned_notes",
    "cosigned_version",
    "flag_silent_logs",
    "plain_client",
    "push_catalog",
    "store_cosigned",
    "submit_checkpoint",
    "sync_revocations",
]

log = logging.getLogger("trusted_space.federation")

COSIGNED_NAMESPACE = "ledger_cosigned"
"""Checkpoints of this node's log that the witness cosigned; key = zero-padded tree size."""

OPERATOR_CALL_TIMEOUT = 10.0
"""Seconds for background calls (pushes, pulls): short, so a dead peer never stalls a loop."""

_submit_lock = threading.Lock()


def plain_client(runtime: NodeRuntime, timeout: float = OPERATOR_CALL_TIMEOUT) -> httpx.Client:
    """An unsigned httpx client for public endpoints, on the node's transport (tests route it)."""
    return httpx.Client(
        timeout=min(timeout, runtime.settings.request_timeout),
        transport=runtime.transport,
        follow_redirects=False,
        verify=runtime.tls,
    )


# -- cosigned notes kept by this node --------------------------------------------------------


def _key(size: int) -> str:
    return f"{size:020d}"


def store_cosigned(tx: Transaction, note: str, size: int) -> None:
    """Keep a cosigned checkpoint of this node's log (the caller has verified it)."""
    tx.put(COSIGNED_NAMESPACE, _key(size), {"note": note, "size": size})


def cosigned_notes(tx: Transaction) -> list[str]:
    """Every cosigned checkpoint this node holds, oldest (smallest) first."""
    return [str(d.body["note"]) for d in tx.scan(COSIGNED_NAMESPACE)]


def cosigned_version(tx: Transaction, note: str) -> str | None:
    """The cosigned form of exactly this checkpoint note, if this node holds one."""
    try:
        text = parse_note(note).text
        size = int(text.split("\n", 2)[1])
    except (ValidationError, ValueError, IndexError):
        return None
    doc = tx.get(COSIGNED_NAMESPACE, _key(size))
    if doc is None:
        return None
    cosigned = str(doc.body["note"])
    try:
        same = parse_note(cosigned).text == text
    except ValidationError:
        return None
    return cosigned if same else None


def _last_cosigned(runtime: NodeRuntime) -> tuple[int, str | None]:
    """Size and note of the newest cosigned checkpoint held here (``(0, None)`` if none)."""
    with runtime.transaction(readonly=True) as tx:
        docs = tx.scan(COSIGNED_NAMESPACE)
    if not docs:
        return 0, None
    return int(docs[-1].body["size"]), str(docs[-1].body["note"])


# -- catalog ---------------------------------------------------------------------------------


def push_catalog(runtime: NodeRuntime) -> bool:
    """Send this node's full DSP catalog to the operator's federated catalog; True if accepted.

    Only a provider has a catalog to federate; other nodes return ``False`` without a call.
    """
    anchor = runtime.anchor
    if anchor is None or "provider" not in runtime.roles:
        return False
    if runtime.credential_token() is None:
        log.info("catalog not pushed: %s is not admitted yet", runtime.id)
        return False
    with runtime.transaction(readonly=True) as tx:
        catalog = to_dsp_catalog(runtime.id, list_datasets(tx), runtime.url)
    try:
        runtime.client.request(
            "PUT",
            f"{anchor.url}/operator/catalog/{runtime.id}",
            audience=anchor.operator_id,
            json_body=catalog,
        )
    except (NotReadyError, RemoteError) as exc:
        log.warning("catalog not pushed to the operator: %s", exc)
        return False
    return True


# -- witness ---------------------------------------------------------------------------------


def submit_checkpoint(runtime: NodeRuntime) -> str | None:
    """Sign a checkpoint, have the operator's witness cosign it, keep the cosigned note.

    When the log has not grown since the newest cosigned checkpoint, that one is returned
    without a call (each cosignature is an entry in the operator's own ledger).

    Returns:
        The cosigned note, or ``None`` when there is no operator, it is unreachable, or its
        witness refused (the reason is logged).

    Raises:
        ConflictError: this node's own log no longer matches a checkpoint it published.
    """
    anchor = runtime.anchor
    if anchor is None:
        return None
    with _submit_lock:
        last, last_note = _last_cosigned(runtime)
        if last_note is not None and last == runtime.ledger.size():
            return last_note  # nothing new to witness: spare the witness's log an entry
        note = runtime.ledger.checkpoint()
        head = open_checkpoint(note, runtime.ledger.verifier)
        try:
            proof = runtime.ledger.consistency_proof(last, head.size) if last <= head.size else []
        except ValidationError:
            proof = []
        try:
            try:
                cosigned = _cosign(runtime, note, proof, last)
            except WitnessSizeError as exc:
                # The witness cosigned a later head whose answer never reached us (a crash or a
                # timeout on either side): prove from the size it holds instead.
                old = exc.witness_size
                if old > head.size:
                    raise
                log.info("witness holds %s at size %d, not %d", head.origin, old, last)
                proof = runtime.ledger.consistency_proof(old, head.size)
                cosigned = _cosign(runtime, note, proof, old)
        except (NotReadyError, RemoteError, ConflictError, VerificationError, NotFoundError) as exc:
            log.warning("checkpoint %d not cosigned: %s", head.size, exc)
            return None
        try:
            verify_note(cosigned, runtime.ledger.verifier)
            verify_cosignature(cosigned, parse_vkey(anchor.witness_vkey))
            if parse_note(cosigned).text != parse_note(note).text:
                raise VerificationError("the witness returned another checkpoint")
        except (VerificationError, ValidationError) as exc:
            log.error("the witness's answer for checkpoint %d does not verify: %s", head.size, exc)
            return None
        with runtime.transaction() as tx:
            store_cosigned(tx, cosigned, head.size)
        return cosigned


def _cosign(runtime: NodeRuntime, note: str, proof: list[bytes], old: int) -> str:
    """Have the witness cosign ``note``; ``proof`` runs from size ``old``.

    Raises:
        WitnessSizeError: the witness last cosigned another size than ``old`` (its size is in
            the error); other errors as the witness or the transport raise them.
    """
    if runtime.witness is not None:  # the operator's own log: its witness is local
        return runtime.witness.cosign(
            note,
            runtime.ledger.verifier,
            proof,
            now=int(runtime.clock().timestamp()),
            old_size=old,
        )
    anchor = runtime.anchor
    assert anchor is not None
    if runtime.credential_token() is None:
        raise NotReadyError(f"{runtime.id} is not admitted yet")
    try:
        answer = runtime.client.post_json(
            f"{anchor.url}/operator/witness/cosign",
            {"checkpoint": note, "proof": [p.hex() for p in proof], "old": old},
            audience=anchor.operator_id,
        )
    except RemoteError as exc:
        size = exc.problem.get("witnessSize") if exc.status == 409 else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            raise WitnessSizeError(str(exc), witness_size=size) from exc
        raise
    if not isinstance(answer, dict) or not isinstance(answer.get("note"), str):
        raise VerificationError("the witness answered without a note")
    return str(answer["note"])


def flag_silent_logs(runtime: NodeRuntime) -> list[str]:
    """Operator only: record each member log not submitted for ``witness_silence`` seconds.

    A log nobody witnesses can be rewritten from its last cosigned head on; the operator writes
    ``witness.silent`` to its own ledger once per silence, and ``GET /operator/witness/logs``
    shows the alarm ``not-submitting``. Returns the origins newly flagged.
    """
    witness = runtime.witness
    if witness is None:
        return []
    with runtime.transaction(readonly=True) as tx:
        origins = [
            parse_vkey(str(doc.body["ledgerVkey"])).name
            for doc in tx.scan("participant")  # routers.operator.PARTICIPANT_NAMESPACE
            if doc.body.get("ledgerVkey")
        ]
    now = int(runtime.clock().timestamp())
    return witness.flag_silent(origins, now, int(runtime.settings.witness_silence))


# -- revocations -----------------------------------------------------------------------------


def sync_revocations(runtime: NodeRuntime) -> int | None:
    """Fetch the operator's signed revocation list and apply it; return how many were new.

    ``None`` when there is no operator, it is unreachable, or its answer does not verify (logged).
    The operator itself has nothing to fetch (``0``).
    """
    anchor = runtime.anchor
    directory = runtime.directory
    if anchor is None or directory is None:
        return None
    if runtime.is_operator:
        return 0
    try:
        with plain_client(runtime) as http:
            response = http.get(f"{anchor.url}/operator/revocations")
        response.raise_for_status()
        token = response.json()["token"]
        with runtime.transaction() as tx:
            return directory.apply_revocation_list(tx, token)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("revocation list not fetched from the operator: %s", exc)
    except ConflictError as exc:
        log.warning("operator served an older revocation list than applied here: %s", exc)
    except TrustedSpaceError as exc:
        log.error("operator's revocation list refused: %s", exc)
    return None
