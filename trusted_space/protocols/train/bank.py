"""The bank's driver of a joint training: :func:`run_train`.

The bank aligns its cohort with every provider (PSI), runs the epochs with the compute party,
checks each provider's per-epoch ``query.use`` receipt and releases the weights as the model
mode says.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from crypto import paillier
from trusted_space.compute import DataAccess
from trusted_space.errors import (
    ConflictError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import record_event
from trusted_space.protocols._common import crypto_errors, encode_ids
from trusted_space.protocols._parts import fetch_rest, send_in_parts
from trusted_space.protocols.align import align
from trusted_space.protocols.score import check_use_receipt
from trusted_space.protocols.train.common import (
    check_weights,
    dealer_spec,
    model_sha256,
    weight_block,
)
from trusted_space.protocols.train.fold import (
    Standardised,
    check_standardised,
    fold,
    masked_request,
    masked_result,
    standardise,
)
from trusted_space.protocols.train.reference import (
    FloatArray,
    Progress,
    Ring,
    epoch_order,
    should_stop,
    split_rows,
)
from trusted_space.protocols.train.wire import (
    DealSeed,
    EpochStarted,
    Folded,
    ModelRecorded,
    Revealed,
    SeedDealt,
    StepDone,
    TrainEpoch,
    TrainFinish,
    TrainFold,
    TrainOpen,
    TrainRef,
    TrainReveal,
    TrainStep,
)
from trusted_space.protocols.train_mpc import (
    FRAC_BITS,
    SEED_BYTES,
    Exchange,
    Party,
    decode_ring,
    encode_ring,
    material_share,
    pack_messages,
    unpack_messages,
)
from trusted_space.queries.score import Link, Model
from trusted_space.queries.train import TrainQuery, TrainResult
from trusted_space.store import Store
from trusted_space.transport import RemoteError, Reply, Transport

__all__ = ["run_train"]

_MAX_LOSS: Final = 1e6


def _bank_data(
    query: TrainQuery, data: DataAccess, cohort: Sequence[str]
) -> tuple[Standardised, FloatArray]:
    columns = [*query.features[query.bank], query.label]
    found, values = data.lookup(query.datasets[query.bank], cohort, columns)
    bad = np.flatnonzero(~found | np.isnan(values).any(axis=1))
    if len(bad):
        raise ValidationError(
            f"{len(bad)} aligned entities are missing or have nulls in the bank's own dataset "
            f"(first: {[cohort[i] for i in bad[:5]]})"
        )
    x, y = values[:, :-1], values[:, -1]
    if not np.all((y == 0) | (y == 1)):
        raise ValidationError(f"the label column {query.label!r} must hold 0 or 1")
    standard = standardise(x)
    check_standardised(standard, query.features[query.bank], query.feature_bound)
    return standard, y


def _call_steps(
    transport: Transport, peer: str, query: str, epoch: int, exchange: Exchange
) -> tuple[Any, int]:
    """Drive one epoch's program against the compute party's (two rounds per call).

    Returns the program's result and the number of ``train.step`` calls it took.
    """
    pending = exchange.start()
    seq = 0
    peer_done = False
    while not (exchange.done and peer_done):
        if not pending:
            raise ValidationError("training protocol deadlock")
        step = TrainStep(query, epoch, seq)
        reply = transport.call(peer, "train.step", step.to_header(), pack_messages(pending))
        seq += 1
        peer_done = StepDone.from_header(reply.header).done
        pending = exchange.feed(unpack_messages(reply.payload, max_messages=8))
        if exchange.done and not peer_done and not pending:
            raise ValidationError(f"{peer} did not finish the epoch")
    return exchange.result, seq


def run_train(
    transport: Transport,
    analyst_id: str,
    operator_id: str,
    query: TrainQuery,
    *,
    analyst_data: DataAccess,
    analyst_store: Store | None = None,
    provider_vkeys: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train jointly as the bank (see the module docstring for the flow).

    Args:
        transport: the bank's transport.
        analyst_id: the bank's participant id (its transport authenticates as it).
        operator_id: the space operator (the dealer).
        query: the training.
        analyst_data: the bank's own data (features and label).
        analyst_store: the bank's store: the trained model's hash goes to its ledger
            (``train.model``).
        provider_vkeys: providers' ledger vkeys, to verify receipts against known keys.
        progress: called with a stage and a fraction.

    Returns:
        The :class:`TrainResult`.

    Raises:
        RemoteError: a provider or the operator refused (a policy refusal carries its trace).
        VerificationError: a receipt does not verify or does not describe this use.
    """
    if query.bank != analyst_id:
        raise ValidationError(f"$.datasets: the bank's dataset must be {analyst_id}'s own")
    report = progress or (lambda _stage, _fraction: None)
    started = time.perf_counter()
    params = query.params
    compute = str(query.compute_party)
    receipts: dict[str, dict[str, Any]] = {p: {"epochs": []} for p in query.providers}
    timings: dict[str, Any] = {"epochs": []}
    opened: list[str] = []
    try:
        held: dict[str, set[str]] = {}
        for i, p in enumerate(query.providers):
            report(f"aligning with {p} (PSI)", 0.05 * i / len(query.providers))
            alignment = align(
                transport,
                p,
                query.id,
                query.agreements[p],
                query.datasets[p],
                query.entities,
                purpose=query.purpose,
                kind="train",
                protocol=query.protocol,
                columns=query.features[p],
            )
            held[p] = set(alignment.ids)
            receipts[p]["align"] = alignment.receipt
        cohort = [e for e in query.entities if all(e in held[p] for p in query.providers)]
        if len(cohort) < 2:
            raise ValidationError(f"the aligned cohort has {len(cohort)} entities: too few")
        timings["align"] = time.perf_counter() - started
        mark = time.perf_counter()
        own, y = _bank_data(query, analyst_data, cohort)
        n = len(cohort)
        d = query.columns
        offsets = query.offsets()
        train_rows, valid_rows = split_rows(n, params.validation, params.seed)
        x0 = np.zeros((n, d), dtype=np.uint64)
        x0[:, 0] = encode_ring(np.ones(n), FRAC_BITS)
        start, stop = offsets[analyst_id]
        x0[:, start:stop] = encode_ring(own.z, FRAC_BITS)
        deal = DealSeed(
            session=query.id,
            analyst=analyst_id,
            parties=(analyst_id, compute),
            spec=dealer_spec(len(train_rows), len(valid_rows), params, d),
        )
        dealt = transport.call(operator_id, "train.deal", deal.to_header())
        SeedDealt.from_header(dealt.header, 0)
        if len(dealt.payload) != SEED_BYTES:
            raise ValidationError("the dealer sent no seed for party 0")
        seed = dealt.payload
        layout = tuple((p, len(cols)) for p, cols in query.layout)
        for p in query.providers:
            message = TrainOpen(
                query=query.id,
                protocol=query.protocol,
                mode=query.mode,
                purpose=query.purpose,
                agreement=query.agreements[p],
                dataset=query.datasets[p],
                columns=tuple(query.features[p]),
                id_kind=query.id_kind,
                missing=query.missing,
                operator=operator_id,
                compute_party=compute,
                layout=layout,
                params=params,
                entities=n,
                feature_bound=query.feature_bound,
                model_id=query.model_id or query.id,  # set so by TrainQuery already
            )
            opened.append(p)
            send_in_parts(transport, p, "train.open", message.to_header(), encode_ids(cohort))
        timings["setup"] = time.perf_counter() - mark
        bank = Party(
            0,
            x0,
            encode_ring(y, FRAC_BITS),
            params.sigmoid,
            params.learning_rate,
            params.l2,
            lambda e, b, lay: material_share(0, seed, e, b, lay),
        )
        losses: list[float] = []
        for epoch in range(1, params.epochs + 1):
            mark = time.perf_counter()
            report(
                f"epoch {epoch}/{params.epochs}: authorisations",
                0.1 + 0.85 * (epoch - 1) / params.epochs,
            )
            order = epoch_order(train_rows, params.seed, epoch)
            for p in [*query.others, compute]:
                payload = b""
                if p == compute:
                    payload = pack_messages([order.astype(np.uint64), valid_rows.astype(np.uint64)])
                reply = transport.call(
                    p, "train.epoch", TrainEpoch(query.id, epoch).to_header(), payload
                )
                receipt = dict(EpochStarted.from_header(reply.header, p, epoch).receipt)
                check_use_receipt(
                    receipt,
                    participant=p,
                    query=query.epoch_query(epoch),
                    analyst=analyst_id,
                    agreement=query.agreements[p],
                    dataset=query.datasets[p],
                    entities=cohort,
                    vkey=(provider_vkeys or {}).get(p),
                )
                receipts[p]["epochs"].append(receipt)
                if epoch == 1 and p != compute:
                    k = len(query.features[p])
                    share = fetch_rest(
                        transport,
                        p,
                        "train.fetch",
                        TrainRef(query.id).to_header(),  # fetch_rest adds TrainFetch's offset
                        reply,
                        max_total=8 * n * k,
                    )
                    if len(share) != 8 * n * k:
                        raise ValidationError(f"{p} shared a block of the wrong size")
                    block = np.frombuffer(share, dtype="<u8").astype(np.uint64).reshape(n, k)
                    s, t = offsets[p]
                    x0[:, s:t] = block
            report(
                f"epoch {epoch}/{params.epochs}: training with {compute}",
                0.1 + 0.85 * (epoch - 0.5) / params.epochs,
            )
            total, steps = _call_steps(
                transport,
                compute,
                query.id,
                epoch,
                Exchange(bank.epoch(epoch, order, valid_rows, params.batch_size)),
            )
            entry: dict[str, Any] = {
                "epoch": epoch,
                "seconds": time.perf_counter() - mark,
                "steps": steps,  # train.step calls: the epoch's round trips
            }
            if len(valid_rows):
                loss = math.log(2.0) + float(decode_ring(total, 32)[0]) / (8 * len(valid_rows))
                if not math.isfinite(loss) or abs(loss) > _MAX_LOSS:
                    raise ConflictError(
                        "the held-out loss is out of range (a fixed-point truncation failed, "
                        "probability about 1e-3 per training): rerun"
                    )
                losses.append(loss)
                entry["loss"] = loss
            timings["epochs"].append(entry)
            report(
                f"epoch {epoch}/{params.epochs} done"
                + (f" (held-out loss {losses[-1]:.4f})" if losses else ""),
                0.1 + 0.85 * epoch / params.epochs,
            )
            if losses and should_stop(losses, params.patience):
                break
        epochs_run = len(timings["epochs"])
        best = int(np.argmin(losses)) + 1 if losses else epochs_run
        mark = time.perf_counter()
        report("releasing the model", 0.97)
        model, records = _release(
            transport, analyst_id, query, bank.history[best], best, offsets, own
        )
        timings["finish"] = time.perf_counter() - mark
    except BaseException:
        for p in opened:
            with contextlib.suppress(RemoteError, TrustedSpaceError):
                transport.call(p, "train.abort", TrainRef(query.id).to_header())
        raise
    digest = model_sha256(model)
    if analyst_store is not None:
        with analyst_store.transaction() as tx:
            index = record_event(
                tx,
                "train.model",
                {
                    "query": query.id,
                    "model": query.model_id,
                    "mode": query.mode,
                    "of": "model",
                    "sha256": digest,
                    "epochs": epochs_run,
                    "bestEpoch": best,
                    "providers": list(query.providers),
                    "partyWeights": {p: r["sha256"] for p, r in records.items()}
                    if query.mode == "party-held"
                    else None,
                },
            )
        records[analyst_id] = {"sha256": digest, "ledgerIndex": index, "of": "model"}
    timings["total"] = time.perf_counter() - started
    return TrainResult(
        query_id=query.id,
        mode=query.mode,
        model=model,
        model_sha256=digest,
        cohort=n,
        train_rows=len(train_rows),
        valid_rows=len(valid_rows),
        epochs_run=epochs_run,
        best_epoch=best,
        losses=tuple(losses),
        receipts=receipts,
        records=records,
        timings=timings,
    )


def _release(
    transport: Transport,
    analyst_id: str,
    query: TrainQuery,
    share: Ring,
    epoch: int,
    offsets: Mapping[str, tuple[int, int]],
    own: Standardised,
) -> tuple[Model, dict[str, dict[str, Any]]]:
    """Open the weights the mode releases on the raw scale; the providers record the model.

    The fold: :mod:`trusted_space.protocols.train.fold`.
    """
    compute = str(query.compute_party)
    reveal = TrainReveal(query.id, epoch).to_header()
    reply = transport.call(compute, "train.reveal", reveal)
    Revealed.from_header(reply.header)
    (theirs,) = unpack_messages(reply.payload, max_messages=1)
    bank = weight_block(share, offsets[analyst_id])
    if theirs.shape != bank.shape:
        raise ValidationError(f"{compute} revealed a share of the wrong size")
    bank_weights, correction = fold(check_weights(decode_ring(bank + theirs)), own.mean, own.scale)
    intercept = share[:1].copy()
    folded: dict[str, FloatArray] = {analyst_id: bank_weights}
    held = query.mode == "analyst-held"
    engine = None
    if held:
        public, private = paillier.generate_keypair()
        engine = paillier.PaillierEngine(public, private, workers=0)
    try:
        for p in query.providers:
            block = weight_block(share, offsets[p])
            if engine is None:
                message = TrainFold(query.id)
                payload = pack_messages([block])
            else:
                request = masked_request(block, engine)
                message = TrainFold(
                    query.id, engine.public_key.to_jwk(), request.encrypted.to_json()
                )
                payload = pack_messages([request.masked])
            reply = transport.call(p, "train.fold", message.to_header(), payload)
            answer = Folded.from_header(reply.header, query.mode)
            if engine is None or answer.folded is None:
                (mine,) = unpack_messages(reply.payload, max_messages=1)
                if mine.shape != (1,):
                    raise ValidationError(f"{p} sent no share of its correction")
                offset = mine[0]
            else:
                with crypto_errors(f"{p}'s folded weights"):
                    ciphertexts = paillier.CiphertextVector.load(
                        answer.folded, engine.public_key, exponent=0
                    )
                    folded[p], offset = masked_result(ciphertexts, len(block), engine)
            intercept = (intercept + np.uint64(offset)).astype(np.uint64)
    finally:
        if engine is not None:
            engine.close()
    reply = transport.call(compute, "train.intercept", TrainRef(query.id).to_header())
    (theirs,) = unpack_messages(reply.payload, max_messages=1)
    if theirs.shape != (1,):
        raise ValidationError(f"{compute} sent no share of the intercept")
    b = float(decode_ring(intercept + theirs)[0]) - correction
    if not math.isfinite(b):
        raise ConflictError("the trained intercept is out of range: nothing was released: rerun")
    records: dict[str, dict[str, Any]] = {}
    parties = query.layout if held else [(analyst_id, query.features[analyst_id])]
    weights = tuple(
        (p, tuple(zip(cols, (float(v) for v in folded[p]), strict=True)))
        for p, cols in parties
        if cols
    )
    model = Model(b, Link("logistic"), weights, id=query.model_id)
    digest = model_sha256(model) if held else None
    for p in query.providers:
        reply = transport.call(p, "train.finish", TrainFinish(query.id, digest).to_header())
        records[p] = _record_of(p, reply, digest)
    return model, records


def _record_of(provider: str, reply: Reply, digest: str | None) -> dict[str, Any]:
    recorded = ModelRecorded.from_header(reply.header, provider)
    if digest is not None and recorded.sha256 != digest:
        raise VerificationError(f"{provider} recorded another model hash")
    return {"sha256": recorded.sha256, "ledgerIndex": recorded.ledger_index, "of": recorded.of}
