"""Every node's public ledger routes: checkpoint, exact entries, proofs, and bad parameters."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.connectors._space import InProcessSpace, grow
from trusted_space.ledger import open_checkpoint
from trusted_space.merkle import leaf_hash, verify_consistency, verify_inclusion


def test_checkpoint_verifies_with_the_published_key_and_follows_growth(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        vkey = tax.client.get("/identity").json()["ledgerVkey"]
        grow(tax, 3)
        response = tax.client.get("/ledger/checkpoint")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        head = open_checkpoint(response.text, vkey)
        assert head.size == 3 and head.root == tax.runtime.ledger.root(3)
        assert tax.client.get("/ledger/checkpoint").text == response.text  # no growth: same
        grow(tax, 2)
        assert open_checkpoint(tax.client.get("/ledger/checkpoint").text, vkey).size == 5


def test_entries_are_the_exact_bytes_in_pages(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        grow(tax, 1003)
        stored = tax.runtime.ledger.entries(0, 1003)

        page = tax.client.get("/ledger/entries", params={"start": 0, "end": 5000}).json()
        assert page["start"] == 0 and len(page["entries"]) == 1000
        assert [base64.b64decode(e) for e in page["entries"]] == stored[:1000]
        rest = tax.client.get("/ledger/entries", params={"start": 1000}).json()
        assert [base64.b64decode(e) for e in rest["entries"]] == stored[1000:]
        beyond = tax.client.get("/ledger/entries", params={"start": 2000, "end": 2001}).json()
        assert beyond == {"start": 2000, "entries": []}
        one = tax.client.get("/ledger/entries", params={"start": 7, "end": 8}).json()
        assert base64.b64decode(one["entries"][0]) == stored[7]


def test_proofs_verify_with_the_core_functions(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        grow(tax, 37)
        ledger = tax.runtime.ledger
        entries = ledger.entries(0, 37)

        @settings(max_examples=40)
        @given(st.data())
        def check(data: st.DataObject) -> None:
            size = data.draw(st.integers(1, 37))
            index = data.draw(st.integers(0, size - 1))
            doc = tax.client.get(
                "/ledger/proof/inclusion", params={"index": index, "size": size}
            ).json()
            assert doc["index"] == index and doc["size"] == size
            root = bytes.fromhex(doc["root"])
            assert root == ledger.root(size)
            proof = [bytes.fromhex(p) for p in doc["proof"]]
            verify_inclusion(leaf_hash(entries[index]), index, size, proof, root)

            first = data.draw(st.integers(0, size))
            cons = tax.client.get(
                "/ledger/proof/consistency", params={"first": first, "second": size}
            ).json()
            assert (cons["first"], cons["second"]) == (first, size)
            verify_consistency(
                first,
                size,
                [bytes.fromhex(p) for p in cons["proof"]],
                ledger.root(first),
                ledger.root(size),
            )

        check()
        # defaults: the current size
        latest = tax.client.get("/ledger/proof/inclusion", params={"index": 36}).json()
        assert latest["size"] == 37
        assert tax.client.get("/ledger/proof/consistency?first=3").json()["second"] == 37


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ledger/proof/inclusion?index=10&size=10", 400),
        ("/ledger/proof/inclusion?index=0&size=11", 400),
        ("/ledger/proof/inclusion?index=10", 400),
        ("/ledger/proof/inclusion?index=-1", 422),
        ("/ledger/proof/inclusion?index=abc", 422),
        ("/ledger/proof/inclusion", 422),
        ("/ledger/proof/inclusion?index=99999999999999999999999", 422),
        ("/ledger/proof/consistency?first=5&second=4", 400),
        ("/ledger/proof/consistency?first=11", 400),
        ("/ledger/proof/consistency?first=1&second=11", 400),
        ("/ledger/proof/consistency?first=x", 422),
        ("/ledger/entries?start=5&end=5", 400),
        ("/ledger/entries?start=5&end=2", 400),
        ("/ledger/entries?start=-1", 422),
        ("/ledger/entries?start=1&end=1e3", 422),
    ],
)
def test_bad_parameters_are_4xx_with_a_reason(tmp_path: Path, path: str, status: int) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        grow(tax, 10)
        response = tax.client.get(path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]


def test_empty_log_and_cosignatures(tmp_path: Path) -> None:
    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        assert tax.client.get("/ledger/cosignatures").json() == {"notes": []}
        head = open_checkpoint(tax.client.get("/ledger/checkpoint").text, tax.runtime.ledger.vkey)
        assert head.size == tax.runtime.ledger.size()
        assert tax.client.get("/ledger/entries?start=0").json()["start"] == 0
        assert tax.client.get("/ledger/proof/consistency?first=0").status_code == 200


def test_a_store_edited_under_a_published_checkpoint_is_refused_not_signed(
    tmp_path: Path,
) -> None:
    import sqlite3

    with InProcessSpace(tmp_path) as space:
        tax = space.add("tax-bureau", ["provider"])
        grow(tax, 6)
        assert tax.client.get("/ledger/checkpoint").status_code == 200
        with sqlite3.connect(tax.settings.layout.store) as db:
            db.execute("DELETE FROM log_entries WHERE log = 'events' AND idx >= 3")
        response = tax.client.get("/ledger/checkpoint")
        assert response.status_code == 409
