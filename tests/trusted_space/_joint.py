"""A small space of compute nodes in one process, for joint-query tests.

An operator, an analyst (a bank) and providers, each a :class:`ComputeNode` over its own store and
ledger, all on one :class:`InMemoryTransport` network; datasets published with
``catalog.publish``; agreements negotiated with ``contracts.run_negotiation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from trusted_space.catalog import (
    DataResource,
    Dataset,
    Field,
    FieldType,
    KeyKind,
    Responsibility,
    Table,
    Tier,
    publish,
)
from trusted_space.compute import ComputeNode, InMemoryData
from trusted_space.consent import ConsentRegistry, sign_consent
from trusted_space.contracts import Negotiator, offer_for, run_negotiation
from trusted_space.errors import NotFoundError
from trusted_space.keys import SigningKey, VerifyKey
from trusted_space.ledger import Ledger
from trusted_space.policy import PROTOCOLS
from trusted_space.store import MemoryStore, SQLiteStore, Store
from trusted_space.transport import InMemoryTransport

OPERATOR = "city-operator"
ANALYST = "bank-a"
PURPOSE = "pre-loan-review"


def offer(
    n: int = 1,
    *,
    purpose: str = PURPOSE,
    protocols: Sequence[str] = PROTOCOLS,
    kinds: Sequence[str] = ("score", "aggregate"),
    count: int | None = None,
    consent: bool = False,
    min_cohort: int | None = None,
    models: Sequence[str] | None = ("analyst-held", "party-held"),
) -> dict[str, Any]:
    """A catalog offer fit for a zone dataset.

    ``models``: the ``model`` constraint (the default opts in to analyst-held weights
    explicitly, as zone data requires; ``None`` leaves it out).
    """
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose},
        {"leftOperand": "computation", "operator": "isAnyOf", "rightOperand": list(kinds)},
        {"leftOperand": "protocol", "operator": "isAnyOf", "rightOperand": list(protocols)},
        {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": ["score", "aggregate"]},
    ]
    if count is not None:
        constraints.append(
            {
                "leftOperand": "count",
                "operator": "lteq",
                "rightOperand": {"@value": str(count), "@type": "xsd:integer"},
            }
        )
    if models is not None:
        constraints.append(
            {"leftOperand": "model", "operator": "isAnyOf", "rightOperand": list(models)}
        )
    if consent:
        constraints.append({"leftOperand": "consent", "operator": "eq", "rightOperand": "required"})
    if min_cohort is not None:
        constraints.append(
            {
                "leftOperand": "minCohort",
                "operator": "gteq",
                "rightOperand": {"@value": str(min_cohort), "@type": "xsd:integer"},
            }
        )
    return {
        "@id": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
        "@type": "Offer",
        "permission": [{"action": "use", "constraint": constraints}],
    }


DEFAULT_BOUND = 64.0
"""The declared range of a numeric test column unless ``bounds`` gives another."""


def dataset(
    owner: str,
    columns: Sequence[str],
    *,
    ds_id: str | None = None,
    offer_ids: Sequence[str] = (),
    grades: dict[str, int] | None = None,
    types: dict[str, FieldType] | None = None,
    key_kind: KeyKind = KeyKind.OPAQUE,
    impute: dict[str, float] | None = None,
    extra_fields: Sequence[Field] = (),
    bounds: Mapping[str, float | None] | None = None,
) -> Dataset:
    grades = grades or {}
    types = types or {}
    impute = impute or {}
    fields = [Field("entity", FieldType.STRING, 1, "enterprise")]
    for c in columns:
        kw: dict[str, Any] = {}
        if c in impute:
            kw["impute_default"] = impute[c]
        kind = types.get(c, FieldType.FLOAT)
        if c in (bounds or {}):
            if (bounds or {})[c] is not None:  # None: the column declares no range
                kw["bound"] = (bounds or {})[c]
        elif kind in (FieldType.FLOAT, FieldType.INT, FieldType.BOOL):
            kw["bound"] = DEFAULT_BOUND  # every score column declares its range
        fields.append(Field(c, kind, grades.get(c, 3), **kw))
    fields.extend(extra_fields)
    return Dataset(
        id=ds_id or f"urn:uuid:ds-{owner}",
        owner=owner,
        title=f"{owner} features",
        responsibility=Responsibility("resp-1", "Supervision"),
        resource=DataResource("res-1", "Records"),
        table=Table("features", tuple(fields)),
        tier=Tier.ZONE,
        key_column="entity",
        key_kind=key_kind,
        offer_ids=tuple(offer_ids),
    )


@dataclass
class Party:
    id: str
    node: ComputeNode
    negotiator: Negotiator
    data: InMemoryData
    key: SigningKey
    agreements: dict[str, str] = field(default_factory=dict)  # dataset id -> agreement id


@dataclass
class Space:
    network: InMemoryTransport
    operator: Party
    analyst: Party
    providers: dict[str, Party]
    keys: dict[str, VerifyKey]
    operator_key: SigningKey
    clock: Callable[[], datetime]

    def transport(self, pid: str) -> InMemoryTransport:
        return self.network.as_sender(pid)


def _make_party(
    pid: str,
    network: InMemoryTransport,
    keys: dict[str, VerifyKey],
    store: Store,
    clock: Callable[[], datetime],
) -> Party:
    key = SigningKey.generate()
    keys[pid] = key.verify_key

    def resolve(participant: str) -> VerifyKey:
        if participant not in keys:
            raise NotFoundError(participant)
        return keys[participant]

    ledger = Ledger(store, key, f"{pid}.example/ledger")
    data = InMemoryData()
    node = ComputeNode(pid, store, ledger, data=data, transport=network.as_sender(pid), clock=clock)
    network.register(pid, node.handle)
    negotiator = Negotiator(
        pid, store, key, resolve, callback_address=f"https://{pid}/dsp", clock=clock
    )
    return Party(pid, node, negotiator, data, key)


def build_space(
    providers: Sequence[str] = ("tax-bureau", "court"),
    *,
    sqlite_dir: Path | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Space:
    """Nodes with empty data; publish datasets and negotiate with :func:`provide`."""
    network = InMemoryTransport.network()
    keys: dict[str, VerifyKey] = {}
    the_clock = clock or (lambda: datetime.now(UTC))

    def store_for(pid: str) -> Store:
        if sqlite_dir is None:
            return MemoryStore()
        return SQLiteStore(sqlite_dir / f"{pid}.db", synchronous="NORMAL")

    operator = _make_party(OPERATOR, network, keys, store_for(OPERATOR), the_clock)
    analyst = _make_party(ANALYST, network, keys, store_for(ANALYST), the_clock)
    parties = {p: _make_party(p, network, keys, store_for(p), the_clock) for p in providers}
    for party in parties.values():
        party.node.consents = ConsentRegistry(OPERATOR, operator.key.verify_key)
    return Space(network, operator, analyst, parties, keys, operator.key, the_clock)


def provide(
    space: Space,
    provider: str,
    columns: Sequence[str],
    keys: Sequence[str],
    values: Any,
    *,
    offer_doc: dict[str, Any] | None = None,
    negotiate: bool = True,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    **dataset_kw: Any,
) -> tuple[str, str | None]:
    """Publish a dataset at ``provider`` with rows, and (by default) negotiate an agreement.

    Returns (dataset id, agreement id or None).
    """
    party = space.providers[provider]
    the_offer = offer_doc or offer()
    ds = dataset(provider, columns, offer_ids=[the_offer["@id"]], **dataset_kw)
    with party.node.store.transaction() as tx:
        publish(tx, ds, [the_offer])
    party.data.add(ds.id, list(keys), list(columns), np.asarray(values, dtype=np.float64))
    if not negotiate:
        return ds.id, None
    now = space.clock()
    signed = run_negotiation(
        party.negotiator,
        space.analyst.negotiator,
        offer_for(ds.id, the_offer),
        valid_from=valid_from or now - timedelta(hours=1),
        valid_until=valid_until or now + timedelta(days=30),
    )
    party.agreements[ds.id] = signed.id
    return ds.id, signed.id


def grant_consent(space: Space, provider: str, entities: Sequence[str], purpose: str = PURPOSE):
    """The operator registers consents of ``entities`` for the analyst at ``provider``."""
    party = space.providers[provider]
    registry = party.node.consents
    assert registry is not None
    now = space.clock()
    with party.node.store.transaction() as tx:
        for e in entities:
            consent = sign_consent(
                space.operator_key,
                issuer=OPERATOR,
                entity=e,
                grantee=ANALYST,
                purpose=purpose,
                not_before=now - timedelta(hours=1),
                expires_at=now + timedelta(days=1),
                now=now,
            )
            registry.register(tx, consent.token, now=now)
