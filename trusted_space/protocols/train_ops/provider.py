"""A provider's side of joint training: the ``train.*`` operations it serves.

It authorises every epoch as a use before it reads, shares its features with the two compute
parties, and (as compute party) runs the party program step by step.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from crypto import paillier
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.enforcement import UseRequest, authorize_use
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    RefusedError,
    TrustedSpaceError,
    ValidationError,
)
from trusted_space.events import record_event
from trusted_space.protocols._common import crypto_errors, decode_ids
from trusted_space.protocols._parts import receive_part, reply_part
from trusted_space.protocols.align import sender_roles
from trusted_space.protocols.score import store_party_weights, weight_stats
from trusted_space.protocols.train import check_weights, dealer_spec, weights_sha256
from trusted_space.protocols.train.common import weight_block
from trusted_space.protocols.train.fold import (
    check_standardised,
    fold,
    masked_fold,
    split_offset,
    standardise,
)
from trusted_space.protocols.train.wire import (
    DealMaterial,
    DealSeed,
    EpochStarted,
    Folded,
    MaterialDealt,
    ModelRecorded,
    Revealed,
    SeedDealt,
    ShareReceived,
    StepDone,
    TrainEpoch,
    TrainFetch,
    TrainFinish,
    TrainFold,
    TrainOffset,
    TrainOpen,
    TrainOpened,
    TrainReceived,
    TrainRef,
    TrainReveal,
    TrainShare,
    TrainStep,
    TrainWeights,
)
from trusted_space.protocols.train_mpc import (
    FRAC_BITS,
    SEED_BYTES,
    Exchange,
    Layout,
    Party,
    batch_sizes,
    decode_ring,
    encode_ring,
    expand,
    layout_for,
    material_share,
    pack_messages,
    unpack_messages,
)
from trusted_space.queries.train import TrainParams
from trusted_space.transport import Reply

__all__ = ["TRAIN_OPERATIONS", "register_train"]

TRAIN_OPERATIONS: Final = (
    "train.open",
    "train.epoch",
    "train.share",
    "train.fetch",
    "train.step",
    "train.reveal",
    "train.weights",
    "train.fold",
    "train.offset",
    "train.intercept",
    "train.finish",
    "train.abort",
)
"""Operations a provider serves for training (:func:`register_train`)."""
_SESSION_PREFIX: Final = "train/"
_DEALT_BYTES: Final = 8 * 1024 * 1024

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# Provider operations
# ----------------------------------------------------------------------------------------------


def _session_key(query: str) -> str:
    return _SESSION_PREFIX + query


def _state(ctx: CallContext, query: str, analyst: str | None = None) -> dict[str, Any]:
    state = ctx.node.sessions.get(analyst or ctx.sender, _session_key(query))
    if "spec" not in state or "ids" not in state:
        raise ConflictError(f"training {query!r} is not open here")
    return state


def _train_open(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    query = TrainOpen.key(header)
    key = _session_key(query)
    if header.get("part", 0) == 0:
        message = TrainOpen.from_header(header)
        operator = message.operator
        expected_operator = node.operator
        if expected_operator is not None and operator != expected_operator:
            raise ValidationError(f"header.operator: {operator!r} is not this space's operator")
        layout = list(message.layout)
        compute = message.compute_party
        columns = list(message.columns)
        blocks = dict(layout)
        if blocks.get(node.participant_id) != len(columns):
            raise ValidationError("header.layout: this provider's block does not match columns")
        if layout[0][0] != ctx.sender or layout[1][0] != compute or compute == ctx.sender:
            raise ValidationError("header.layout: the bank first, then the compute party")
        spec = {
            "query": query,
            "purpose": message.purpose,
            "agreement": message.agreement,
            "dataset": message.dataset,
            "columns": columns,
            "mode": message.mode,
            "idKind": message.id_kind,
            "missing": message.missing,
            "operator": operator,
            "compute": compute,
            "layout": layout,
            "params": message.params,
            "entities": message.entities,
            "featureBound": message.feature_bound,
            "modelId": message.model_id,
        }
        state = node.sessions.open(ctx.sender, key)
        if "spec" in state or "opening" in state:
            raise ConflictError(f"training {query!r} is already open here")
        state["opening"] = spec
    else:
        state = node.sessions.get(ctx.sender, key)
        if "opening" not in state:
            raise ConflictError(f"training {query!r} was not being opened")
    spec = state["opening"]
    data = receive_part(state, "ids", header, payload, max_total=129 * spec["entities"])
    if data is None:
        return Reply(TrainReceived(header.get("part", 0) + 1).to_header())
    ids = decode_ids(data, spec["entities"], spec["idKind"])
    if len(set(ids)) != len(ids):
        raise ValidationError("payload: an entity appears twice")
    state.update({"spec": state.pop("opening"), "ids": ids, "epoch": 0, "lock": threading.Lock()})
    if spec["compute"] == node.participant_id:
        d = 1 + sum(k for _, k in spec["layout"])
        state.update({"x": np.zeros((len(ids), d), dtype=np.uint64), "shared": set()})
    return Reply(TrainOpened(query, len(ids)).to_header())


def _offsets(layout: Sequence[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    at = 1
    for p, k in layout:
        out[p] = (at, at + k)
        at += k
    return out


def _missing_refusal(
    node: ComputeNode, ids: Sequence[str], rows: IntArray, why: str, index: int
) -> RefusedError:
    listed = [ids[i] for i in rows[:1000]]
    message = f"{len(rows)} of {len(ids)} entities {why} at {node.participant_id}"
    step = {
        "rule": "missing",
        "index": None,
        "rule_id": None,
        "left_operand": "entity",
        "operator": "isAllOf",
        "right_operand": "held",
        "seen": len(rows),
        "outcome": "violated",
        "blocking": True,
        "message": message,
        "refused_entities": listed,
    }
    return RefusedError(message, [step], participant=node.participant_id, decision_index=index)


def _read_features(node: ComputeNode, state: dict[str, Any], grant: Any) -> FloatArray:
    """The provider's columns for the cohort (after the use was allowed), standardised.

    The missing rule applied; the mean and scale stay in the session, for the fold at the release.
    """
    spec = state["spec"]
    ids: list[str] = state["ids"]
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    found, x = node.data.lookup(spec["dataset"], ids, spec["columns"])
    holes = np.isnan(x)
    bad = np.flatnonzero(~found | holes.any(axis=1))
    if len(bad):
        if spec["missing"] == "fail":
            raise _missing_refusal(
                node, ids, bad, "are not held or have nulls", grant.decision_index
            )
        table = grant.dataset.dataset.table
        defaults = [table.field(c).impute_default for c in spec["columns"]]
        unheld = bool((~found).any())
        gaps = [unheld or bool(g) for g in np.asarray(holes.any(axis=0)).tolist()]
        lacking = [
            c for c, v, g in zip(spec["columns"], defaults, gaps, strict=True) if g and v is None
        ]
        if lacking:
            raise _missing_refusal(
                node,
                ids,
                bad,
                f"are missing and {lacking} publish no imputeDefault",
                grant.decision_index,
            )
        fill = np.array([0.0 if v is None else v for v in defaults])
        x[holes] = np.broadcast_to(fill, x.shape)[holes]
    standard = standardise(x)
    state.update({"mean": standard.mean, "scale": standard.scale})
    check_standardised(standard, spec["columns"], spec["featureBound"])
    return standard.z


def _train_epoch(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    node = ctx.node
    state = _state(ctx, TrainRef.from_header(header).query)
    spec = state["spec"]
    params: TrainParams = spec["params"]
    epoch = TrainEpoch.from_header(header, params.epochs).epoch
    compute = spec["compute"] == node.participant_id
    with state["lock"]:
        if epoch != state["epoch"] + 1:
            raise ConflictError(f"expected epoch {state['epoch'] + 1}, got {epoch}")
        exchange = state.get("exchange")
        if compute and exchange is not None and not exchange.done:
            raise ConflictError(f"epoch {state['epoch']} has not finished")
        if compute:
            schedule = _schedule(state, payload, epoch)
        elif payload:
            raise ValidationError("train.epoch takes no payload here")
        grant = authorize_use(
            node,
            UseRequest(
                query_id=f"{spec['query']}#epoch-{epoch}",
                analyst=ctx.sender,
                agreement_id=spec["agreement"],
                dataset_id=spec["dataset"],
                columns=tuple(spec["columns"]),
                kind="train",
                purpose=spec["purpose"],
                protocol="additive",
                entities=tuple(state["ids"]),
            ),
            roles=sender_roles(node, ctx.sender),
        )
        state["epoch"] = epoch
        out = b""
        if epoch == 1:
            values = encode_ring(_read_features(node, state, grant), FRAC_BITS)
            start, stop = _offsets(spec["layout"])[node.participant_id]
            if compute:
                state["x"][:, start:stop] = values
            else:
                out = _share_features(ctx, state, values)
        if compute:
            _start_epoch(ctx, state, epoch, schedule)
    reply_header = EpochStarted(spec["query"], epoch, grant.receipt).to_header()
    if out:
        reply = reply_part(out, 0, reply_header)
        if len(reply.payload) == len(out):
            state["shareOut"] = None  # all of it is in this reply
        return reply
    return Reply(reply_header)


def _share_features(ctx: CallContext, state: dict[str, Any], values: Any) -> bytes:
    """Split ``values`` into ``(X - r, r)``: ``r``'s seed to the compute party, ``X - r`` back."""
    node = ctx.node
    spec = state["spec"]
    if node.transport is None:
        raise ValidationError(f"{node.participant_id} has no transport")
    seed = secrets.token_bytes(SEED_BYTES)
    n, k = values.shape
    share = TrainShare(spec["query"], ctx.sender, n, k)
    node.transport.call(spec["compute"], "train.share", share.to_header(), seed)
    masked = values - expand(seed, 0, 0, n * k).reshape(n, k)
    out = np.ascontiguousarray(masked, dtype="<u8").tobytes()
    state["shareOut"] = out
    return out


def _train_fetch(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    state = _state(ctx, TrainRef.from_header(header).query)
    data = state.get("shareOut")
    if not isinstance(data, bytes):
        raise ConflictError("no share is waiting to be fetched")
    offset = TrainFetch.from_header(header, len(data)).offset
    reply = reply_part(data, offset)
    if offset + len(reply.payload) >= len(data):
        state["shareOut"] = None
    return reply


def _train_share(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At the compute party: a provider's seed for its ``r`` (its share of that block is ``r``)."""
    analyst, query = TrainShare.key(header)
    state = _state(ctx, query, analyst)
    spec = state["spec"]
    if spec["compute"] != ctx.node.participant_id:
        raise ConflictError("this node is not the training's compute party")
    blocks = dict(spec["layout"])
    if ctx.sender not in blocks or ctx.sender in (analyst, ctx.node.participant_id):
        raise ConflictError(f"{ctx.sender} is not a sharing provider of this training")
    with state["lock"]:
        if ctx.sender in state["shared"]:
            raise ConflictError(f"{ctx.sender} already shared its features")
        message = TrainShare.from_header(header, len(state["ids"]), blocks[ctx.sender])
        n, k = message.rows, message.columns
        if len(payload) != SEED_BYTES:
            raise ValidationError(f"payload: a {SEED_BYTES}-byte seed")
        start, stop = _offsets(spec["layout"])[ctx.sender]
        state["x"][:, start:stop] = expand(payload, 0, 0, n * k).reshape(n, k)
        state["shared"].add(ctx.sender)
    return Reply(ShareReceived(spec["query"], len(state["shared"])).to_header())


def _rows_array(values: Any, n: int, what: str) -> IntArray:
    rows = np.asarray(values, dtype=np.uint64).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValidationError(f"payload: {what} out of range")
    return rows


def _schedule(state: dict[str, Any], payload: bytes, epoch: int) -> tuple[IntArray, IntArray]:
    """The epoch's training order and held-out rows from the bank (checked: a partition)."""
    n = len(state["ids"])
    messages = unpack_messages(payload, max_messages=2)
    if len(messages) != 2:
        raise ValidationError("payload: the epoch's order and the held-out rows")
    order = _rows_array(messages[0], n, "order")
    valid = _rows_array(messages[1], n, "held-out rows")
    seen = np.zeros(n, dtype=np.int64)
    np.add.at(seen, order, 1)
    np.add.at(seen, valid, 1)
    if len(order) == 0 or not np.all(seen == 1):
        raise ValidationError("payload: order and held-out rows must partition the cohort")
    if epoch > 1 and not np.array_equal(valid, state["valid"]):
        raise ValidationError("payload: the held-out rows changed between epochs")
    state["valid"] = valid
    return order, valid


def _dealer_material(
    ctx: CallContext, state: dict[str, Any]
) -> Callable[[int, int, Layout], dict[str, Any]]:
    """The compute party's material source: its seed's stream plus the dealer's derived parts."""
    node = ctx.node
    spec = state["spec"]
    analyst = ctx.sender
    cache: dict[tuple[int, int], np.ndarray[Any, np.dtype[np.uint64]]] = {}

    def material(epoch: int, batch: int, layout: Layout) -> dict[str, Any]:
        if node.transport is None:
            raise ValidationError(f"{node.participant_id} has no transport to the operator")
        if (epoch, batch) not in cache:
            cache.clear()
            sizes = state["sizes"]
            count = 0
            total = 0
            for kind, rows in sizes[batch:]:
                words = layout_for(kind, rows, layout.columns, layout.knots).derived_words
                if count and (total + words) * 8 > _DEALT_BYTES:
                    break
                count += 1
                total += words
            deal = DealMaterial(spec["query"], analyst, epoch, batch, count)
            reply = node.transport.call(spec["operator"], "train.deal", deal.to_header())
            parts = unpack_messages(reply.payload, max_messages=count)
            if len(parts) != count or MaterialDealt.from_header(reply.header) != MaterialDealt(
                epoch, batch, count
            ):
                raise ValidationError("the dealer sent material for other batches")
            for i, part in enumerate(parts):
                cache[(epoch, batch + i)] = part
        correction = cache.pop((epoch, batch))
        return material_share(1, state["seed"], epoch, batch, layout, correction)

    return material


def _start_epoch(
    ctx: CallContext, state: dict[str, Any], epoch: int, schedule: tuple[IntArray, IntArray]
) -> None:
    """At the compute party: build its party state (epoch 1) and the epoch's program."""
    node = ctx.node
    spec = state["spec"]
    params: TrainParams = spec["params"]
    order, valid = schedule
    if epoch == 1:
        others = {p for p, _ in spec["layout"][2:]}
        if state["shared"] != others:
            missing = sorted(others - state["shared"])
            raise ConflictError(f"features of {missing} were not shared yet")
        if node.transport is None:
            raise ValidationError(f"{node.participant_id} has no transport to the operator")
        d = state["x"].shape[1]
        deal = DealSeed(
            session=spec["query"],
            analyst=ctx.sender,
            parties=(ctx.sender, node.participant_id),
            spec=dealer_spec(len(order), len(valid), params, d),
        )
        reply = node.transport.call(spec["operator"], "train.deal", deal.to_header())
        SeedDealt.from_header(reply.header, 1)
        if len(reply.payload) != SEED_BYTES:
            raise ValidationError("the dealer sent no seed for party 1")
        state["seed"] = reply.payload
        state["sizes"] = batch_sizes(len(order), len(valid), params.batch_size)
        state["party"] = Party(
            1,
            state["x"],
            None,
            params.sigmoid,
            params.learning_rate,
            params.l2,
            _dealer_material(ctx, state),
        )
    elif len(order) + len(valid) != len(state["ids"]):  # pragma: no cover - _schedule checks
        raise ValidationError("the schedule does not cover the cohort")
    party: Party = state["party"]
    state["exchange"] = Exchange(party.epoch(epoch, order, valid, params.batch_size))
    state["seq"] = 0


def _train_step(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At the compute party: the bank's messages in, its own messages out (train_mpc rounds)."""
    state = _state(ctx, TrainRef.from_header(header).query)
    if state["spec"]["compute"] != ctx.node.participant_id:
        raise ConflictError("this node is not the training's compute party")
    with state["lock"]:
        step = TrainStep.from_header(header)
        epoch, seq = step.epoch, step.seq
        exchange: Exchange | None = state.get("exchange")
        if exchange is None or epoch != state["epoch"]:
            raise ConflictError(f"epoch {epoch} is not running here")
        if seq != state["seq"]:
            raise ConflictError(f"expected step {state['seq']}, got {seq}")
        state["seq"] = seq + 1
        messages = unpack_messages(payload, max_messages=8)
        try:
            replies = (exchange.start() if seq == 0 else []) + exchange.feed(messages)
        except TrustedSpaceError:
            raise
        except (ValueError, TypeError) as exc:  # a malformed message from the bank
            raise ValidationError(f"training step failed: {exc}") from exc
    done = StepDone(state["spec"]["query"], exchange.done)
    return Reply(done.to_header(), pack_messages(replies))


def _train_reveal(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At the compute party: its shares of the weights go to their parties.

    Each other provider gets its block, the bank its own; the intercept waits for every fold.
    """
    node = ctx.node
    state = _state(ctx, TrainRef.from_header(header).query)
    spec = state["spec"]
    if spec["compute"] != node.participant_id:
        raise ConflictError("this node is not the training's compute party")
    if payload:
        raise ValidationError("train.reveal takes no payload")
    with state["lock"]:
        if state.get("revealed"):
            raise ConflictError("the weights were already revealed")
        exchange = state.get("exchange")
        if exchange is None or not exchange.done:
            raise ConflictError("the training has not finished an epoch")
        epoch = TrainReveal.from_header(header, state["epoch"]).epoch
        party: Party = state["party"]
        share = party.history[epoch]
        offsets = _offsets(spec["layout"])
        state.update(
            {
                "revealed": True,
                "shareC": weight_block(share, offsets[node.participant_id]),
                "intercept": share[:1].copy(),
                "offsetFrom": set(),
            }
        )
    if node.transport is None:
        raise ValidationError(f"{node.participant_id} has no transport")
    for p, _ in spec["layout"][2:]:
        node.transport.call(
            p,
            "train.weights",
            TrainWeights(spec["query"], ctx.sender).to_header(),
            pack_messages([weight_block(share, offsets[p])]),
        )
    bank = offsets[spec["layout"][0][0]]
    return Reply(
        Revealed(spec["query"], epoch).to_header(), pack_messages([weight_block(share, bank)])
    )


def _train_weights(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At a sharing provider: the compute party's share of its weights."""
    message = TrainWeights.from_header(header)
    state = _state(ctx, message.query, message.analyst)
    spec = state["spec"]
    if ctx.sender != spec["compute"]:
        raise ConflictError(f"{ctx.sender} sends no weights in this training")
    if "shareC" in state:
        raise ConflictError("the compute party's share already arrived")
    (share,) = unpack_messages(payload, max_messages=1)
    if share.shape != (len(spec["columns"]),):
        raise ValidationError("payload: a share of this provider's weights")
    state["shareC"] = share
    return Reply(TrainRef(spec["query"]).to_header())


def _train_fold(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At every provider: fold its weights back to its raw scale.

    Its correction goes into the intercept's shares (:mod:`trusted_space.protocols.train.fold`).
    """
    node = ctx.node
    state = _state(ctx, TrainRef.from_header(header).query)
    spec = state["spec"]
    message = TrainFold.from_header(header, spec["mode"])
    k = len(spec["columns"])
    with state["lock"]:
        share_c = state.get("shareC")
        if share_c is None or "mean" not in state:
            raise ConflictError("the compute party's share has not arrived")
        if state.get("folded"):
            raise ConflictError("this provider's weights were already folded")
        (share_b,) = unpack_messages(payload, max_messages=1)
        if share_b.shape != (k,):
            raise ValidationError("payload: the bank's share of this provider's weights")
        state["folded"] = True
    mean, scale = state["mean"], state["scale"]
    if message.key is None or message.masks is None:
        standard = check_weights(decode_ring(share_b + share_c))
        weights, correction = fold(standard, mean, scale)
        state["weights"] = dict(zip(spec["columns"], (float(v) for v in weights), strict=True))
        offset, mine = split_offset(correction)
        reply = Reply(Folded(spec["query"]).to_header(), pack_messages([np.array([mine])]))
    else:
        with crypto_errors("header.key"):
            key = paillier.PaillierPublicKey.from_jwk(message.key)
        with crypto_errors("header.masks"):
            masks = paillier.CiphertextVector.load(message.masks, key, exponent=0)
        with paillier.PaillierEngine(key, workers=0) as engine:
            folded, offset = masked_fold(share_b, share_c, masks, mean, scale, engine)
        reply = Reply(Folded(spec["query"], folded.to_json()).to_header())
    if spec["compute"] == node.participant_id:
        _add_offset(state, node.participant_id, offset)
    else:
        if node.transport is None:
            raise ValidationError(f"{node.participant_id} has no transport")
        node.transport.call(
            spec["compute"],
            "train.offset",
            TrainOffset(spec["query"], ctx.sender).to_header(),
            pack_messages([np.array([offset])]),
        )
    return reply


def _add_offset(state: dict[str, Any], provider: str, offset: np.uint64) -> None:
    with state["lock"]:
        if "offsetFrom" not in state:
            raise ConflictError("the weights were not revealed yet")
        if provider in state["offsetFrom"]:
            raise ConflictError(f"{provider} already sent its share of the intercept")
        state["offsetFrom"].add(provider)
        state["intercept"] = (state["intercept"] + np.uint64(offset)).astype(np.uint64)


def _train_offset(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At the compute party: a sharing provider's share of its correction."""
    message = TrainOffset.from_header(header)
    state = _state(ctx, message.query, message.analyst)
    spec = state["spec"]
    if spec["compute"] != ctx.node.participant_id:
        raise ConflictError("this node is not the training's compute party")
    if ctx.sender not in {p for p, _ in spec["layout"][2:]}:
        raise ConflictError(f"{ctx.sender} is not a sharing provider of this training")
    (offset,) = unpack_messages(payload, max_messages=1)
    if offset.shape != (1,):
        raise ValidationError("payload: one ring element")
    _add_offset(state, ctx.sender, offset[0])
    return Reply(TrainRef(spec["query"]).to_header())


def _train_intercept(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At the compute party: its share of the intercept, once every provider folded."""
    state = _state(ctx, TrainRef.from_header(header).query)
    spec = state["spec"]
    if spec["compute"] != ctx.node.participant_id:
        raise ConflictError("this node is not the training's compute party")
    if payload:
        raise ValidationError("train.intercept takes no payload")
    providers = {p for p, _ in spec["layout"][1:]}
    with state["lock"]:
        if state.get("offsetFrom") != providers:
            raise ConflictError("not every provider has folded its weights yet")
        if state.get("interceptSent"):
            raise ConflictError("the intercept share was already sent")
        state["interceptSent"] = True
        intercept = state["intercept"]
    return Reply(TrainRef(spec["query"]).to_header(), pack_messages([intercept]))


def _train_finish(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """At every provider: record the trained model by hash (party-held: store its weights)."""
    node = ctx.node
    state = _state(ctx, TrainRef.from_header(header).query)
    spec = state["spec"]
    if state["epoch"] < 1:
        raise ConflictError("no epoch ran")
    if spec["mode"] == "analyst-held":
        if payload:
            raise ValidationError("analyst-held: train.finish takes no payload")
        digest = TrainFinish.from_header(header, spec["mode"]).model_sha256 or ""
        of = "model"
    else:
        weights = state.get("weights")
        if not isinstance(weights, dict):
            raise ConflictError("the weights were not folded yet")
        if payload:
            raise ValidationError("train.finish takes no payload")
        stats = (
            weight_stats(weights, (x for _, x in node.data.scan(spec["dataset"], list(weights))))
            if node.data is not None
            else None
        )
        # Owned by the analyst that trained it: another member can neither use nor replace it.
        store_party_weights(
            node.store, ctx.sender, spec["modelId"], weights, dataset=spec["dataset"], stats=stats
        )
        digest = weights_sha256(weights)
        of = "weights"
    with node.store.transaction() as tx:
        index = record_event(
            tx,
            "train.model",
            {
                "query": spec["query"],
                "analyst": ctx.sender,
                "model": spec["modelId"],
                "mode": spec["mode"],
                "of": of,
                "sha256": digest,
                "epochs": state["epoch"],
                "dataset": spec["dataset"],
                "columns": list(spec["columns"]),
            },
        )
    node.sessions.close(ctx.sender, _session_key(spec["query"]))
    return Reply(ModelRecorded(spec["query"], digest, index, of).to_header())


def _train_abort(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    query = TrainRef.from_header(header).query
    ctx.node.sessions.get(ctx.sender, _session_key(query))  # NotFoundError if none
    ctx.node.sessions.close(ctx.sender, _session_key(query))
    return Reply(TrainRef(query).to_header())


def register_train(node: ComputeNode) -> None:
    """Register the provider's training operations (:data:`TRAIN_OPERATIONS`) on ``node``."""
    node.register("train.open", _train_open)
    node.register("train.epoch", _train_epoch)
    node.register("train.share", _train_share)
    node.register("train.fetch", _train_fetch)
    node.register("train.step", _train_step)
    node.register("train.reveal", _train_reveal)
    node.register("train.weights", _train_weights)
    node.register("train.fold", _train_fold)
    node.register("train.offset", _train_offset)
    node.register("train.intercept", _train_intercept)
    node.register("train.finish", _train_finish)
    node.register("train.abort", _train_abort)
