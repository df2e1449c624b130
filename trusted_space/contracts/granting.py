"""How a provider grants agreements: automatically, by policy, or held for its staff.

Why: a provider node that signs every request automatically lets any member collect agreements
as fast as it can ask (and, before limits were kept per member, reset them that way). A provider
chooses, node-wide and per offer (the offer's setting wins):

- ``auto``: sign every request for a published offer the requester may see (the default, and
  the behaviour before this module);
- ``policy``: sign automatically when the requester satisfies the offer's ``assignee`` and
  ``role`` constraints of at least one permission (who it is and what its credential says: the
  only parts of a policy that are known at negotiation time); otherwise hold it for the staff;
- ``staff``: hold every request for the staff's approval.

A held request simply stays ``REQUESTED`` (DSP has no "pending" state and none is invented: the
consumer sees a valid ``REQUESTED`` negotiation until the staff approve — the provider then
agrees as usual — or reject it — the provider terminates it). The hold is a document beside the
negotiation (:data:`HELD_NAMESPACE`), so the staff can list what waits for them.

Mode changes are ledgered (``contracts.grant_mode``; this module is its only writer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from trusted_space.errors import ValidationError
from trusted_space.events import record_event
from trusted_space.store import Transaction

__all__ = [
    "GRANT_EVENT",
    "GRANT_MODES",
    "GRANT_NAMESPACE",
    "HELD_NAMESPACE",
    "GrantMode",
    "Hold",
    "grant_mode",
    "hold",
    "holds",
    "offer_admits",
    "release_hold",
    "set_grant_mode",
]

GrantMode = Literal["auto", "policy", "staff"]
GRANT_MODES: Final[tuple[GrantMode, ...]] = ("auto", "policy", "staff")
GRANT_NAMESPACE: Final = "contracts.grant"
"""Document namespace of modes: key ``node`` (the default) or ``offer:<offer id>``."""
HELD_NAMESPACE: Final = "contracts.held"
"""Document namespace of held requests (key: the provider's process id)."""
GRANT_EVENT: Final = "contracts.grant_mode"


def _check_mode(mode: object) -> GrantMode:
    for known in GRANT_MODES:
        if mode == known:
            return known
    raise ValidationError(f"mode must be one of {list(GRANT_MODES)}, not {mode!r}")


def set_grant_mode(
    tx: Transaction, mode: str, *, offer_id: str | None = None, at: datetime
) -> GrantMode:
    """Set how requests are granted, node-wide (``offer_id=None``) or for one offer."""
    checked = _check_mode(mode)
    if offer_id is not None and (not isinstance(offer_id, str) or not offer_id):
        raise ValidationError("offer id must be a non-empty string")
    key = "node" if offer_id is None else f"offer:{offer_id}"
    tx.put(GRANT_NAMESPACE, key, {"mode": checked})
    record_event(tx, GRANT_EVENT, {"offer": offer_id, "mode": checked}, time=at)
    return checked


def grant_mode(tx: Transaction, offer_id: str | None) -> GrantMode:
    """The mode for ``offer_id``: its own setting, else the node's, else ``auto``."""
    keys = ([f"offer:{offer_id}"] if offer_id else []) + ["node"]
    for key in keys:
        doc = tx.get(GRANT_NAMESPACE, key)
        if doc is not None:
            return _check_mode(doc.body.get("mode"))
    return "auto"


def _constraints(rule: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    value = rule.get("constraint", [])
    return [c for c in value if isinstance(c, Mapping)] if isinstance(value, list) else []


def _values(right: Any) -> set[str]:
    if isinstance(right, str):
        return {right}
    if isinstance(right, list):
        return {v for v in right if isinstance(v, str)}
    return set()


def _holds(constraint: Mapping[str, Any], requester: str, roles: frozenset[str]) -> bool | None:
    left, op = constraint.get("leftOperand"), constraint.get("operator")
    right = _values(constraint.get("rightOperand"))
    if left == "assignee":
        seen = {requester}
    elif left == "role":
        seen = set(roles)
    else:
        return None  # not decidable at negotiation time
    if op in ("eq", "isAnyOf"):
        return bool(seen & right)
    if op in ("neq", "isNoneOf"):
        return not (seen & right)
    if op == "isAllOf":
        return right <= seen
    return False


def offer_admits(offer: Mapping[str, Any], requester: str, roles: Iterable[str]) -> bool:
    """Whether some permission of ``offer`` admits ``requester`` by ``assignee`` and ``role``."""
    held_roles = frozenset(roles)
    permissions = offer.get("permission", [])
    if not isinstance(permissions, list):
        return False
    for rule in permissions:
        if not isinstance(rule, Mapping):
            continue
        outcomes = [_holds(c, requester, held_roles) for c in _constraints(rule)]
        if all(o is not False for o in outcomes):
            return True
    return False


@dataclass(frozen=True)
class Hold:
    """A request held for the staff.

    Attributes:
        pid: the provider's process id of the negotiation.
        consumer: who asked.
        dataset_id: for which dataset.
        offer_id: under which offer.
        mode: the mode that held it.
        since: ISO 8601 instant it was held.
    """

    pid: str
    consumer: str
    dataset_id: str
    offer_id: str
    mode: GrantMode
    since: str


def hold(
    tx: Transaction,
    *,
    pid: str,
    consumer: str,
    dataset_id: str,
    offer_id: str,
    mode: GrantMode,
    at: datetime,
) -> Hold:
    """Record that a request waits for the staff (idempotent: the first hold is kept)."""
    existing = tx.get(HELD_NAMESPACE, pid)
    if existing is not None:
        return _hold_of(pid, existing.body)
    body = {
        "consumer": consumer,
        "datasetId": dataset_id,
        "offerId": offer_id,
        "mode": mode,
        "since": at.astimezone(UTC).isoformat(),
    }
    tx.put(HELD_NAMESPACE, pid, body)
    return _hold_of(pid, body)


def _hold_of(pid: str, body: Mapping[str, Any]) -> Hold:
    return Hold(
        pid,
        str(body.get("consumer", "")),
        str(body.get("datasetId", "")),
        str(body.get("offerId", "")),
        _check_mode(body.get("mode")),
        str(body.get("since", "")),
    )


def holds(tx: Transaction) -> list[Hold]:
    """Every request still held, oldest first."""
    found = [_hold_of(doc.key, doc.body) for doc in tx.scan(HELD_NAMESPACE)]
    return sorted(found, key=lambda h: h.since)


def release_hold(tx: Transaction, pid: str) -> bool:
    """Forget the hold of ``pid`` (approved or rejected); whether there was one."""
    return tx.delete(HELD_NAMESPACE, pid)
