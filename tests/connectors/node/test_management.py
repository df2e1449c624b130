"""The management API: admin-only, strict validation, nothing half-written, never a 500."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.client.http import AdminClient
from connectors.common.errors import PROBLEM_MEDIA_TYPE
from connectors.node.wire.management import ID_PATTERN
from tests._seeding import random_for
from tests.connectors._space import InProcessSpace, Node
from trusted_space.catalog import list_datasets, to_dsp_catalog
from trusted_space.consent import sign_consent
from trusted_space.events import decode_event
from trusted_space.keys import SigningKey
from trusted_space.metering import record_use
from trusted_space.uscc import generate_uscc

ROWS = 40
SCORE_POLICY: dict[str, Any] = {
    "@type": "Offer",
    "permission": [
        {
            "action": "use",
            "constraint": [
                {"leftOperand": "purpose", "operator": "eq", "rightOperand": "pre-loan-review"},
                {"leftOperand": "computation", "operator": "eq", "rightOperand": "score"},
                {"leftOperand": "output", "operator": "eq", "rightOperand": "score"},
            ],
        }
    ],
}
RAW_POLICY: dict[str, Any] = {
    "@id": "urn:uuid:raw-rows",
    "@type": "Offer",
    "permission": [{"action": "use"}],
}


def dataset_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "tax-paid",
        "title": "Tax paid per enterprise",
        "tier": "zone",
        "keyColumn": "uscc",
        "keyKind": "uscc",
        "responsibility": {"id": "tax-collection", "title": "Tax collection"},
        "resource": {"id": "tax-records", "title": "Tax records"},
        "table": {
            "name": "tax_paid",
            "fields": [
                {"name": "uscc", "type": "string", "grade": 1},
                {"name": "tax_paid", "type": "float", "grade": 3},
                {"name": "employees", "type": "int", "grade": 2},
            ],
        },
    }
    doc.update(changes)
    return doc


def write_csv(node: Node, name: str = "tax.csv", *, bad_row: int | None = None) -> str:
    """A CSV in the node's data dir; returns the path relative to the node dir."""
    rng = random_for(f"{__name__}.write_csv")
    path = Path(node.settings.dir) / "data" / name
    path.parent.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uscc", "tax_paid", "employees"])
        for i in range(ROWS):
            code = generate_uscc(rng)
            if i + 1 == bad_row:
                code = code[:17] + ("1" if code[17] == "0" else "0")
            writer.writerow([code, round(rng.uniform(0, 1e6), 2), rng.randrange(1, 900)])
    return f"data/{name}"


def registration(node: Node, offers: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    return {
        "dataset": dataset_doc(**changes),
        "source": {"kind": "csv", "path": write_csv(node)},
        "offers": offers,
    }


def store_policy(node: Node, policy_id: str = "score-only") -> dict[str, Any]:
    r = node.client.post(
        "/management/policies",
        json={"id": policy_id, "policy": SCORE_POLICY},
        headers=node.admin_headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def events(node: Node) -> list[str]:
    size = node.runtime.ledger.size()
    return [decode_event(i, e).kind for i, e in enumerate(node.runtime.ledger.entries(0, size))]


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["type"].endswith("/" + slug)
    return body


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/management/datasets"),
        ("POST", "/management/datasets"),
        ("PUT", "/management/credential"),
        ("GET", "/management/peers"),
        ("GET", "/management/metering?agreement=a"),
        ("POST", "/management/consents"),
    ],
)
def test_every_route_refuses_without_the_admin_token(tax: Node, method: str, path: str) -> None:
    missing = tax.client.request(method, path, json={})
    wrong = tax.client.request(
        method, path, json={}, headers={"Authorization": "Bearer not-the-token"}
    )
    member_token = tax.client.request(
        method, path, json={}, headers={"Authorization": "Basic " + tax.runtime.admin_token}
    )
    bodies = [assert_problem(r, 401, "unauthorized") for r in (missing, wrong, member_token)]
    assert bodies[0] == bodies[1] == bodies[2]
    assert tax.runtime.admin_token not in missing.text + wrong.text


# -- credential -----------------------------------------------------------------------------------


def test_credential_install_verifies_the_token(space: InProcessSpace) -> None:
    node = space.add("bank-a", ["consumer"])
    op = space.operator.runtime
    assert op.authority is not None
    with op.transaction() as tx:
        good = op.authority.issue(
            tx, "bank-a", {"consumer"}, node.runtime.key.verify_key, now=op.clock()
        )
        other_id = op.authority.issue(
            tx, "bank-b", {"consumer"}, node.runtime.key.verify_key, now=op.clock()
        )
        other_key = op.authority.issue(
            tx, "bank-c", {"consumer"}, SigningKey.generate().verify_key, now=op.clock()
        )
    put = node.client.put

    assert_problem(
        put("/management/credential", json={"token": "x.y.z"}, headers=node.admin_headers),
        401,
        "unauthorized",
    )
    tampered = good.token[:-4] + ("AAAA" if not good.token.endswith("AAAA") else "BBBB")
    assert_problem(
        put("/management/credential", json={"token": tampered}, headers=node.admin_headers),
        401,
        "unauthorized",
    )
    body = assert_problem(
        put("/management/credential", json={"token": other_id.token}, headers=node.admin_headers),
        400,
        "invalid-input",
    )
    assert "bank-b" in body["detail"]
    assert_problem(
        put("/management/credential", json={"token": other_key.token}, headers=node.admin_headers),
        400,
        "invalid-input",
    )
    assert node.client.get("/identity").json()["admitted"] is False

    r = put("/management/credential", json={"token": good.token}, headers=node.admin_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": "bank-a",
        "roles": ["consumer"],
        "expiresAt": good.expires_at.isoformat(),
    }
    assert node.client.get("/identity").json()["admitted"] is True


# -- datasets -----------------------------------------------------------------------------------


def test_register_a_csv_dataset_with_a_stored_policy(tax: Node) -> None:
    stored = store_policy(tax)
    assert stored["policy"]["assigner"] == "tax-bureau"
    assert "policy.stored" in events(tax)

    r = tax.client.post(
        "/management/datasets",
        json=registration(tax, [{"policyId": "score-only"}]),
        headers=tax.admin_headers,
    )

    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"] == "tax-paid"
    assert created["version"] == 1
    assert created["rows"] == ROWS
    assert isinstance(created["federated"], bool)
    listed = tax.client.get("/management/datasets", headers=tax.admin_headers).json()
    assert [(d["id"], d["tier"], d["maxGrade"], d["rows"]) for d in listed] == [
        ("tax-paid", "zone", 3, ROWS)
    ]
    offer = listed[0]["offers"][0]
    assert offer["@id"] == "urn:trusted-space:tax-bureau:offer:tax-paid:score-only"
    assert offer["assigner"] == "tax-bureau" and "target" not in offer
    one = tax.client.get("/management/datasets/tax-paid", headers=tax.admin_headers).json()
    assert one["dataset"]["owner"] == "tax-bureau"
    assert one["dataset"]["offerIds"] == [offer["@id"]]
    assert one["source"]["path"] == str((Path(tax.settings.dir) / "data/tax.csv").resolve())
    assert one["source"]["rows"] == ROWS
    offers = tax.client.get("/management/offers", headers=tax.admin_headers).json()
    assert offers == [{"datasetId": "tax-paid", "offer": offer}]
    assert events(tax).count("dataset.published") == 1
    # what was stored exports as a valid DSP catalog
    with tax.runtime.transaction(readonly=True) as tx:
        catalog = to_dsp_catalog(tax.id, list_datasets(tx), tax.url)
    assert [d["@id"] for d in catalog["dataset"]] == ["tax-paid"]


def test_register_with_an_inline_offer_and_sqlite_and_parquet_sources(tax: Node) -> None:
    relative = write_csv(tax)
    with (Path(tax.settings.dir) / relative).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    db = Path(tax.settings.dir) / "data" / "tax.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tax_paid (uscc TEXT, tax_paid REAL, employees INTEGER)")
    conn.executemany(
        "INSERT INTO tax_paid VALUES (?, ?, ?)",
        [(r["uscc"], float(r["tax_paid"]), int(r["employees"])) for r in rows],
    )
    conn.commit()
    conn.close()
    parquet = Path(tax.settings.dir) / "data" / "tax.parquet"
    pq.write_table(
        pa.table({k: [r[k] for r in rows] for k in ("uscc", "tax_paid", "employees")}), parquet
    )
    inline = dict(SCORE_POLICY, **{"@id": "urn:uuid:inline-score"})

    for dataset_id, source in (
        ("tax-sqlite", {"kind": "sqlite", "path": str(db), "table": "tax_paid"}),
        ("tax-parquet", {"kind": "parquet", "path": "data/tax.parquet"}),
    ):
        body = {"dataset": dataset_doc(id=dataset_id), "source": source, "offers": [inline]}
        r = tax.client.post("/management/datasets", json=body, headers=tax.admin_headers)
        assert r.status_code == 201, r.text
        assert r.json()["rows"] == ROWS
    listed = tax.client.get("/management/datasets", headers=tax.admin_headers).json()
    assert sorted(d["id"] for d in listed) == ["tax-parquet", "tax-sqlite"]


def test_grade_floor_violation_writes_nothing(tax: Node) -> None:
    store_policy(tax)
    before = tax.runtime.ledger.size()
    body = registration(tax, [RAW_POLICY], tier="unconditional")  # tax_paid has grade 3

    r = tax.client.post("/management/datasets", json=body, headers=tax.admin_headers)

    problem = assert_problem(r, 400, "grade-floor")
    assert "tax_paid" in problem["detail"]
    assert tax.client.get("/management/datasets", headers=tax.admin_headers).json() == []
    assert tax.runtime.ledger.size() == before
    with tax.runtime.transaction(readonly=True) as tx:
        assert tx.scan("source") == []


def test_an_offer_looser_than_the_zone_tier_is_refused(tax: Node) -> None:
    before = tax.runtime.ledger.size()
    r = tax.client.post(
        "/management/datasets",
        json=registration(tax, [RAW_POLICY]),  # zone tier, but the offer permits raw output
        headers=tax.admin_headers,
    )
    problem = assert_problem(r, 400, "grade-floor")
    assert problem["detail"].startswith("offers[0]:")
    assert tax.runtime.ledger.size() == before


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"source": {"kind": "csv", "path": "data/absent.csv"}}, "no file at"),
        ({"offers": [{"policyId": "nothing"}]}, "offers[0].policyId: no stored policy"),
        ({"offers": [{"@type": "Offer", "permission": [{"action": "use"}]}]}, "offers[0]: $.@id"),
        (
            {"offers": [dict(SCORE_POLICY, **{"@id": "o1", "assigner": "court"})]},
            "offers[0].assigner",
        ),
        ({"dataset": dataset_doc(owner="court")}, "dataset.owner"),
        ({"dataset": dataset_doc(id="a/b")}, "dataset.id"),
        ({"dataset": dataset_doc(keyColumn="nope")}, "dataset.keyColumn"),
        ({"dataset": dataset_doc(offerIds=["other"])}, "dataset.offerIds"),
    ],
)
def test_invalid_registrations_name_the_field(
    tax: Node, change: dict[str, Any], needle: str
) -> None:
    store_policy(tax)
    before = tax.runtime.ledger.size()
    body = registration(tax, [{"policyId": "score-only"}]) | change
    problem = assert_problem(
        tax.client.post("/management/datasets", json=body, headers=tax.admin_headers),
        400,
        "invalid-input",
    )
    assert needle in problem["detail"]
    assert tax.runtime.ledger.size() == before


def test_source_errors_name_the_column_and_the_row(tax: Node) -> None:
    store_policy(tax)
    body = registration(tax, [{"policyId": "score-only"}])
    body["dataset"]["table"]["fields"].append({"name": "branch", "type": "string", "grade": 1})
    problem = assert_problem(
        tax.client.post("/management/datasets", json=body, headers=tax.admin_headers),
        400,
        "invalid-input",
    )
    assert "column 'branch' is declared in table 'tax_paid' but missing from" in problem["detail"]

    body = registration(tax, [{"policyId": "score-only"}])
    body["source"]["path"] = write_csv(tax, "bad.csv", bad_row=23)
    problem = assert_problem(
        tax.client.post("/management/datasets", json=body, headers=tax.admin_headers),
        400,
        "invalid-input",
    )
    assert "row 23 of column 'uscc'" in problem["detail"]
    assert tax.client.get("/management/datasets", headers=tax.admin_headers).json() == []


def test_a_second_registration_conflicts_and_replace_needs_the_version(tax: Node) -> None:
    store_policy(tax)
    body = registration(tax, [{"policyId": "score-only"}])
    assert tax.client.post("/management/datasets", json=body, headers=tax.admin_headers).is_success
    assert_problem(
        tax.client.post("/management/datasets", json=body, headers=tax.admin_headers),
        409,
        "conflict",
    )

    body["dataset"]["title"] = "Tax paid, revised"
    stale = tax.client.put(
        "/management/datasets/tax-paid", json=body | {"version": 7}, headers=tax.admin_headers
    )
    assert_problem(stale, 409, "conflict")
    r = tax.client.put(
        "/management/datasets/tax-paid", json=body | {"version": 1}, headers=tax.admin_headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2
    one = tax.client.get("/management/datasets/tax-paid", headers=tax.admin_headers).json()
    assert one["dataset"]["title"] == "Tax paid, revised"
    assert_problem(
        tax.client.put(
            "/management/datasets/other", json=body | {"version": 1}, headers=tax.admin_headers
        ),
        404,
        "not-found",
    )


def test_withdrawal_is_logged_and_the_id_is_never_reused(tax: Node) -> None:
    store_policy(tax)
    body = registration(tax, [{"policyId": "score-only"}])
    assert tax.client.post("/management/datasets", json=body, headers=tax.admin_headers).is_success

    assert_problem(
        tax.client.delete("/management/datasets/tax-paid?version=3", headers=tax.admin_headers),
        409,
        "conflict",
    )
    r = tax.client.delete("/management/datasets/tax-paid", headers=tax.admin_headers)

    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert events(tax)[-1] == "dataset.withdrawn"
    assert_problem(
        tax.client.get("/management/datasets/tax-paid", headers=tax.admin_headers),
        404,
        "not-found",
    )
    assert tax.client.get("/management/offers", headers=tax.admin_headers).json() == []
    assert_problem(
        tax.client.post("/management/datasets", json=body, headers=tax.admin_headers),
        409,
        "conflict",
    )


def test_a_consumer_only_node_does_not_publish(space: InProcessSpace) -> None:
    bank = space.add("bank-a", ["consumer"])
    problem = assert_problem(
        bank.client.post(
            "/management/datasets",
            json={
                "dataset": dataset_doc(owner="bank-a"),
                "source": {"kind": "csv", "path": "x.csv"},
                "offers": [RAW_POLICY],
            },
            headers=bank.admin_headers,
        ),
        400,
        "invalid-input",
    )
    assert "provider" in problem["detail"]


# -- policies -----------------------------------------------------------------------------------


def test_policies_are_parsed_strictly_and_listed(tax: Node) -> None:
    stored = store_policy(tax, "urn:uuid:score")
    assert stored["policy"]["@id"] == "urn:uuid:score"
    bad = dict(SCORE_POLICY)
    bad["permission"] = [{"action": "use", "constraint": [{"leftOperand": "colour"}]}]
    problem = assert_problem(
        tax.client.post(
            "/management/policies", json={"id": "bad", "policy": bad}, headers=tax.admin_headers
        ),
        400,
        "invalid-input",
    )
    assert "$.permission[0].constraint[0]" in problem["detail"]
    assert_problem(
        tax.client.post(
            "/management/policies",
            json={"id": "urn:uuid:score", "policy": SCORE_POLICY},
            headers=tax.admin_headers,
        ),
        409,
        "conflict",
    )
    assert_problem(
        tax.client.post(
            "/management/policies",
            json={"id": "p2", "policy": dict(SCORE_POLICY, **{"@id": "p3"})},
            headers=tax.admin_headers,
        ),
        400,
        "invalid-input",
    )
    listed = tax.client.get("/management/policies", headers=tax.admin_headers).json()
    assert [p["id"] for p in listed] == ["urn:uuid:score"]
    one = tax.client.get("/management/policies/urn:uuid:score", headers=tax.admin_headers)
    assert one.json() == listed[0]
    assert_problem(
        tax.client.get("/management/policies/none", headers=tax.admin_headers), 404, "not-found"
    )


# -- consents -----------------------------------------------------------------------------------


def test_consents_round_trip(space: InProcessSpace, tax: Node) -> None:
    now = tax.runtime.clock()
    entity = generate_uscc(random_for(f"{__name__}.test_consents_round_trip"))
    entity_key = SigningKey.generate()
    consent = sign_consent(
        entity_key,
        issuer=entity,
        entity=entity,
        grantee="bank-a",
        purpose="pre-loan-review",
        not_before=now - timedelta(minutes=1),
        expires_at=now + timedelta(days=30),
        now=now,
    )
    post = tax.client.post
    h = tax.admin_headers

    # unknown signer key: refused, nothing stored
    problem = assert_problem(
        post("/management/consents", json={"token": consent.token}, headers=h),
        400,
        "invalid-input",
    )
    assert problem["detail"].startswith("token:")
    r = post(
        "/management/consents/entity-keys",
        json={"entity": entity, "publicKey": entity_key.verify_key.to_b64()},
        headers=h,
    )
    assert r.status_code == 201, r.text
    assert r.json() == {"entity": entity, "fingerprint": entity_key.verify_key.fingerprint}
    assert_problem(
        post(
            "/management/consents/entity-keys",
            json={"entity": entity, "publicKey": "not base64!"},
            headers=h,
        ),
        400,
        "invalid-input",
    )

    r = post("/management/consents", json={"token": consent.token}, headers=h)
    assert r.status_code == 201, r.text
    view = r.json()
    assert view["id"] == consent.consent_id
    assert (view["entity"], view["grantee"], view["purpose"]) == (
        entity,
        "bank-a",
        "pre-loan-review",
    )
    assert view["signedBy"] == "entity" and view["revoked"] is False
    assert "token" not in view
    assert tax.client.get(f"/management/consents/{consent.consent_id}", headers=h).json() == view
    assert_problem(
        post("/management/consents", json={"token": consent.token}, headers=h), 409, "conflict"
    )

    r = post(
        f"/management/consents/{consent.consent_id}/revoke", json={"reason": "withdrawn"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] is True
    got = tax.client.get(f"/management/consents/{consent.consent_id}", headers=h).json()
    assert got["revoked"] is True
    assert {"consent.key_registered", "consent.registered", "consent.revoked"} <= set(events(tax))
    assert_problem(tax.client.get("/management/consents/nope", headers=h), 404, "not-found")

    # the operator may sign on the entity's behalf
    op = space.operator.runtime
    by_operator = sign_consent(
        op.key,
        issuer=op.id,
        entity=entity,
        grantee="bank-a",
        purpose="risk-monitoring",
        not_before=now,
        expires_at=now + timedelta(days=1),
        now=now,
    )
    r = post("/management/consents", json={"token": by_operator.token}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["signedBy"] == "operator"


def test_consents_need_an_operator_anchor(space: InProcessSpace) -> None:
    lonely = space.add("lonely", ["provider"], anchored=False)
    assert_problem(
        lonely.client.post(
            "/management/consents", json={"token": "a.b.c"}, headers=lonely.admin_headers
        ),
        503,
        "not-ready",
    )
    assert_problem(
        lonely.client.put(
            "/management/credential", json={"token": "a.b.c"}, headers=lonely.admin_headers
        ),
        503,
        "not-ready",
    )


# -- metering and peers -------------------------------------------------------------------------


def test_metering_summarises_one_agreement_or_participant(tax: Node) -> None:
    with tax.runtime.transaction() as tx:
        record_use(tx, "agreement-1", "bank-a", "score")
        record_use(tx, "agreement-1", "bank-a", "score")
        record_use(tx, "agreement-1", "bank-a", "aggregate")
        record_use(tx, "agreement-2", "bank-a", "transfer")
    h = tax.admin_headers

    by_agreement = tax.client.get("/management/metering?agreement=agreement-1", headers=h)
    by_participant = tax.client.get("/management/metering?participant=bank-a", headers=h)
    unused = tax.client.get("/management/metering?participant=court", headers=h)

    assert by_agreement.json() == {
        "subject": "agreement",
        "subjectId": "agreement-1",
        "total": 3,
        "byKind": {"aggregate": 1, "score": 2},
    }
    assert by_participant.json()["total"] == 4
    assert by_participant.json()["byKind"] == {"aggregate": 1, "score": 2, "transfer": 1}
    assert unused.json() == {
        "subject": "participant",
        "subjectId": "court",
        "total": 0,
        "byKind": {},
    }
    for query in ("", "?agreement=a&participant=b", "?agreement="):
        assert_problem(
            tax.client.get(f"/management/metering{query}", headers=h), 422, "invalid-request"
        )


def test_peers_lists_the_known_members(space: InProcessSpace, tax: Node) -> None:
    bank = space.add("bank-a", ["consumer", "provider"])
    space.admit_direct(bank)
    peers = tax.client.get("/management/peers", headers=tax.admin_headers).json()
    assert {p["id"]: (p["url"], p["roles"]) for p in peers} == {
        "city-centre": (space.operator.url, ["operator"]),
        "bank-a": (bank.url, ["consumer", "provider"]),
    }


# -- malformed input is a 4xx, never a 500 ------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=16,
)
DATASET_KEYS = [*dataset_doc(), "owner", "offerIds", "keywords", "description"]
ODRL_KEYS = ["@id", "@type", "permission", "prohibition", "obligation", "assigner", "target"]


def _partial(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), JSON, max_size=len(keys))


def _near(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one member replaced by arbitrary JSON (reaches the core's parsers)."""
    return st.builds(lambda k, v: base | {k: v}, st.sampled_from(list(base)), JSON)


def _near_offer() -> st.SearchStrategy[dict[str, Any]]:
    offer = SCORE_POLICY | {"@id": "o1"}
    rule = SCORE_POLICY["permission"][0]
    constraint = rule["constraint"][0]
    return (
        _near(offer)
        | st.builds(lambda r: offer | {"permission": [r]}, _near(rule))
        | st.builds(
            lambda c: offer | {"permission": [rule | {"constraint": [c]}]}, _near(constraint)
        )
    )


def _shapes() -> st.SearchStrategy[tuple[str, str, Any]]:
    offers = st.lists(
        _near_offer() | _partial(ODRL_KEYS) | st.fixed_dictionaries({"policyId": JSON}),
        min_size=1,
        max_size=3,
    )
    source = st.just({"kind": "csv", "path": "data/tax.csv"})
    registration = st.fixed_dictionaries(
        {
            "dataset": _near(dataset_doc()) | _partial(DATASET_KEYS),
            "source": source | _near({"kind": "sqlite", "path": "data/tax.csv", "table": "t"}),
            "offers": offers,
        }
    )
    near_registration = st.fixed_dictionaries(
        {"dataset": st.just(dataset_doc()), "source": source, "offers": offers}
    )
    policy = st.fixed_dictionaries(
        {
            "id": st.from_regex(ID_PATTERN, fullmatch=True) | st.from_type(str),
            "policy": _near_offer() | _partial(ODRL_KEYS),
        }
    )
    token = st.fixed_dictionaries({"token": st.from_type(str)})
    return st.one_of(
        st.tuples(st.just("POST"), st.just("/management/datasets"), JSON),
        st.tuples(st.just("POST"), st.just("/management/datasets"), registration),
        st.tuples(st.just("POST"), st.just("/management/datasets"), near_registration),
        st.tuples(st.just("POST"), st.just("/management/policies"), policy | JSON),
        st.tuples(st.just("POST"), st.just("/management/consents"), token | JSON),
        st.tuples(
            st.just("POST"),
            st.just("/management/consents/entity-keys"),
            st.fixed_dictionaries({"entity": st.text(max_size=20), "publicKey": st.text()}) | JSON,
        ),
        st.tuples(st.just("PUT"), st.just("/management/credential"), token | JSON),
        st.tuples(st.just("PUT"), st.just("/management/datasets/tax-paid"), JSON),
        st.tuples(
            st.just("GET"),
            st.builds(
                lambda q: f"/management/metering?agreement={quote(q, safe='')}",
                st.text(max_size=20),
            ),
            st.none(),
        ),
    )


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with InProcessSpace(tmp_path_factory.mktemp("fuzz")) as s:
        node = s.add("tax-bureau", ["provider"])
        s.admit_direct(node)
        write_csv(node)
        yield node


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_shapes())
def test_malformed_bodies_are_refused_with_a_4xx(
    fuzz_node: Node, request: tuple[str, str, Any]
) -> None:
    method, path, body = request
    before = fuzz_node.runtime.ledger.size()
    r = fuzz_node.client.request(method, path, json=body, headers=fuzz_node.admin_headers)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert fuzz_node.runtime.ledger.size() == before


@settings(max_examples=30, deadline=None)
@given(raw=st.binary(max_size=64))
def test_bodies_that_are_not_json_are_refused(fuzz_node: Node, raw: bytes) -> None:
    r = fuzz_node.client.post(
        "/management/datasets",
        content=b"{" + raw,
        headers=fuzz_node.admin_headers | {"content-type": "application/json"},
    )
    # 422 for bad JSON; FastAPI answers 400 when the bytes are not even UTF-8
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"] == PROBLEM_MEDIA_TYPE


def test_the_clock_is_the_runtime_clock(tax: Node) -> None:
    # every timestamp the API writes comes from runtime.clock(), which tests can move
    stamp = datetime(2031, 1, 1, tzinfo=UTC)
    tax.runtime.clock = lambda: stamp
    store_policy(tax)
    body = registration(tax, [{"policyId": "score-only"}])
    assert tax.client.post("/management/datasets", json=body, headers=tax.admin_headers).is_success
    one = tax.client.get("/management/datasets/tax-paid", headers=tax.admin_headers).json()
    assert one["source"]["validatedAt"] == stamp.isoformat()


# -- pagination ---------------------------------------------------------------------------------


def test_a_list_longer_than_a_page_comes_back_whole_and_stable_under_inserts(
    space: InProcessSpace, tax: Node
) -> None:
    ids = [f"urn:uuid:p{i:02d}" for i in range(7)]
    for policy_id in ids:
        store_policy(tax, policy_id)

    # A page of 3: a next link while more remain.
    first = tax.client.get("/management/policies?limit=3", headers=tax.admin_headers)
    assert [p["id"] for p in first.json()] == ids[:3]
    link = first.links["next"]["url"]
    assert link.startswith("/management/policies?") and "limit=3" in link

    # An insert before the cursor is neither repeated nor makes another item skipped.
    store_policy(tax, "urn:uuid:p00a")
    second = tax.client.get(link, headers=tax.admin_headers)
    assert [p["id"] for p in second.json()] == ids[3:6]

    # The client follows every next link: the whole list (with the insert), in order.
    with AdminClient(tax.url, tax.runtime.admin_token, transport=space.transport) as client:
        whole = client.get("/management/policies", params={"limit": 2})
    assert [p["id"] for p in whole] == sorted([*ids, "urn:uuid:p00a"])
    last = tax.client.get(f"/management/policies?limit={len(whole)}", headers=tax.admin_headers)
    assert "next" not in last.links


@pytest.mark.parametrize(
    "cursor",
    [
        "not a cursor!",
        "e30",  # {} : no key
        # a cursor of another list (the datasets'), handed to the policies
        "eyJsIjoiL21hbmFnZW1lbnQvZGF0YXNldHMiLCJrIjpbImEiXX0",
        # this list's path with a key of another shape
        "eyJsIjoiL21hbmFnZW1lbnQvcG9saWNpZXMiLCJrIjpbMSwyXX0",
    ],
)
def test_a_bad_cursor_is_a_400_problem(tax: Node, cursor: str) -> None:
    store_policy(tax, "urn:uuid:one")
    problem = assert_problem(
        tax.client.get(
            "/management/policies", params={"cursor": cursor}, headers=tax.admin_headers
        ),
        400,
        "invalid-input",
    )
    assert problem["detail"].startswith("cursor:")


def test_every_staff_list_route_takes_limit_and_cursor(tax: Node) -> None:
    schema = tax.client.get("/openapi.json").json()
    lists = [
        path
        for path, item in schema["paths"].items()
        if path.startswith("/management")
        and "get" in item
        and item["get"]["responses"]["200"]["content"]["application/json"]["schema"].get("type")
        == "array"
    ]
    assert "/management/policies" in lists and "/management/transfers" in lists
    for path in lists:
        names = {p["name"] for p in schema["paths"][path]["get"].get("parameters", [])}
        assert {"limit", "cursor"} <= names, path
