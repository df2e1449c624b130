"""The operator's side of joint training: the dealer of correlated randomness.

Both compute parties declare the same shapes; the dealer checks they agree, keeps one session
per training (namespace ``train.dealer``) and deals each party its seed, never the material.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any, Final

from trusted_space.compute import CallContext, ComputeNode
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
)
from trusted_space.events import record_event
from trusted_space.protocols._parts import PART_BYTES
from trusted_space.protocols.train.wire import (
    DealMaterial,
    DealSeed,
    MaterialDealt,
    SeedDealt,
    deal_key,
)
from trusted_space.protocols.train_mpc import (
    SEED_BYTES,
    batch_sizes,
    dealer_correction,
    layout_for,
    pack_messages,
)
from trusted_space.transport import Reply

__all__ = ["DEALER_NAMESPACE", "register_train_dealer"]

DEALER_NAMESPACE: Final = "train.dealer"
"""Operator store namespace of training dealer sessions (key ``<analyst>/<session>``)."""
_DEALER_SESSION: Final = "#train-dealer"


def _train_deal(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    """``train.deal``: a party's seed (once), or party 1's derived material (each batch once)."""
    node = ctx.node
    session, analyst, op = deal_key(header)
    key = f"{analyst}/{session}"
    if payload:
        raise ValidationError("train.deal takes no payload")
    if op == "seed":
        seed = DealSeed.from_header(header)
        parties = list(seed.parties)
        spec = seed.spec.to_json()
        if ctx.sender not in parties:
            raise ConflictError(f"{ctx.sender} is not a party of this training")
        party = parties.index(ctx.sender)
        with node.store.transaction() as tx:
            doc = tx.get(DEALER_NAMESPACE, key)
            if doc is None:
                if party != 0:
                    raise NotFoundError("no such training session at the dealer")
                state = node.sessions.open(_DEALER_SESSION, key)
                state["seeds"] = (secrets.token_bytes(SEED_BYTES), secrets.token_bytes(SEED_BYTES))
                state["lock"] = threading.Lock()
                body: dict[str, Any] = {"parties": parties, "spec": spec, "dealt": [], "next": {}}
            else:
                body = dict(doc.body)
                if body["parties"] != parties or body["spec"] != spec:
                    raise ConflictError("the training session exists with other parties or shapes")
            if ctx.sender in body["dealt"]:
                raise ConflictError(f"the seed of {ctx.sender} was already dealt")
            try:
                seeds = node.sessions.get(_DEALER_SESSION, key)["seeds"]
            except NotFoundError as exc:
                raise ConflictError("the dealer lost this training (restart); rerun") from exc
            body["dealt"] = [*body["dealt"], ctx.sender]
            tx.put(DEALER_NAMESPACE, key, body, expect_version=doc.version if doc else 0)
            record_event(
                tx, "train.dealt", {"session": session, "party": ctx.sender, "what": "seed"}
            )
        return Reply(SeedDealt(party).to_header(), seeds[party])
    if op != "material":
        raise ValidationError("header.op: 'seed' or 'material'")
    with node.store.transaction(readonly=True) as tx:
        doc = tx.get(DEALER_NAMESPACE, key)
    if doc is None:
        raise NotFoundError("no such training session at the dealer")
    parties = doc.body["parties"]
    spec = doc.body["spec"]
    if ctx.sender != parties[1]:
        raise ConflictError("only the compute party fetches derived material")
    sizes = batch_sizes(spec["nTrain"], spec["nValid"], spec["batch"])
    material = DealMaterial.from_header(header, spec["epochs"], len(sizes))
    epoch, first, count = material.epoch, material.first, material.count
    try:
        state = node.sessions.get(_DEALER_SESSION, key)
    except NotFoundError as exc:
        raise ConflictError("the dealer lost this training (restart); rerun") from exc
    layouts = [
        layout_for(kind, rows, spec["columns"], spec["knots"])
        for kind, rows in sizes[first : first + count]
    ]
    if sum(lay.derived_words for lay in layouts) * 8 > PART_BYTES:
        raise ValidationError("too much material for one call; ask for fewer batches")
    with state["lock"]:
        with node.store.transaction() as tx:
            current = tx.get(DEALER_NAMESPACE, key)
            if current is None:  # pragma: no cover - read above
                raise NotFoundError("no such training session at the dealer")
            body = dict(current.body)
            nexts = dict(body["next"])
            if nexts.get(str(epoch), 0) != first:
                raise ConflictError(
                    f"epoch {epoch}: batches before {nexts.get(str(epoch), 0)} were dealt; "
                    f"asked from {first}"
                )
            nexts[str(epoch)] = first + count
            body["next"] = nexts
            tx.put(DEALER_NAMESPACE, key, body, expect_version=current.version)
            record_event(
                tx,
                "train.dealt",
                {
                    "session": session,
                    "party": ctx.sender,
                    "epoch": epoch,
                    "first": first,
                    "count": count,
                },
            )
        parts = [
            dealer_correction(state["seeds"], epoch, first + i, lay)
            for i, lay in enumerate(layouts)
        ]
    return Reply(MaterialDealt(epoch, first, count).to_header(), pack_messages(parts))


def register_train_dealer(node: ComputeNode) -> None:
    """Register ``train.deal`` on the operator's node (the training dealer)."""
    node.register("train.deal", _train_deal)


# ----------------------------------------------------------------------------------------------
