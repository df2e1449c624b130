"""What every test of a real-process space does to it, written once.

The integration tests (a space started by :func:`connectors.spaces.space.up`) and the crash harness
(``tests/crash``: its own fork server, so that it can kill nodes) build the same small space: an
operator, ``tax-bureau`` publishing one dataset under ``count``-limited offers, ``bank-a``
negotiating for them, and members that sign with the credential the operator issued.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from connectors.client.http import SignedClient
from trusted_space.keys import SigningKey

__all__ = ["count_limited_offer", "member_credential", "settled", "tax_records"]


def member_credential(
    name: str, key: SigningKey, operator_url: str, operator: str, *, timeout: float = 30.0
) -> str:
    """Member ``name``'s membership credential, as the operator's registry holds it.

    A member may ask the operator without a credential header (the operator knows every member),
    so the client signs with the member's key alone.
    """
    with SignedClient(name, key, lambda: None, timeout=timeout) as bare:
        record = bare.get_json(f"{operator_url}/operator/participants/{name}", audience=operator)
    return str(record["credential"])


def tax_records(
    dataset_id: str,
    title: str,
    columns: Sequence[str],
    *,
    bound: float | None = None,
    **extra: str,
) -> dict[str, Any]:
    """The tax bureau's zone dataset: opaque ``entity`` keys and a float column per ``columns``.

    ``bound``: the declared range of every column (a score needs one); ``extra`` adds
    top-level fields (a ``description``, say).
    """
    declared = {} if bound is None else {"bound": bound}
    return {
        "id": dataset_id,
        "title": title,
        **extra,
        "tier": "zone",
        "keyColumn": "entity",
        "keyKind": "opaque",
        "responsibility": {"id": "tax-collection", "title": "Tax collection"},
        "resource": {"id": "tax-records", "title": "Enterprise tax records"},
        "table": {
            "name": "tax_paid",
            "fields": [
                {"name": "entity", "type": "string", "grade": 1},
                *({"name": c, "type": "float", "grade": 3, **declared} for c in columns),
            ],
        },
    }


def count_limited_offer(
    count: int,
    *,
    purpose: str,
    protocols: Sequence[str],
    log: bool = False,
    models: Sequence[str] = ("analyst-held", "party-held"),
    rules: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A fresh offer: scores for ``purpose`` under ``protocols``, at most ``count`` uses.

    ``log=True`` adds the duty to log each use. ``models``: the weights a score may apply
    (operand ``model``; the default opts in to analyst-held weights explicitly, as zone data
    requires); ``rules``: more constraints (the model rules, say).
    """

    def any_of(operand: str, values: Sequence[str]) -> dict[str, Any]:
        return {"leftOperand": operand, "operator": "isAnyOf", "rightOperand": list(values)}

    permission: dict[str, Any] = {
        "action": "use",
        "constraint": [
            {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose},
            any_of("computation", ["score"]),
            any_of("protocol", protocols),
            any_of("output", ["score"]),
            any_of("model", models),
            *rules,
            {
                "leftOperand": "count",
                "operator": "lteq",
                "rightOperand": {"@value": str(count), "@type": "xsd:integer"},
            },
        ],
    }
    if log:
        permission["duty"] = [{"action": "log"}]
    return {"@id": f"urn:uuid:{uuid.uuid4()}", "@type": "Offer", "permission": [permission]}


def settled(get: Callable[[str], Any], pid: str, timeout: float) -> dict[str, Any]:
    """The negotiation ``pid`` once FINALIZED or TERMINATED (or as it stands at ``timeout``).

    ``get`` fetches a path of the consumer's management API and returns the decoded body.
    """
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = get(f"/management/negotiations/{pid}")
        if view["state"] in ("FINALIZED", "TERMINATED") or time.monotonic() > deadline:
            return view
        time.sleep(0.05)
