"""Operator routes: anchor, admission, registry, revocation push, federated catalog, witness."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.node import federation
from connectors.node.background import Background
from connectors.node.deps import MemberDep
from tests.connectors._space import InProcessSpace, Node, admission_body, admit_http, grow
from trusted_space import dsp
from trusted_space.catalog import (
    TS_NAMESPACE,
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
from trusted_space.events import decode_event
from trusted_space.identity import verify_credential
from trusted_space.keys import SigningKey
from trusted_space.ledger import open_checkpoint
from trusted_space.notes import Checkpoint, make_vkey, parse_vkey, sign_note, verify_cosignature

OFFER = {
    "@id": "urn:uuid:00000000-0000-4000-8000-000000000001",
    "@type": "Offer",
    "permission": [{"action": "use"}],
}


def signed(node: Node, method: str, url: str, audience: str, body: Any = None) -> httpx.Response:
    return node.runtime.client.request(method, url, audience=audience, json_body=body, check=False)


def add_probe(node: Node) -> None:
    """A member-only route on ``node`` to observe who it accepts."""

    @node.app.get("/test-probe")
    def probe(member: MemberDep) -> dict[str, str]:
        return {"who": member.participant_id}


def make_dataset(ds_id: str, tier: Tier, grade: int, owner: str = "tax-bureau") -> Dataset:
    table = Table(
        "tax_paid",
        (
            Field("uscc", FieldType.STRING, 1, "enterprise"),
            Field("tax_paid", FieldType.FLOAT, grade, "tax paid in CNY"),
        ),
        "annual tax paid",
    )
    return Dataset(
        id=ds_id,
        owner=owner,
        title="Annual tax paid",
        responsibility=Responsibility("resp-1", "Tax collection", "Tax law"),
        resource=DataResource("res-1", "Tax records"),
        table=table,
        tier=tier,
        key_column="uscc",
        key_kind=KeyKind.USCC,
        offer_ids=(str(OFFER["@id"]),),
    )


# -- anchor and admission ----------------------------------------------------------------------


def test_anchor_is_public_and_is_the_operator_json(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        response = space.operator.client.get("/operator/identity")
        assert response.status_code == 200
        assert response.json() == space.anchor.to_json()
        assert parse_vkey(response.json()["witnessVkey"]).name == "city-centre/witness"


def test_admission_issues_a_credential_and_registers_the_node(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        doc = admit_http(space, tax)
        assert doc["id"] == "tax-bureau" and doc["roles"] == ["provider"]
        assert doc["ledgerVkey"] == tax.runtime.ledger.vkey and doc["url"] == tax.url
        credential = verify_credential(
            doc["credential"], space.anchor.key, operator_id="city-centre", now=None
        )
        assert credential.public_key == tax.runtime.key.verify_key
        assert tax.client.get("/readyz").status_code == 200
        # the issue is in the operator's ledger
        op = space.operator.runtime
        kinds = [decode_event(i, e).kind for i, e in enumerate(op.ledger.entries(0, 100))]
        assert kinds.count("credential.issued") == 2  # itself and tax-bureau
        # another member finds it through the registry
        bank = space.add("bank-a", ["consumer"])
        admit_http(space, bank)
        assert bank.runtime.peer_url("tax-bureau") == tax.url


def test_a_peer_url_and_the_own_credential_are_read_once_and_replaced_by_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        bank = space.add("bank-a", ["consumer"])
        admit_http(space, bank)
        runtime = bank.runtime
        assert runtime.peer_url("tax-bureau") == tax.url
        token = runtime.credential_token()
        assert token is not None
        reads: list[bool] = []
        original = runtime.store.transaction

        def counting(*args: Any, **kwargs: Any) -> Any:
            reads.append(bool(kwargs.get("readonly")))
            return original(*args, **kwargs)

        monkeypatch.setattr(runtime.store, "transaction", counting)
        for _ in range(5):  # what every signed call asks: from memory
            assert runtime.peer_url("tax-bureau") == tax.url
            assert runtime.credential_token() == token
        assert reads == []
        # A write through the runtime is seen at once, not after the memory expires.
        runtime.remember_peer("tax-bureau", "http://127.0.0.1:1/moved/")
        assert runtime.peer_url("tax-bureau") == "http://127.0.0.1:1/moved"
        # After the memory expires the store is read again.
        later = time.monotonic() + 11.0
        monkeypatch.setattr("connectors.node.runtime.time.monotonic", lambda: later)
        reads.clear()
        assert runtime.credential_token() == token
        assert runtime.peer_url("tax-bureau") == "http://127.0.0.1:1/moved"
        assert reads == [True, True]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"publicKey": "not-a-key"}, "publicKey"),
        ({"ledgerVkey": "garbage"}, "ledgerVkey"),
        ({"roles": ["operator"]}, "roles"),
        ({"roles": ["wizard"]}, "roles"),
        ({"id": "Bad Id"}, "participant id"),
        ({"url": "ftp://example.org"}, "url"),
        ({"url": "http://tax bureau"}, "url"),
        ({"url": "http://tax.example.org/?next=evil"}, "url"),
    ],
)
def test_admission_refuses_bad_input(tmp_path: Path, override: dict[str, Any], needle: str) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        op = space.operator
        response = op.client.post(
            "/operator/participants",
            json=admission_body(tax, **override),
            headers=op.admin_headers,
        )
        assert response.status_code == 400, response.text
        assert needle in response.json()["detail"]


def test_admission_checks_the_ledger_key_and_who_asks(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        op = space.operator
        other = SigningKey.generate().verify_key
        mismatch = admission_body(tax, ledgerVkey=make_vkey(tax.runtime.ledger.origin, other))
        response = op.client.post("/operator/participants", json=mismatch, headers=op.admin_headers)
        assert response.status_code == 400
        assert "another key" in response.json()["detail"]
        # not the operator's staff
        for headers in ({}, {"Authorization": "Bearer wrong"}, tax.admin_headers):
            response = op.client.post(
                "/operator/participants", json=admission_body(tax), headers=headers
            )
            assert response.status_code == 401
        assert op.client.get("/operator/participants/tax-bureau").status_code == 401


def test_readmission_rules_and_origin_uniqueness(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        bank = space.add("bank-a", ["consumer"])
        op = space.operator
        first = admit_http(space, tax)

        def post(body: dict[str, Any]) -> httpx.Response:
            return op.client.post("/operator/participants", json=body, headers=op.admin_headers)

        # same key: a renewal (roles may change)
        renewed = post(admission_body(tax, roles=["consumer", "provider"]))
        assert renewed.status_code == 201
        assert renewed.json()["credential"] != first["credential"]
        assert renewed.json()["roles"] == ["consumer", "provider"]
        # another key while not revoked: refused
        new_key = SigningKey.generate().verify_key
        rekey = admission_body(
            tax,
            publicKey=new_key.to_b64(),
            ledgerVkey=make_vkey(tax.runtime.ledger.origin, new_key),
        )
        assert post(rekey).status_code == 409
        # bank cannot claim tax's ledger origin
        bank_key = bank.runtime.key.verify_key
        stolen = admission_body(bank, ledgerVkey=make_vkey(tax.runtime.ledger.origin, bank_key))
        assert post(stolen).status_code == 409
        # after revocation: the old key stays out, a new key comes in
        revoked = op.client.post(
            "/operator/participants/tax-bureau/revoke",
            json={"reason": "key compromised"},
            headers=op.admin_headers,
        )
        assert revoked.status_code == 200
        assert post(admission_body(tax)).status_code == 409
        assert post(rekey).status_code == 201


def test_participants_listing_requires_a_member(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        op = space.operator
        assert op.client.get("/operator/participants").status_code == 401
        response = signed(tax, "GET", f"{op.url}/operator/participants", "city-centre")
        assert response.status_code == 200
        listing = {p["id"]: p for p in response.json()}
        assert set(listing) == {"city-centre", "tax-bureau"}
        assert listing["city-centre"]["ledgerVkey"] == op.runtime.ledger.vkey
        assert listing["tax-bureau"]["revoked"] is False
        assert listing["tax-bureau"]["publicKey"] == tax.runtime.key.verify_key.to_b64()
        missing = signed(tax, "GET", f"{op.url}/operator/participants/nobody-here", "city-centre")
        assert missing.status_code == 404


# -- revocation --------------------------------------------------------------------------------


def test_revocation_is_pushed_and_the_revoked_node_is_refused(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        bank = space.add("bank-a", ["consumer"])
        admit_http(space, tax)
        admit_http(space, bank)
        add_probe(tax)
        probe = f"{tax.url}/test-probe"
        before = signed(bank, "GET", probe, "tax-bureau")
        assert before.status_code == 200 and before.json() == {"who": "bank-a"}

        op = space.operator
        response = op.client.post(
            "/operator/participants/bank-a/revoke",
            json={"reason": "left the space"},
            headers=op.admin_headers,
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["pushed"] == {"tax-bureau": True}
        directory = tax.runtime.directory
        assert directory is not None
        with tax.runtime.transaction(readonly=True) as tx:
            assert directory.revocation_sequence(tx) == result["sequence"]

        assert signed(bank, "GET", probe, "tax-bureau").status_code == 401
        listing = signed(tax, "GET", f"{op.url}/operator/participants/bank-a", "city-centre")
        assert listing.json()["revoked"] is True
        public = op.client.get("/operator/revocations").json()
        assert public["sequence"] == result["sequence"]


def test_revocation_refusals(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        op = space.operator
        body = {"reason": "x"}
        assert (
            op.client.post("/operator/participants/nobody-here/revoke", json=body).status_code
            == 401
        )
        unknown = op.client.post(
            "/operator/participants/nobody-here/revoke", json=body, headers=op.admin_headers
        )
        assert unknown.status_code == 404
        itself = op.client.post(
            "/operator/participants/city-centre/revoke", json=body, headers=op.admin_headers
        )
        assert itself.status_code == 400


def test_a_node_that_missed_the_push_catches_up(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        bank = space.add("bank-a", ["consumer"])
        space.admit_direct(tax)
        space.admit_direct(bank)
        op = space.operator.runtime
        assert op.authority is not None
        with op.transaction() as tx:  # revoked without any push
            op.authority.revoke(tx, "bank-a", now=op.clock(), reason="test")
            cid = op.authority.directory.get(tx, "bank-a").credential_id
        assert federation.sync_revocations(tax.runtime) == 1
        assert federation.sync_revocations(tax.runtime) == 0
        directory = tax.runtime.directory
        assert directory is not None
        with tax.runtime.transaction(readonly=True) as tx:
            assert directory.is_revoked(tx, cid)


# -- federated catalog -------------------------------------------------------------------------


def test_federated_catalog_filters_per_caller(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        bank = space.add("bank-a", ["consumer"])
        admit_http(space, tax)
        admit_http(space, bank)
        with tax.runtime.transaction() as tx:
            publish(tx, make_dataset("urn:uuid:open", Tier.UNCONDITIONAL, 1), [OFFER])
            publish(tx, make_dataset("urn:uuid:zone", Tier.ZONE, 3), [OFFER])
        assert federation.push_catalog(tax.runtime) is True
        assert federation.push_catalog(bank.runtime) is False  # a consumer has nothing to push

        op = space.operator
        request = {
            "@context": list(dsp.DSP_CONTEXT),
            "@type": "CatalogRequestMessage",
            "filter": [],
        }
        anonymous = op.client.post("/operator/catalog/request", json=request)
        assert anonymous.status_code == 200, anonymous.text
        dsp.validate(anonymous.json(), "catalog/catalog-schema.json")
        nested = anonymous.json()["catalog"]
        assert [c["participantId"] for c in nested] == ["tax-bureau"]
        assert [d["@id"] for d in nested[0]["dataset"]] == ["urn:uuid:open"]
        assert all(d[TS_NAMESPACE + "tier"] == "unconditional" for d in nested[0]["dataset"])

        member = signed(bank, "POST", f"{op.url}/operator/catalog/request", "city-centre", request)
        assert member.status_code == 200
        dsp.validate(member.json(), "catalog/catalog-schema.json")
        ids = sorted(d["@id"] for d in member.json()["catalog"][0]["dataset"])
        assert ids == ["urn:uuid:open", "urn:uuid:zone"]

        bad_message = op.client.post("/operator/catalog/request", json={"@type": "Nope"})
        assert bad_message.status_code == 400


def test_only_the_provider_itself_may_register_its_catalog(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        bank = space.add("bank-a", ["consumer"])
        court = space.add("court", ["provider"])
        for node in (tax, bank, court):
            admit_http(space, node)
        op = space.operator
        with tax.runtime.transaction() as tx:
            publish(tx, make_dataset("urn:uuid:zone", Tier.ZONE, 3), [OFFER])
        assert federation.push_catalog(tax.runtime)
        from trusted_space.catalog import list_datasets, to_dsp_catalog

        with tax.runtime.transaction(readonly=True) as tx:
            catalog = to_dsp_catalog("tax-bureau", list_datasets(tx), tax.url)
        url = f"{op.url}/operator/catalog/tax-bureau"
        assert signed(court, "PUT", url, "city-centre", catalog).status_code == 403
        assert signed(bank, "PUT", url, "city-centre", catalog).status_code == 403
        own_as_consumer = signed(
            bank, "PUT", f"{op.url}/operator/catalog/bank-a", "city-centre", catalog
        )
        assert own_as_consumer.status_code == 403
        assert op.client.put(url, json=catalog).status_code == 401
        # the provider itself, but a body naming someone else or not a DSP catalog
        court_catalog = {**catalog, "participantId": "court"}
        court_url = f"{op.url}/operator/catalog/court"
        wrong_owner = signed(court, "PUT", court_url, "city-centre", court_catalog)
        assert wrong_owner.status_code == 400 and "owner" in wrong_owner.json()["detail"]
        wrong_id = signed(tax, "PUT", url, "city-centre", court_catalog)
        assert wrong_id.status_code == 400 and "participantId" in wrong_id.json()["detail"]
        not_dsp = signed(tax, "PUT", url, "city-centre", {"@type": "Catalog"})
        assert not_dsp.status_code == 400
        # revoking the provider drops its entry
        op.client.post(
            "/operator/participants/tax-bureau/revoke",
            json={"reason": "gone"},
            headers=op.admin_headers,
        )
        request = {"@context": list(dsp.DSP_CONTEXT), "@type": "CatalogRequestMessage"}
        after = signed(bank, "POST", f"{op.url}/operator/catalog/request", "city-centre", request)
        assert "catalog" not in after.json()
        dsp.validate(after.json(), "catalog/catalog-schema.json")


# -- witness -----------------------------------------------------------------------------------


def test_witness_cosigns_an_extending_history_and_refuses_a_fork(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        grow(tax, 5)
        witness = parse_vkey(space.anchor.witness_vkey)

        first = federation.submit_checkpoint(tax.runtime)
        assert first is not None
        verify_cosignature(first, witness)
        head = open_checkpoint(first, tax.runtime.ledger.vkey)
        assert head.size == tax.runtime.ledger.size()
        assert tax.client.get("/ledger/cosignatures").json() == {"notes": [first]}
        assert tax.client.get("/ledger/checkpoint").text == first

        grow(tax, 7)
        second = federation.submit_checkpoint(tax.runtime)
        assert second is not None
        assert open_checkpoint(second, tax.runtime.ledger.vkey).size == head.size + 7
        witnessed = space.operator.runtime.ledger.size()
        assert federation.submit_checkpoint(tax.runtime) == second  # nothing new: no call
        assert space.operator.runtime.ledger.size() == witnessed

        # a second history at the witnessed size: a fork, refused and kept as evidence
        origin = tax.runtime.ledger.origin
        size = open_checkpoint(second, tax.runtime.ledger.vkey).size
        forged = sign_note(Checkpoint(origin, size, b"\x07" * 32).body(), origin, tax.runtime.key)
        cosign_url = f"{space.operator.url}/operator/witness/cosign"
        refused = signed(
            tax, "POST", cosign_url, "city-centre", {"checkpoint": forged, "proof": []}
        )
        assert refused.status_code == 409
        assert refused.json()["type"].endswith("/inconsistent-checkpoint")
        op_witness = space.operator.runtime.witness
        assert op_witness is not None
        assert len(op_witness.state.forks(origin)) == 1

        # signed by another key: the usual 401
        stranger = sign_note(
            Checkpoint(origin, size + 1, b"\x01" * 32).body(), origin, SigningKey.generate()
        )
        bad = signed(tax, "POST", cosign_url, "city-centre", {"checkpoint": stranger, "proof": []})
        assert bad.status_code == 401
        op_ledger = space.operator.runtime.ledger
        last = decode_event(0, op_ledger.entries(op_ledger.size() - 1, op_ledger.size())[0])
        assert last.kind == "auth.refused" and "tax-bureau" in last.body["reason"]
        # a malformed proof element is a 422, not fork evidence
        malformed = signed(
            tax, "POST", cosign_url, "city-centre", {"checkpoint": forged, "proof": ["zz"]}
        )
        assert malformed.status_code == 422
        assert len(op_witness.state.forks(origin)) == 1


def test_witness_needs_a_registered_ledger_key(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        bank = space.add("bank-a", ["consumer"])
        space.admit_direct(bank)  # out of band: no ledger key registered
        assert federation.submit_checkpoint(bank.runtime) is None
        note = bank.runtime.ledger.checkpoint()
        response = signed(
            bank,
            "POST",
            f"{space.operator.url}/operator/witness/cosign",
            "city-centre",
            {"checkpoint": note, "proof": []},
        )
        assert response.status_code == 404
        assert "no ledger key" in response.json()["detail"]


def test_operator_witnesses_its_own_log_and_management_route(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        op = space.operator
        assert op.client.post("/management/ledger/checkpoint").status_code == 401
        response = op.client.post("/management/ledger/checkpoint", headers=op.admin_headers)
        assert response.status_code == 200
        assert response.json()["cosigned"] is True
        verify_cosignature(response.json()["note"], parse_vkey(space.anchor.witness_vkey))
        lonely = space.add("lonely", ["consumer"])  # not admitted: nothing to witness
        result = lonely.client.post("/management/ledger/checkpoint", headers=lonely.admin_headers)
        assert result.status_code == 200 and result.json()["cosigned"] is False
        open_checkpoint(result.json()["note"], lonely.runtime.ledger.vkey)


# -- periodic jobs -----------------------------------------------------------------------------


def test_background_loop_witnesses_and_stops_promptly(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        admit_http(space, tax)
        grow(tax, 3)
        jobs = Background(tax.runtime, interval=0.05)
        jobs.start()
        deadline = time.monotonic() + 10
        while jobs.rounds < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        jobs.stop()
        assert time.monotonic() - started < 5
        assert not jobs.running
        assert jobs.rounds >= 1
        assert tax.client.get("/ledger/cosignatures").json()["notes"]

        idle = Background(tax.runtime, interval=3600)
        idle.start()
        assert idle.running
        started = time.monotonic()
        idle.stop()
        assert time.monotonic() - started < 1
        disabled = Background(tax.runtime, interval=0)
        disabled.start()
        assert not disabled.running
