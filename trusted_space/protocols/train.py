"""Joint training: vertical logistic regression that no party sees the inputs of.

The bank (the analyst) holds the label and some features; providers hold other features of the
same entities. Training runs as two-party secure SGD over additive shares
(:mod:`trusted_space.protocols.train_mpc`) between **the bank** (party 0) and **one designated
provider** (party 1, ``computeParty``), with the operator as the dealer of correlated randomness
— never a compute party. Every other provider secret-shares its aligned feature block to the two
compute parties once. Only the final weights are revealed, and only to whom the model mode says:

- ``analyst-held``: to the bank (the model file holds every party's weights);
- ``party-held``: each party learns its own weights (the bank also the intercept); a provider
  stores its weights under the model id
  (:func:`~trusted_space.protocols.score.store_party_weights`), where party-held scores load
  them.

Flow (analyst = bank ``B``, compute party ``C``, other providers ``P``, operator ``O``)::

    B ─align.* (PSI, kind train)──────────────▶ every provider      use #0: the alignment
    B ─train.deal {op: seed}──────────────────▶ O                   B's 32-byte seed
    B ─train.open (cohort ids, in parts)──────▶ every provider      the spec; nothing read
    per epoch e = 1..E:
      B ─train.epoch {epoch e}────────────────▶ every provider      authorize_use → receipt
          e = 1, at P: read X_P, draw seed s ─train.share (s)─▶ C;  reply to B: X_P - r(s)
          e = 1, at C: read X_C; C ─train.deal─▶ O (its seed, then derived material per epoch)
      B ⇄ train.step ⇄ C                         two opening rounds per call (train_mpc)
    B ─train.reveal──▶ C                         C's share of the weights the mode releases
         party-held: C ─train.weights─▶ P (C's share of P's weights)
    B ─train.finish──▶ every provider            (party-held: B's share of its weights) the
                                                 provider records train.model (and stores)

Enforcement: a provider calls :func:`~trusted_space.enforcement.authorize_use` (kind ``train``,
protocol ``additive``, the cohort as entities) at alignment and again at the start of **every
epoch** — each epoch's use is a ``query.use`` entry (query id ``<query>#epoch-<e>``) whose
receipt the bank checks; a refusal stops the training. Features are read only inside epoch 1's
use, after it is allowed. The compute party refuses to run an epoch it has not authorised.

What each party learns: the bank — each provider's cohort membership (PSI), one held-out loss
per epoch, and the released weights; a provider — the cohort (its own entities that are
trained on), the number of epochs, the hyper-parameters, and in party-held mode its weights; the
compute party additionally the batch schedule (row positions, no label); the operator — shapes.
No feature block, label, logit, gradient or intermediate weight is ever opened
(``docs/protocols.md``, "Training").

The plaintext reference (:func:`train_plaintext`) runs the same schedule (held-out split, epoch
orders, zero initialisation, update rule, early stopping on the same loss) in float64 numpy, with
the exact sigmoid by default or the protocol's approximation.

The operations the providers and the operator serve are in
:mod:`trusted_space.protocols.train_ops` (``register_train``, ``register_train_dealer``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trusted_space.compute import DataAccess
from trusted_space.errors import (
    ConflictError,
    TrustedSpaceError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, record_event
from trusted_space.protocols._common import encode_ids
from trusted_space.protocols._parts import fetch_rest, send_in_parts
from trusted_space.protocols.align import align
from trusted_space.protocols.score import check_use_receipt
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
from trusted_space.queries.train import (
    MAX_BATCH,
    MAX_BATCH_CELLS,
    MAX_COLUMNS,
    MAX_EPOCHS,
    MAX_ROWS,
    TrainParams,
    TrainQuery,
    TrainResult,
)
from trusted_space.store import Store
from trusted_space.transport import RemoteError, Reply, Transport

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_CELLS",
    "MAX_COLUMNS",
    "MAX_EPOCHS",
    "MAX_ROWS",
    "PlainTraining",
    "TrainParams",
    "TrainQuery",
    "TrainResult",
    "auc",
    "check_weights",
    "dealer_spec",
    "epoch_order",
    "log_loss",
    "model_sha256",
    "run_train",
    "split_rows",
    "taylor_loss",
    "train_plaintext",
    "weights_sha256",
]

_MAX_WEIGHT: Final = 1e6
_MAX_LOSS: Final = 1e6

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Ring = npt.NDArray[np.uint64]
Progress = Callable[[str, float], None]


# ----------------------------------------------------------------------------------------------
# Schedule, plaintext reference
# ----------------------------------------------------------------------------------------------


def split_rows(n: int, validation: float, seed: int) -> tuple[IntArray, IntArray]:
    """``(training rows, held-out rows)`` of a cohort of ``n``, both sorted (seeded)."""
    if n < 2:
        raise ValidationError(f"a cohort of {n} rows is too small to train on")
    rng = np.random.default_rng([seed, 0])
    perm = rng.permutation(n)
    held = min(round(n * validation), n - 1)
    return np.sort(perm[held:]).astype(np.int64), np.sort(perm[:held]).astype(np.int64)


def epoch_order(train_rows: IntArray, seed: int, epoch: int) -> IntArray:
    """The training rows in epoch ``epoch``'s order (seeded, a fresh shuffle per epoch)."""
    rng = np.random.default_rng([seed, epoch])
    return np.asarray(train_rows[rng.permutation(len(train_rows))], dtype=np.int64)


def _sigmoid(z: FloatArray) -> FloatArray:
    return Link("logistic").apply(z)


def taylor_loss(z: FloatArray, y: FloatArray) -> float:
    """Mean of ``log 2 - (2y-1)·z/2 + z²/8``: the held-out loss both trainers stop on."""
    if len(z) == 0:
        return math.nan
    return float(math.log(2.0) + np.mean(z * z / 8 - (2 * y - 1) * z / 2))


def log_loss(z: FloatArray, y: FloatArray) -> float:
    """Mean logistic loss of logits ``z`` (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) > 0.5
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        raise ValidationError("AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _stop(losses: Sequence[float], patience: int) -> bool:
    best = int(np.argmin(losses))
    return len(losses) - 1 - best >= patience


@dataclass(frozen=True)
class PlainTraining:
    """The plaintext reference's result.

    Attributes:
        intercept: the intercept.
        weights: the weights, in the input's column order.
        losses: held-out loss per epoch run (empty without a held-out split).
        epochs_run: epochs run.
        best_epoch: the epoch whose weights were kept (1-based).
        seconds: wall time per epoch.
    """

    intercept: float
    weights: FloatArray
    losses: tuple[float, ...]
    epochs_run: int
    best_epoch: int
    seconds: tuple[float, ...]

    def logits(self, x: npt.ArrayLike) -> FloatArray:
        return self.intercept + np.asarray(x, dtype=np.float64) @ self.weights


def train_plaintext(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    params: TrainParams,
    *,
    sigmoid: Callable[[FloatArray], FloatArray] | None = None,
) -> PlainTraining:
    """Logistic regression in float64 with the joint protocol's schedule (the reference).

    Args:
        x: features ``(n, k)`` in the joint layout's column order (no intercept column).
        y: labels 0/1.
        params: the hyper-parameters.
        sigmoid: the link used in the gradient: the exact sigmoid by default;
            ``params.sigmoid`` reproduces the protocol's approximation.

    Returns:
        The :class:`PlainTraining`.
    """
    features = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,):
        raise ValidationError("x must be (n, k) and y (n,)")
    link = sigmoid or _sigmoid
    design = np.hstack([np.ones((n, 1)), features])
    train_rows, valid_rows = split_rows(n, params.validation, params.seed)
    w = np.zeros(design.shape[1])
    decay = np.full(design.shape[1], params.l2)
    decay[0] = 0.0
    history: list[FloatArray] = []
    losses: list[float] = []
    seconds: list[float] = []
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        order = epoch_order(train_rows, params.seed, epoch)
        for start in range(0, len(order), params.batch_size):
            rows = order[start : start + params.batch_size]
            xb = design[rows]
            delta = link(xb @ w) - labels[rows]
            w = w - params.learning_rate * (xb.T @ delta / len(rows) + decay * w)
        history.append(w.copy())
        if len(valid_rows):
            losses.append(taylor_loss(design[valid_rows] @ w, labels[valid_rows]))
        seconds.append(time.perf_counter() - started)
        if losses and _stop(losses, params.patience):
            break
    best = int(np.argmin(losses)) if losses else len(history) - 1
    chosen = history[best]
    return PlainTraining(
        intercept=float(chosen[0]),
        weights=chosen[1:].copy(),
        losses=tuple(losses),
        epochs_run=len(history),
        best_epoch=best + 1,
        seconds=tuple(seconds),
    )


# ----------------------------------------------------------------------------------------------
# The query
# ----------------------------------------------------------------------------------------------


def model_sha256(model: Model) -> str:
    """SHA-256 (hex) of the canonical JSON of a model file (what the ledgers record)."""
    return hashlib.sha256(canonical_json(model.to_json())).hexdigest()


def weights_sha256(weights: Mapping[str, float]) -> str:
    """The digest :func:`~trusted_space.protocols.score.store_party_weights` records."""
    return hashlib.sha256(canonical_json({c: float(w) for c, w in weights.items()})).hexdigest()


def dealer_spec(n_train: int, n_valid: int, params: TrainParams, columns: int) -> dict[str, int]:
    """The shapes both compute parties declare to the dealer (it checks they agree)."""
    return {
        "nTrain": n_train,
        "nValid": n_valid,
        "batch": params.batch_size,
        "columns": columns,
        "knots": len(params.knots),
        "epochs": params.epochs,
    }


def check_weights(values: FloatArray) -> FloatArray:
    """Refuse to release weights a failed truncation made absurd (``ConflictError``)."""
    if not np.all(np.isfinite(values)) or (
        values.size and float(np.max(np.abs(values))) > _MAX_WEIGHT
    ):
        raise ConflictError(
            "the trained weights are out of range (a fixed-point truncation failed, probability "
            "about 1e-3 per training); nothing was released: rerun"
        )
    return values


def _block(w: Ring, bounds: tuple[int, int]) -> Ring:
    return np.ascontiguousarray(w[bounds[0] : bounds[1]])


# ----------------------------------------------------------------------------------------------
# The bank's driver
# ----------------------------------------------------------------------------------------------


def _bank_data(
    query: TrainQuery, data: DataAccess, cohort: Sequence[str]
) -> tuple[FloatArray, FloatArray]:
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
    if x.size and float(np.max(np.abs(x))) > query.feature_bound:
        raise ValidationError(f"the bank's features exceed the featureBound {query.feature_bound}")
    return x, y


def _call_steps(transport: Transport, peer: str, query: str, epoch: int, exchange: Exchange) -> Any:
    """Drive one epoch's program against the compute party's (two rounds per call)."""
    pending = exchange.start()
    seq = 0
    peer_done = False
    while not (exchange.done and peer_done):
        if not pending:
            raise ValidationError("training protocol deadlock")
        reply = transport.call(
            peer, "train.step", {"query": query, "epoch": epoch, "seq": seq}, pack_messages(pending)
        )
        seq += 1
        peer_done = bool(reply.header.get("done"))
        pending = exchange.feed(unpack_messages(reply.payload, max_messages=8))
        if exchange.done and not peer_done and not pending:
            raise ValidationError(f"{peer} did not finish the epoch")
    return exchange.result


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
        x_bank, y = _bank_data(query, analyst_data, cohort)
        n = len(cohort)
        d = query.columns
        offsets = query.offsets()
        train_rows, valid_rows = split_rows(n, params.validation, params.seed)
        x0 = np.zeros((n, d), dtype=np.uint64)
        x0[:, 0] = encode_ring(np.ones(n), FRAC_BITS)
        start, stop = offsets[analyst_id]
        x0[:, start:stop] = encode_ring(x_bank, FRAC_BITS)
        dealt = transport.call(
            operator_id,
            "train.deal",
            {
                "session": query.id,
                "analyst": analyst_id,
                "op": "seed",
                "parties": [analyst_id, compute],
                "spec": dealer_spec(len(train_rows), len(valid_rows), params, d),
            },
        )
        if len(dealt.payload) != SEED_BYTES or dealt.header.get("party") != 0:
            raise ValidationError("the dealer sent no seed for party 0")
        seed = dealt.payload
        layout = [{"party": p, "columns": len(cols)} for p, cols in query.layout]
        for p in query.providers:
            header = {
                "query": query.id,
                "protocol": query.protocol,
                "mode": query.mode,
                "purpose": query.purpose,
                "agreement": query.agreements[p],
                "dataset": query.datasets[p],
                "columns": list(query.features[p]),
                "idKind": query.id_kind,
                "missing": query.missing,
                "operator": operator_id,
                "computeParty": compute,
                "layout": layout,
                "params": params.to_json(),
                "entities": n,
                "featureBound": query.feature_bound,
                "modelId": query.model_id,
            }
            opened.append(p)
            send_in_parts(transport, p, "train.open", header, encode_ids(cohort))
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
                    p, "train.epoch", {"query": query.id, "epoch": epoch}, payload
                )
                receipt = reply.header.get("receipt")
                if not isinstance(receipt, dict):
                    raise VerificationError(f"{p} returned no receipt for epoch {epoch}")
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
                        {"query": query.id},
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
            total = _call_steps(
                transport,
                compute,
                query.id,
                epoch,
                Exchange(bank.epoch(epoch, order, valid_rows, params.batch_size)),
            )
            entry: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - mark}
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
            if losses and _stop(losses, params.patience):
                break
        epochs_run = len(timings["epochs"])
        best = int(np.argmin(losses)) + 1 if losses else epochs_run
        mark = time.perf_counter()
        report("releasing the model", 0.97)
        model, records = _release(
            transport, analyst_id, query, bank.history[best], best, offsets, compute
        )
        timings["finish"] = time.perf_counter() - mark
    except BaseException:
        for p in opened:
            with contextlib.suppress(RemoteError, TrustedSpaceError):
                transport.call(p, "train.abort", {"query": query.id})
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
    share: np.ndarray[Any, np.dtype[np.uint64]],
    epoch: int,
    offsets: Mapping[str, tuple[int, int]],
    compute: str,
) -> tuple[Model, dict[str, dict[str, Any]]]:
    """Reveal the weights the mode releases, build the model file, have providers record it."""
    records: dict[str, dict[str, Any]] = {}
    if query.mode == "analyst-held":
        reply = transport.call(compute, "train.reveal", {"query": query.id, "epoch": epoch})
        (theirs,) = unpack_messages(reply.payload, max_messages=1)
        if theirs.shape != share.shape:
            raise ValidationError(f"{compute} revealed a share of the wrong size")
        w = check_weights(decode_ring(share + theirs))
        weights = tuple(
            (p, tuple(zip(cols, (float(v) for v in w[offsets[p][0] : offsets[p][1]]), strict=True)))
            for p, cols in query.layout
        )
        model = Model(float(w[0]), Link("logistic"), weights, id=query.model_id)
        digest = model_sha256(model)
        for p in query.providers:
            reply = transport.call(p, "train.finish", {"query": query.id, "modelSha256": digest})
            records[p] = _record_of(p, reply, digest)
        return model, records
    mine = pack_messages([_block(share, offsets[compute])])
    reply = transport.call(compute, "train.reveal", {"query": query.id, "epoch": epoch}, mine)
    (theirs,) = unpack_messages(reply.payload, max_messages=1)
    bank = offsets[analyst_id]
    own = np.concatenate([share[:1], _block(share, bank)])
    if theirs.shape != own.shape:
        raise ValidationError(f"{compute} revealed a share of the wrong size")
    w = check_weights(decode_ring(own + theirs))
    cols = query.features[analyst_id]
    weights = ((analyst_id, tuple(zip(cols, (float(v) for v in w[1:]), strict=True))),)
    model = Model(float(w[0]), Link("logistic"), weights if cols else (), id=query.model_id)
    for p in [compute, *query.others]:
        payload = b"" if p == compute else pack_messages([_block(share, offsets[p])])
        reply = transport.call(p, "train.finish", {"query": query.id}, payload)
        records[p] = _record_of(p, reply, None)
    return model, records


def _record_of(provider: str, reply: Reply, digest: str | None) -> dict[str, Any]:
    sha = reply.header.get("sha256")
    index = reply.header.get("ledgerIndex")
    if not isinstance(sha, str) or not isinstance(index, int):
        raise ValidationError(f"{provider} did not record the model")
    if digest is not None and sha != digest:
        raise VerificationError(f"{provider} recorded another model hash")
    return {"sha256": sha, "ledgerIndex": index, "of": reply.header.get("of")}
