"""Consent registry: signed by the entity or the operator, scoped to grantee, purpose and window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.consent import (
    Consent,
    ConsentChecker,
    ConsentRegistry,
    TransactionConsentChecker,
    sign_consent,
)
from trusted_space.errors import ConflictError, NotFoundError, ValidationError, VerificationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.keys import SigningKey
from trusted_space.store import Document, MemoryStore, SQLiteStore, Store, Transaction

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
OPERATOR = "city-bdc"
BANK = "bank-a"
PURPOSE = "pre-loan-review"
ENTITY = "91350100M000100Y43"
OTHER_ENTITY = "91110000600037341L"

OPERATOR_KEY = SigningKey.generate()
ENTITY_KEY = SigningKey.generate()
STRANGER_KEY = SigningKey.generate()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "node.db")
    with s.transaction() as tx:
        REGISTRY.register_entity_key(tx, ENTITY, ENTITY_KEY.verify_key, now=NOW)
    yield s
    s.close()


REGISTRY = ConsentRegistry(OPERATOR, OPERATOR_KEY.verify_key)


def entity_consent(**overrides: Any) -> Consent:
    args: dict[str, Any] = {
        "issuer": ENTITY,
        "entity": ENTITY,
        "grantee": BANK,
        "purpose": PURPOSE,
        "not_before": NOW,
        "expires_at": NOW + timedelta(days=90),
        "now": NOW,
    }
    key = overrides.pop("key", ENTITY_KEY)
    args.update(overrides)
    return sign_consent(key, **args)


def register(store: Store, consent: Consent) -> Consent:
    with store.transaction() as tx:
        return REGISTRY.register(tx, consent.token, now=NOW)


def has(
    store: Store,
    entity: str = ENTITY,
    grantee: str = BANK,
    purpose: str = PURPOSE,
    at: datetime = NOW + timedelta(days=1),
) -> bool:
    with store.transaction() as tx:
        checker: ConsentChecker = REGISTRY.checker(tx)
        return checker.has_consent(entity, grantee, purpose, at)


def test_entity_signed_consent_grants(store: Store) -> None:
    consent = register(store, entity_consent())

    assert has(store)
    assert not consent.operator_registered
    with store.transaction() as tx:
        assert REGISTRY.get(tx, consent.consent_id) == consent


def test_operator_registered_consent_grants(store: Store) -> None:
    consent = register(
        store, entity_consent(key=OPERATOR_KEY, issuer=OPERATOR, entity=OTHER_ENTITY)
    )

    assert has(store, entity=OTHER_ENTITY)
    assert consent.operator_registered


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ({}, True),
        ({"at": NOW + timedelta(days=90)}, False),  # expired (window is half-open)
        ({"at": NOW - timedelta(seconds=1)}, False),  # not yet valid
        ({"purpose": "risk-monitoring"}, False),
        ({"grantee": "bank-b"}, False),
        ({"entity": OTHER_ENTITY}, False),
        ({"entity": "bad/entity"}, False),
        ({"purpose": "pre-loan"}, False),  # a prefix of the real purpose
    ],
)
def test_consent_scope(store: Store, question: dict[str, Any], expected: bool) -> None:
    register(store, entity_consent())

    assert has(store, **question) is expected


def test_revoked_consent_never_counts(store: Store) -> None:
    consent = register(store, entity_consent())

    with store.transaction() as tx:
        REGISTRY.revoke(tx, consent.consent_id, now=NOW, reason="withdrawn by the enterprise")
        REGISTRY.revoke(tx, consent.consent_id, now=NOW, reason="twice is harmless")
        assert REGISTRY.is_revoked(tx, consent.consent_id)
        kinds = [decode_event(0, e).kind for e in tx.log_entries(EVENT_LOG, 0, 100)]

    assert not has(store)
    assert kinds.count("consent.revoked") == 1
    with pytest.raises(NotFoundError), store.transaction() as tx:
        REGISTRY.revoke(tx, "no-such-consent", now=NOW, reason="x")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"key": STRANGER_KEY}, "consent-kid"),  # entity claims, another key signs
        ({"key": STRANGER_KEY, "issuer": OPERATOR}, "consent-kid"),
        ({"issuer": BANK}, "consent-issuer"),  # the grantee cannot consent for the entity
        ({"entity": OTHER_ENTITY, "issuer": OTHER_ENTITY}, "unknown-entity-key"),
    ],
)
def test_bad_signer_refused(store: Store, overrides: dict[str, Any], reason: str) -> None:
    consent = entity_consent(**overrides)

    with pytest.raises(VerificationError) as err:
        register(store, consent)

    assert err.value.reason == reason
    assert str(err.value) == "verification failed"
    assert not has(store, entity=consent.entity)


def test_tampered_signature_refused(store: Store) -> None:
    token = entity_consent().token
    head, _, sig = token.split(".")
    other = entity_consent(grantee="bank-b").token.split(".")[1]

    with pytest.raises(VerificationError) as err, store.transaction() as tx:
        REGISTRY.register(tx, f"{head}.{other}.{sig}", now=NOW)

    assert err.value.reason == "signature"


def test_duplicate_registration_conflicts(store: Store) -> None:
    consent = register(store, entity_consent())

    with pytest.raises(ConflictError):
        register(store, consent)


def test_registration_and_checks_are_recorded(store: Store) -> None:
    register(store, entity_consent())
    has(store)
    with store.transaction() as tx:
        REGISTRY.checker(tx).missing_consents([ENTITY, OTHER_ENTITY], BANK, PURPOSE, NOW)
        events = [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, 100))]

    kinds = [e.kind for e in events]
    assert kinds == [
        "consent.key_registered",
        "consent.registered",
        "consent.check",
        "consent.check",
    ]
    assert events[1].body["signed_by"] == "entity"
    assert events[3].body["entities"] == 2 and events[3].body["missing"] == 1
    assert ENTITY not in str(events[3].body)  # only a digest of who was asked about


def test_sign_consent_validates_input() -> None:
    with pytest.raises(ValidationError):
        entity_consent(expires_at=NOW)
    with pytest.raises(ValidationError):
        entity_consent(purpose="Pre Loan")
    with pytest.raises(ValidationError):
        entity_consent(entity="a/b", issuer="a/b")
    with pytest.raises(ValidationError), MemoryStore().transaction() as tx:
        REGISTRY.checker(tx).has_consent(ENTITY, BANK, PURPOSE, datetime(2025, 6, 1))


class CountingTx:
    """Wraps a transaction and counts scans: the batch check must not scan per entity."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self.scans = 0

    def scan(self, namespace: str, prefix: str = "") -> list[Document]:
        self.scans += 1
        return self._tx.scan(namespace, prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def test_batch_check_is_one_scan(store: Store) -> None:
    register(store, entity_consent())
    entities = [ENTITY] + [f"9135010{i:04d}M0001Y4" for i in range(1000)]

    with store.transaction() as tx:
        counting = CountingTx(tx)
        missing = TransactionConsentChecker(counting, record=False).missing_consents(  # type: ignore[arg-type]
            entities, BANK, PURPOSE, NOW
        )

    assert counting.scans == 1
    assert missing == entities[1:]


ENTITIES = ["E1", "E2", "E3", "E4"]
GRANTEES = [BANK, "bank-b"]
PURPOSES = [PURPOSE, "risk-monitoring"]
POOL_KEYS = {e: SigningKey.generate() for e in ENTITIES}

consent_spec = st.tuples(
    st.sampled_from(ENTITIES),
    st.sampled_from(GRANTEES),
    st.sampled_from(PURPOSES),
    st.integers(-3, 3),  # not_before, days from NOW
    st.integers(1, 4),  # length in days
    st.booleans(),  # signed by the operator
    st.booleans(),  # revoked
)


@given(
    specs=st.lists(consent_spec, max_size=8),
    query=st.lists(st.sampled_from([*ENTITIES, "E9", "bad/id"]), max_size=8),
    grantee=st.sampled_from(GRANTEES),
    purpose=st.sampled_from(PURPOSES),
    at_hours=st.integers(-96, 192),
)
def test_missing_consents_equals_per_entity_answers(
    specs: list[tuple[str, str, str, int, int, bool, bool]],
    query: list[str],
    grantee: str,
    purpose: str,
    at_hours: int,
) -> None:
    store = MemoryStore()
    at = NOW + timedelta(hours=at_hours)
    with store.transaction() as tx:
        for entity, key in POOL_KEYS.items():
            REGISTRY.register_entity_key(tx, entity, key.verify_key, now=NOW)
        for entity, g, p, start, days, by_operator, revoked in specs:
            consent = sign_consent(
                OPERATOR_KEY if by_operator else POOL_KEYS[entity],
                issuer=OPERATOR if by_operator else entity,
                entity=entity,
                grantee=g,
                purpose=p,
                not_before=NOW + timedelta(days=start),
                expires_at=NOW + timedelta(days=start + days),
                now=NOW,
            )
            REGISTRY.register(tx, consent.token, now=NOW)
            if revoked:
                REGISTRY.revoke(tx, consent.consent_id, now=NOW, reason="test")

    with store.transaction() as tx:
        checker = REGISTRY.checker(tx, record=False)
        missing = checker.missing_consents(query, grantee, purpose, at)
        single = [
            e for e in dict.fromkeys(query) if not checker.has_consent(e, grantee, purpose, at)
        ]

    assert missing == single
