"""Submitted model parts: proposed by an analyst, checked by the provider, decided by its staff.

The analyst proposes the weights of a provider's columns; the provider checks them against its
rules on its own rows; its staff approve or reject them.

Why: ``model eq party-held`` binds a score to weights the provider holds. Besides a joint
training, the other way weights get there is this one: the analyst submits its model part
(``model.submit``, a signed node-to-node call; the weights travel to the provider, whose columns
they weigh, and never further), the provider measures them on its rows
(:func:`~trusted_space.protocols.score.weights.weight_stats`) and checks the model rules of the
agreement's policy (``modelMinColumns``, ``modelMaxWeight``, ``modelMaxShare``; a broken rule is
a :class:`RefusedError` whose trace names it), and the submission waits for the provider's
staff. On approval the weights are stored as the submitter's party-held model (source
``approved``), which only that member can score with.

Ledger, at the provider (one writer each, here): ``model.submitted`` (owner, model, dataset,
agreement, columns, digest, whether the rules held), ``model.approved`` / ``model.rejected``
(owner, model, digest, the staff's reason). The analyst's node records its side by digest
(``model.sent``, ``model.approval``) in :mod:`connectors.node`; neither ledger holds a weight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from trusted_space.catalog import TS_NAMESPACE, load_dataset
from trusted_space.compute import CallContext, ComputeNode
from trusted_space.contracts import load_agreement
from trusted_space.errors import (
    ConflictError,
    NotFoundError,
    RefusedError,
    ValidationError,
    VerificationError,
)
from trusted_space.events import canonical_json, record_event
from trusted_space.policy import MODEL_RULES, from_odrl
from trusted_space.protocols._common import header_str
from trusted_space.protocols.score.weights import (
    PartyModel,
    clean_weights,
    model_key,
    store_party_weights,
    weight_stats,
    weights_digest,
)
from trusted_space.store import Store
from trusted_space.transport import Reply, Transport

__all__ = [
    "SENT_NAMESPACE",
    "SUBMISSION_NAMESPACE",
    "Submission",
    "decide_submission",
    "load_submission",
    "model_status",
    "register_approval",
    "send_model",
    "submissions",
    "submit_model",
]

SUBMISSION_NAMESPACE: Final = "model.submission"
"""Provider store namespace of submitted model parts (key: owner and model id)."""
_MAX_COLUMNS: Final = 4096
State = Literal["pending", "approved", "rejected"]
_RELATION: Final = {"gteq": ">=", "lteq": "<="}
_STAT: Final = {
    "modelMinColumns": "columns",
    "modelMaxWeight": "maxWeight",
    "modelMaxShare": "maxShare",
}


@dataclass(frozen=True)
class Submission:
    """One submitted model part at the provider.

    Attributes:
        owner: the submitting member (the authenticated sender).
        model_id: its id for the model.
        dataset: the provider's dataset whose columns it weighs.
        agreement: the agreement it was submitted under.
        weights: column -> weight.
        sha256: digest of the weights.
        stats: what the provider measured of them on its rows.
        state: ``pending``, ``approved`` or ``rejected``.
        reason: the staff's reason for the decision (``None`` while pending).
    """

    owner: str
    model_id: str
    dataset: str
    agreement: str
    weights: dict[str, float]
    sha256: str
    stats: dict[str, float]
    state: State
    reason: str | None = None

    def to_json(self, *, weights: bool = False) -> dict[str, Any]:
        """The submission as JSON; ``weights=True`` only for the provider's own staff."""
        doc: dict[str, Any] = {
            "owner": self.owner,
            "model": self.model_id,
            "dataset": self.dataset,
            "agreement": self.agreement,
            "columns": list(self.weights),
            "sha256": self.sha256,
            "stats": dict(self.stats),
            "state": self.state,
            "reason": self.reason,
        }
        if weights:
            doc["weights"] = dict(self.weights)
        return doc


def _from_body(body: Mapping[str, Any]) -> Submission:
    state = body["state"]
    return Submission(
        owner=str(body["owner"]),
        model_id=str(body["model"]),
        dataset=str(body["dataset"]),
        agreement=str(body["agreement"]),
        weights={str(c): float(w) for c, w in body["weights"].items()},
        sha256=str(body["sha256"]),
        stats={str(k): float(v) for k, v in body["stats"].items()},
        state="approved"
        if state == "approved"
        else "rejected"
        if state == "rejected"
        else "pending",
        reason=None if body.get("reason") is None else str(body["reason"]),
    )


def _rule_steps(
    policy_rules: list[tuple[int, str | None, str, str, Any]], stats: Mapping[str, float]
) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for index, rule_id, left, op, right in policy_rules:
        value = float(stats[_STAT[left]])
        limit = float(str(right))
        holds = value >= limit if op == "gteq" else value <= limit
        shown: float | int = int(value) if left == "modelMinColumns" else round(value, 6)
        message = f"{_STAT[left]} {shown} " + (
            f"is {_RELATION[op]} {right}" if holds else f"breaks {left} {_RELATION[op]} {right}"
        )
        steps.append(
            {
                "rule": "permission",
                "index": index,
                "rule_id": rule_id,
                "left_operand": left,
                "operator": op,
                "right_operand": right,
                "seen": shown,
                "outcome": "satisfied" if holds else "violated",
                "blocking": not holds,
                "message": message,
                "refused_entities": [],
            }
        )
    return steps


def submit_model(
    node: ComputeNode,
    owner: str,
    model_id: str,
    agreement_id: str,
    dataset_id: str,
    weights: Mapping[str, float],
    *,
    at: datetime,
) -> Submission:
    """Check a submitted model part at the provider and keep it for the staff (``pending``).

    Refused (:class:`RefusedError`, nothing kept) when the agreement is not the submitter's for
    this dataset here, or a model rule of the agreement's policy breaks on the provider's rows
    (its trace names the rule). A second submission under the same (owner, id) is a
    :class:`ConflictError`: a model id names one set of weights.
    """
    clean = clean_weights(weights)
    if len(clean) > _MAX_COLUMNS:
        raise ValidationError(f"weights: at most {_MAX_COLUMNS} columns")
    if node.data is None:
        raise NotFoundError(f"{node.participant_id} holds no data")
    with node.store.transaction(readonly=True) as tx:
        try:
            signed = load_agreement(tx, agreement_id)
        except NotFoundError:
            signed = None
        if (
            signed is None
            or signed.assigner != node.participant_id
            or signed.assignee != owner
            or signed.target != dataset_id
        ):
            raise RefusedError(
                f"agreement {agreement_id!r} is not {owner!r}'s for {dataset_id!r} here",
                participant=node.participant_id,
            )
        table = load_dataset(tx, dataset_id).dataset.table
        prior = tx.get(SUBMISSION_NAMESPACE, model_key(owner, model_id))
    offered = set(node.data.columns(dataset_id))
    unknown = [c for c in clean if c not in offered or table.field(c).grade >= 5]
    if unknown:
        raise ValidationError(f"weights: {dataset_id!r} offers no column(s) {unknown}")
    if prior is not None:
        raise ConflictError(f"model {model_id!r} was already submitted here (choose a new id)")
    stats = weight_stats(clean, (x for _, x in node.data.scan(dataset_id, list(clean))))
    policy = from_odrl(
        {k: v for k, v in signed.agreement.items() if not k.startswith(TS_NAMESPACE)}
    )
    rules = [
        (i, r.uid, c.left_operand, c.operator, c.right_operand)
        for i, r in enumerate(policy.permissions)
        for c in r.constraints
        if c.left_operand in MODEL_RULES
    ]
    steps = _rule_steps(rules, stats)
    digest = weights_digest(clean)
    broken = [s for s in steps if s["blocking"]]
    submission = Submission(
        owner, model_id, dataset_id, agreement_id, clean, digest, stats, "pending"
    )
    with node.store.transaction() as tx:
        record_event(
            tx,
            "model.submitted",
            {
                "owner": owner,
                "model": model_id,
                "dataset": dataset_id,
                "agreement": agreement_id,
                "columns": list(clean),
                "sha256": digest,
                "rulesHeld": not broken,
                "trace": steps,
            },
            time=at,
        )
        if not broken:
            body = submission.to_json(weights=True)
            tx.put(SUBMISSION_NAMESPACE, model_key(owner, model_id), body)
    if broken:
        raise RefusedError(
            "the model part breaks the provider's rules: "
            + "; ".join(str(s["message"]) for s in broken),
            steps,
            participant=node.participant_id,
        )
    return submission


def load_submission(store: Store, owner: str, model_id: str) -> Submission:
    """``owner``'s submission ``model_id`` (:class:`NotFoundError` if it has none by that id)."""
    with store.transaction(readonly=True) as tx:
        doc = tx.get(SUBMISSION_NAMESPACE, model_key(owner, model_id))
    if doc is None:
        raise NotFoundError(f"no submitted model {model_id!r} of {owner!r} here")
    return _from_body(doc.body)


def submissions(store: Store, state: State | None = None) -> list[Submission]:
    """The submissions kept here (all, or in ``state``), by owner and id."""
    with store.transaction(readonly=True) as tx:
        docs = [doc.body for doc in tx.scan(SUBMISSION_NAMESPACE)]
    found = [_from_body(d) for d in docs]
    return [s for s in found if state is None or s.state == state]


def decide_submission(
    store: Store, owner: str, model_id: str, *, approve: bool, reason: str
) -> Submission:
    """The provider's staff decide a pending submission; approval stores the party-held model.

    Approved: the weights become ``owner``'s party-held model ``model_id`` (source ``approved``),
    ``model.approved`` on the ledger. Rejected: ``model.rejected``. Either with the reason.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("reason: say why")
    current = load_submission(store, owner, model_id)
    if current.state != "pending":
        raise ConflictError(f"submission {model_id!r} of {owner!r} is already {current.state}")
    decided = Submission(
        **{**current.__dict__, "state": "approved" if approve else "rejected", "reason": reason}
    )
    model: PartyModel | None = None
    if approve:
        model = store_party_weights(
            store,
            owner,
            model_id,
            current.weights,
            source="approved",
            dataset=current.dataset,
            stats=current.stats,
        )
    with store.transaction() as tx:
        tx.put(SUBMISSION_NAMESPACE, model_key(owner, model_id), decided.to_json(weights=True))
        record_event(
            tx,
            "model.approved" if approve else "model.rejected",
            {
                "owner": owner,
                "model": model_id,
                "dataset": current.dataset,
                "sha256": model.sha256 if model is not None else current.sha256,
                "reason": reason,
            },
        )
    return decided


def _submit(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError("payload: the weights as a JSON object") from exc
    if not isinstance(doc, dict):
        raise ValidationError("payload: the weights as a JSON object")
    submission = submit_model(
        ctx.node,
        ctx.sender,
        header_str(header, "model"),
        header_str(header, "agreement"),
        header_str(header, "dataset"),
        doc,
        at=ctx.node.clock(),
    )
    return Reply({"model": submission.model_id, "sha256": submission.sha256, "state": "pending"})


def _status(ctx: CallContext, header: dict[str, Any], payload: bytes) -> Reply:
    if payload:
        raise ValidationError("model.status takes no payload")
    found = load_submission(ctx.node.store, ctx.sender, header_str(header, "model"))
    return Reply({"model": found.model_id, "sha256": found.sha256, "state": found.state})


SENT_NAMESPACE: Final = "model.sent"
"""Analyst store namespace of the model parts it submitted (key: provider and model id)."""


def send_model(
    transport: Transport,
    store: Store,
    provider: str,
    model_id: str,
    agreement_id: str,
    dataset_id: str,
    weights: Mapping[str, float],
) -> dict[str, Any]:
    """The analyst's side of a submission: send it to ``provider`` and record it by digest.

    ``model.sent`` on the analyst's ledger (provider, model, dataset, agreement, columns, the
    digest the provider answered); a provider's refusal raises its :class:`RemoteError` with the
    trace naming the broken rule, and nothing is recorded.
    """
    clean = clean_weights(weights)
    header = {"model": model_id, "agreement": agreement_id, "dataset": dataset_id}
    reply = transport.call(provider, "model.submit", header, canonical_json(clean))
    digest = weights_digest(clean)
    if reply.header.get("sha256") != digest:
        raise VerificationError(f"{provider} acknowledged other weights than the ones sent")
    with store.transaction() as tx:
        tx.put(
            SENT_NAMESPACE,
            model_key(provider, model_id),
            {"provider": provider, "model": model_id, "sha256": digest, "state": "pending"},
        )
        record_event(
            tx,
            "model.sent",
            {
                "provider": provider,
                "model": model_id,
                "dataset": dataset_id,
                "agreement": agreement_id,
                "columns": list(clean),
                "sha256": digest,
            },
        )
    return {"provider": provider, "model": model_id, "sha256": digest, "state": "pending"}


def model_status(
    transport: Transport, store: Store, provider: str, model_id: str
) -> dict[str, Any]:
    """Ask ``provider`` how the analyst's submission stands; record a decision once.

    The first time the provider answers ``approved`` or ``rejected`` for the digest sent,
    ``model.approval`` (provider, model, digest, state) goes on the analyst's ledger, so the
    approval is a record in both ledgers.
    """
    reply = transport.call(provider, "model.status", {"model": model_id})
    state = str(reply.header.get("state"))
    digest = str(reply.header.get("sha256"))
    if state not in ("pending", "approved", "rejected"):
        raise VerificationError(f"{provider} answered an unknown state")
    with store.transaction() as tx:
        key = model_key(provider, model_id)
        sent = tx.get(SENT_NAMESPACE, key)
        if sent is None:
            raise NotFoundError(f"no model {model_id!r} was submitted to {provider!r} from here")
        if sent.body.get("sha256") != digest:
            raise VerificationError(f"{provider} holds other weights than the ones sent")
        if state != "pending" and sent.body.get("state") == "pending":
            tx.put(SENT_NAMESPACE, key, {**sent.body, "state": state})
            record_event(
                tx,
                "model.approval",
                {"provider": provider, "model": model_id, "sha256": digest, "state": state},
            )
    return {"provider": provider, "model": model_id, "sha256": digest, "state": state}


def register_approval(node: ComputeNode) -> None:
    """Register ``model.submit`` and ``model.status`` on a provider's node."""
    node.register("model.submit", _submit)
    node.register("model.status", _status)
