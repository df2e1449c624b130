"""Membership credentials, revocation lists and request tokens: every refusal looks the same."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ConflictError, NotFoundError, ValidationError, VerificationError
from trusted_space.events import EVENT_LOG, canonical_json, decode_event
from trusted_space.identity import (
    CLOCK_SKEW,
    MemberDirectory,
    MembershipCredential,
    OperatorAuthority,
    Verifier,
    body_sha256,
    issue_credential,
    issue_request_token,
    purge_replay_cache,
    record_refusal,
    sign_compact,
    verify_credential,
)
from trusted_space.keys import SigningKey, b64url_encode
from trusted_space.store import MemoryStore, SQLiteStore, Store

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
OPERATOR = "city-bdc"
NODE = "tax-bureau"
BANK = "bank-a"
BODY = b'{"query":"score","entities":["91350100M000100Y43"]}'
METHOD, PATH = "POST", "/queries/score"

OPERATOR_KEY = SigningKey.generate()
NODE_KEY = SigningKey.generate()
BANK_KEY = SigningKey.generate()
STRANGER_KEY = SigningKey.generate()


@dataclass
class World:
    """An operator node and a receiving node (tax-bureau) that knows bank-a."""

    operator: OperatorAuthority
    operator_store: Store
    store: Store
    directory: MemberDirectory
    verifier: Verifier
    bank_credential: MembershipCredential

    def token(self, **overrides: object) -> str:
        args: dict[str, object] = {
            "issuer": BANK,
            "audience": NODE,
            "method": METHOD,
            "path": PATH,
            "body": BODY,
            "now": NOW,
        }
        args.update(overrides)
        return issue_request_token(BANK_KEY, **args)  # type: ignore[arg-type]

    def verify(
        self,
        token: str,
        *,
        body: bytes = BODY,
        method: str = METHOD,
        path: str = PATH,
        now: datetime = NOW,
    ) -> str:
        with self.store.transaction() as tx:
            return self.verifier.verify_request(
                tx, token, body=body, method=method, path=path, now=now
            ).participant_id


def make_world(store: Store) -> World:
    operator_store = MemoryStore()
    operator = OperatorAuthority(OPERATOR, OPERATOR_KEY)
    with operator_store.transaction() as tx:
        node_cred = operator.issue(tx, NODE, ["provider"], NODE_KEY.verify_key, now=NOW)
        bank_cred = operator.issue(tx, BANK, ["consumer", "provider"], BANK_KEY.verify_key, now=NOW)
    directory = MemberDirectory(OPERATOR, OPERATOR_KEY.verify_key)
    with store.transaction() as tx:
        directory.add(tx, node_cred.token, now=NOW)
        directory.add(tx, bank_cred.token, now=NOW)
    return World(operator, operator_store, store, directory, Verifier(NODE, directory), bank_cred)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "node.db")
    yield s
    s.close()


@pytest.fixture
def world(store: Store) -> World:
    return make_world(store)


def forge(header: dict[str, object], payload: dict[str, object], sig: bytes) -> str:
    return ".".join(
        [
            b64url_encode(canonical_json(header)),
            b64url_encode(canonical_json(payload)),
            b64url_encode(sig),
        ]
    )


def request_claims(**overrides: object) -> dict[str, object]:
    iat = int(NOW.timestamp())
    claims: dict[str, object] = {
        "iss": BANK,
        "aud": NODE,
        "iat": iat,
        "exp": iat + 60,
        "jti": b64url_encode(b"\x07" * 16),
        "bsh": body_sha256(BODY),
        "htm": METHOD,
        "htp": PATH,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def signed_request(key: SigningKey = BANK_KEY, **overrides: object) -> str:
    return sign_compact(key, {"alg": "EdDSA", "typ": "ts-request+jws"}, request_claims(**overrides))


# ----------------------------------------------------------------------------------------------
# Credentials
# ----------------------------------------------------------------------------------------------


def test_credential_round_trip() -> None:
    cred = issue_credential(
        OPERATOR_KEY, OPERATOR, BANK, ["consumer"], BANK_KEY.verify_key, now=NOW
    )

    got = verify_credential(cred.token, OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=NOW)

    assert got == cred
    assert got.participant_id == BANK and got.roles == frozenset({"consumer"})
    assert got.public_key == BANK_KEY.verify_key and got.issuer == OPERATOR
    assert cred.token.count(".") == 2


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (NOW - timedelta(days=2), "credential-not-yet-valid"),
        (NOW + timedelta(days=31), "credential-expired"),
    ],
)
def test_credential_window(at: datetime, reason: str) -> None:
    cred = issue_credential(
        OPERATOR_KEY,
        OPERATOR,
        BANK,
        ["consumer"],
        BANK_KEY.verify_key,
        now=NOW,
        valid_for=timedelta(days=30),
    )

    with pytest.raises(VerificationError) as err:
        verify_credential(cred.token, OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=at)

    assert err.value.reason == reason


def test_credential_from_another_key_or_operator_refused() -> None:
    cred = issue_credential(
        STRANGER_KEY, OPERATOR, BANK, ["consumer"], BANK_KEY.verify_key, now=NOW
    )
    good = issue_credential(
        OPERATOR_KEY, "other-op", BANK, ["consumer"], BANK_KEY.verify_key, now=NOW
    )

    with pytest.raises(VerificationError) as wrong_key:
        verify_credential(cred.token, OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=NOW)
    with pytest.raises(VerificationError) as wrong_issuer:
        verify_credential(good.token, OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=NOW)

    assert wrong_key.value.reason == "credential-kid"
    assert wrong_issuer.value.reason == "credential-issuer"


@pytest.mark.parametrize(
    "bad", [dict(roles=[]), dict(roles=["admin"]), dict(participant_id="Bank_A")]
)
def test_issue_credential_validates_input(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"participant_id": BANK, "roles": ["consumer"]}
    args.update(bad)

    with pytest.raises(ValidationError):
        issue_credential(
            OPERATOR_KEY,
            OPERATOR,
            public_key=BANK_KEY.verify_key,
            now=NOW,
            **args,  # type: ignore[arg-type]
        )


def test_issue_records_ledger_event(world: World) -> None:
    with world.operator_store.transaction() as tx:
        events = [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, 10))]

    assert [e.kind for e in events] == ["credential.issued", "credential.issued"]
    assert events[1].body["participant"] == BANK
    assert events[1].body["credential_id"] == world.bank_credential.credential_id


def test_directory_lookups(world: World) -> None:
    with world.store.transaction() as tx:
        got = world.directory.get(tx, BANK)
        with pytest.raises(NotFoundError):
            world.directory.get(tx, "nobody")

    assert got.credential_id == world.bank_credential.credential_id


def test_stale_credential_does_not_replace_newer(world: World) -> None:
    with world.operator_store.transaction() as tx:
        newer = world.operator.issue(
            tx, BANK, ["consumer"], STRANGER_KEY.verify_key, now=NOW + timedelta(hours=1)
        )
    with world.store.transaction() as tx:
        world.directory.add(tx, newer.token, now=NOW + timedelta(hours=1))
    with pytest.raises(VerificationError) as err, world.store.transaction() as tx:
        world.directory.add(tx, world.bank_credential.token, now=NOW + timedelta(hours=1))

    assert err.value.reason == "credential-superseded"


# ----------------------------------------------------------------------------------------------
# Revocation
# ----------------------------------------------------------------------------------------------


def test_revocation_list_applies_on_another_node(world: World) -> None:
    with world.operator_store.transaction() as tx:
        first = world.operator.revocation_list(tx, now=NOW)
        rlist = world.operator.revoke(tx, BANK, now=NOW, reason="left the space")
    assert first.sequence == 0 and first.revocations == ()
    assert rlist.sequence == 1
    assert [r.participant_id for r in rlist.revocations] == [BANK]

    with world.store.transaction() as tx:
        added = world.directory.apply_revocation_list(tx, rlist.token)
        again = world.directory.apply_revocation_list(tx, rlist.token)
    with pytest.raises(ConflictError), world.store.transaction() as tx:
        world.directory.apply_revocation_list(tx, first.token)
    with world.store.transaction() as tx:
        assert world.directory.is_revoked(tx, world.bank_credential.credential_id)
        assert world.directory.current_revocation_list(tx).sequence == 1

    assert (added, again) == (1, 0)
    with pytest.raises(VerificationError) as err:
        world.verify(world.token())
    assert err.value.reason == "revoked"


def test_revocation_recorded_and_unknown_participant(world: World) -> None:
    with world.operator_store.transaction() as tx:
        world.operator.revoke(tx, BANK, now=NOW, reason="key compromised")
        kinds = [decode_event(i, e) for i, e in enumerate(tx.log_entries(EVENT_LOG, 0, 10))]
        with pytest.raises(NotFoundError):
            world.operator.revoke(tx, "never-admitted", now=NOW, reason="x")

    assert kinds[-1].kind == "credential.revoked"
    assert kinds[-1].body["reason"] == "key compromised"


def test_revocation_list_forged_or_equivocating_refused(world: World) -> None:
    with world.operator_store.transaction() as tx:
        rlist = world.operator.revoke(tx, BANK, now=NOW, reason="x")
    forged = sign_compact(
        STRANGER_KEY,
        {"alg": "EdDSA", "typ": "ts-revocations+jws", "kid": OPERATOR_KEY.verify_key.fingerprint},
        {"iss": OPERATOR, "seq": 9, "iat": 0, "revoked": []},
    )
    equivocation = sign_compact(
        OPERATOR_KEY,
        {"alg": "EdDSA", "typ": "ts-revocations+jws", "kid": OPERATOR_KEY.verify_key.fingerprint},
        {"iss": OPERATOR, "seq": rlist.sequence, "iat": 0, "revoked": []},
    )

    with world.store.transaction() as tx:
        world.directory.apply_revocation_list(tx, rlist.token)
    with pytest.raises(VerificationError), world.store.transaction() as tx:
        world.directory.apply_revocation_list(tx, forged)
    with pytest.raises(ConflictError), world.store.transaction() as tx:
        world.directory.apply_revocation_list(tx, equivocation)


def test_revoked_credential_cannot_be_added(world: World) -> None:
    with world.operator_store.transaction() as tx:
        rlist = world.operator.revoke(tx, BANK, now=NOW, reason="x")
    fresh = MemoryStore()
    with fresh.transaction() as tx:
        world.directory.apply_revocation_list(tx, rlist.token)
    with pytest.raises(VerificationError) as err, fresh.transaction() as tx:
        world.directory.add(tx, world.bank_credential.token, now=NOW)

    assert err.value.reason == "revoked"


# ----------------------------------------------------------------------------------------------
# Request tokens
# ----------------------------------------------------------------------------------------------


def test_valid_token_accepted_once(world: World) -> None:
    token = world.token()

    with world.store.transaction() as tx:
        verified = world.verifier.verify_request(
            tx, token, body=BODY, method=METHOD, path=PATH, now=NOW + timedelta(seconds=5)
        )
    with pytest.raises(VerificationError) as err:
        world.verify(token)

    assert verified.participant_id == BANK
    assert verified.roles == frozenset({"consumer", "provider"})
    assert verified.credential_id == world.bank_credential.credential_id
    assert err.value.reason == "replay"


def test_replay_refused_after_reopening_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    first = SQLiteStore(path)
    world = make_world(first)
    token = world.token()
    assert world.verify(token) == BANK
    first.close()

    reopened = SQLiteStore(path)
    world.store = reopened
    try:
        with pytest.raises(VerificationError) as err:
            world.verify(token)
    finally:
        reopened.close()

    assert err.value.reason == "replay"


def test_lifetime_over_two_minutes_refused_at_issue(world: World) -> None:
    with pytest.raises(ValidationError):
        world.token(lifetime=timedelta(seconds=121))
    with pytest.raises(ValidationError):
        world.token(lifetime=timedelta(0))

    assert world.verify(world.token(lifetime=timedelta(minutes=2))) == BANK


def test_replay_cache_purge_keeps_entries_until_unusable(world: World) -> None:
    token = world.token()
    world.verify(token)
    expiry = NOW + timedelta(seconds=60) + CLOCK_SKEW

    with world.store.transaction() as tx:
        kept = purge_replay_cache(tx, expiry)
    with world.store.transaction() as tx:
        purged = purge_replay_cache(tx, expiry + timedelta(seconds=1))

    assert (kept, purged) == (0, 1)
    with pytest.raises(VerificationError) as err:
        world.verify(token, now=expiry + timedelta(seconds=1))
    assert err.value.reason == "expired"


def test_record_refusal_writes_reason(world: World) -> None:
    token = world.token(audience="court")
    with pytest.raises(VerificationError) as err:
        world.verify(token)

    with world.store.transaction() as tx:
        index = record_refusal(tx, err.value, token=token, audience=NODE, method=METHOD, path=PATH)
        event = decode_event(index, tx.log_entries(EVENT_LOG, index, index + 1)[0])
    with world.store.transaction() as tx:
        junk = record_refusal(tx, VerificationError("segments"), token="x.y", audience=NODE)
        junk_event = decode_event(junk, tx.log_entries(EVENT_LOG, junk, junk + 1)[0])

    assert event.kind == "auth.refused"
    assert event.body == {
        "reason": "audience",
        "audience": NODE,
        "claimed_issuer": BANK,
        "method": METHOD,
        "path": PATH,
    }
    assert "claimed_issuer" not in junk_event.body


def _hs256_with_public_key() -> str:
    header = b64url_encode(canonical_json({"alg": "HS256", "typ": "ts-request+jws"}))
    payload = b64url_encode(canonical_json(request_claims()))
    mac = hmac.new(BANK_KEY.verify_key.raw, f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url_encode(mac.digest())}"


def _revoked(world: World) -> str:
    with world.operator_store.transaction() as tx:
        rlist = world.operator.revoke(tx, BANK, now=NOW, reason="x")
    with world.store.transaction() as tx:
        world.directory.apply_revocation_list(tx, rlist.token)
    return world.token()


def _expired_credential(world: World) -> tuple[str, dict[str, object]]:
    with world.operator_store.transaction() as tx:
        cred = world.operator.issue(
            tx,
            "court",
            ["provider"],
            STRANGER_KEY.verify_key,
            now=NOW - timedelta(days=2),
            valid_for=timedelta(days=1),
        )
    with world.store.transaction() as tx:
        world.directory.add(tx, cred.token, now=NOW - timedelta(days=2))
    return signed_request(STRANGER_KEY, iss="court"), {}


def _replayed(world: World) -> str:
    token = world.token()
    world.verify(token)
    return token


def _non_canonical_b64(world: World) -> str:
    token = world.token()
    # 64-byte signature: the last base64 character carries 4 unused bits; set one of them.
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(last) ^ 1]


Case = Callable[[World], tuple[str, dict[str, object]]]

REFUSALS: dict[str, tuple[Case, str]] = {
    "wrong audience": (lambda w: (w.token(audience="court"), {}), "audience"),
    "expired": (lambda w: (w.token(), {"now": NOW + timedelta(seconds=91)}), "expired"),
    "not yet valid": (
        lambda w: (w.token(now=NOW + timedelta(seconds=31)), {}),
        "not-yet-valid",
    ),
    "lifetime over 2 min": (
        lambda w: (signed_request(exp=int(NOW.timestamp()) + 121), {}),
        "lifetime",
    ),
    "tampered body": (lambda w: (w.token(), {"body": BODY + b" "}), "body-hash"),
    "tampered method": (lambda w: (w.token(), {"method": "PUT"}), "method"),
    "tampered path": (lambda w: (w.token(), {"path": "/queries/train"}), "path"),
    "alg none unsigned": (
        lambda w: (forge({"alg": "none", "typ": "ts-request+jws"}, request_claims(), b""), {}),
        "alg-none",
    ),
    "alg missing": (
        lambda w: (forge({"typ": "ts-request+jws"}, request_claims(), b"\0" * 64), {}),
        "alg-missing",
    ),
    "HS256 with public key": (lambda w: (_hs256_with_public_key(), {}), "alg-not-eddsa"),
    "credential as request": (lambda w: (w.bank_credential.token, {}), "typ"),
    "extra header param": (
        lambda w: (
            forge({"alg": "EdDSA", "typ": "ts-request+jws", "kid": "x"}, request_claims(), b""),
            {},
        ),
        "header",
    ),
    "extra claim": (lambda w: (signed_request(scope="all"), {}), "claims:extra"),
    "missing claim": (lambda w: (signed_request(htp=None), {}), "claims:missing"),
    "unknown member": (
        lambda w: (signed_request(STRANGER_KEY, iss="court"), {}),
        "unknown-issuer",
    ),
    "signed by someone else": (lambda w: (signed_request(STRANGER_KEY), {}), "signature"),
    "revoked member": (lambda w: (_revoked(w), {}), "revoked"),
    "member credential expired": (_expired_credential, "credential-expired"),
    "replay": (lambda w: (_replayed(w), {}), "replay"),
    "garbled base64": (
        lambda w: (w.token().replace(".", ".*", 1), {}),
        "bad-base64:payload",
    ),
    "non-canonical base64": (lambda w: (_non_canonical_b64(w), {}), "bad-base64:signature"),
    "two segments": (lambda w: (w.token().rsplit(".", 1)[0], {}), "segments"),
    "four segments": (lambda w: (w.token() + ".AA", {}), "segments"),
    "not ascii": (lambda w: (w.token() + "é", {}), "malformed"),
    "bad jti": (lambda w: (signed_request(jti="short"), {}), "claims:jti"),
    "non-canonical json": (
        lambda w: (
            ".".join(
                [
                    b64url_encode(b'{"typ":"ts-request+jws","alg":"EdDSA"}'),
                    *signed_request().split(".")[1:],
                ]
            ),
            {},
        ),
        "non-canonical-json:header",
    ),
}


def _refusal(world: World, name: str) -> VerificationError:
    case, _ = REFUSALS[name]
    token, overrides = case(world)
    with pytest.raises(VerificationError) as err:
        world.verify(token, **overrides)  # type: ignore[arg-type]
    return err.value


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refused_with_real_reason(world: World, name: str) -> None:
    error = _refusal(world, name)

    assert error.reason == REFUSALS[name][1]


def test_refusals_indistinguishable_to_caller_distinct_in_ledger() -> None:
    errors = {name: _refusal(make_world(MemoryStore()), name) for name in REFUSALS}

    assert {str(e) for e in errors.values()} == {"verification failed"}
    assert {type(e) for e in errors.values()} == {VerificationError}
    # Distinct causes give distinct reasons (two and four segments are the same cause).
    assert {name: e.reason for name, e in errors.items()} == {
        name: reason for name, (_, reason) in REFUSALS.items()
    }
    assert len({e.reason for e in errors.values()}) == len(REFUSALS) - 1


_FLIP_WORLD = make_world(MemoryStore())
_FLIP_TOKEN = _FLIP_WORLD.token(lifetime=timedelta(minutes=2))


@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(_FLIP_TOKEN) - 1), st.integers(1, 255)), min_size=1, max_size=3
    )
)
def test_byte_flips_never_verify(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(_FLIP_TOKEN.encode("ascii"))
    for index, mask in flips:
        raw[index] ^= mask
    mutated = raw.decode("latin-1")
    if mutated == _FLIP_TOKEN:
        return
    store = MemoryStore()
    with store.transaction() as tx:
        _FLIP_WORLD.directory.add(tx, _FLIP_WORLD.bank_credential.token, now=NOW)
    verifier = Verifier(NODE, _FLIP_WORLD.directory)

    with pytest.raises(VerificationError) as err, store.transaction() as tx:
        verifier.verify_request(tx, mutated, body=BODY, method=METHOD, path=PATH, now=NOW)

    assert str(err.value) == "verification failed"


_CRED_TOKEN = _FLIP_WORLD.bank_credential.token


@given(index=st.integers(0, len(_CRED_TOKEN) - 1), mask=st.integers(1, 255))
def test_credential_byte_flips_never_verify(index: int, mask: int) -> None:
    raw = bytearray(_CRED_TOKEN.encode("ascii"))
    raw[index] ^= mask

    with pytest.raises(VerificationError):
        verify_credential(
            raw.decode("latin-1"), OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=NOW
        )


def test_naive_datetimes_refused(world: World) -> None:
    naive = datetime(2025, 6, 1, 12)

    with pytest.raises(ValidationError):
        world.token(now=naive)
    with pytest.raises(ValidationError):
        verify_credential(
            world.bank_credential.token, OPERATOR_KEY.verify_key, operator_id=OPERATOR, now=naive
        )
