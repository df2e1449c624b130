"""Receipts on the analyst's side: one verification, summaries an auditor can redo by hand."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from connectors.client.results import (
    receipt_summary,
    verified_summary,
    verify_receipts,
    verify_train_receipts,
)
from trusted_space.errors import ValidationError, VerificationError
from trusted_space.events import record_event
from trusted_space.keys import SigningKey
from trusted_space.ledger import Ledger, verify_receipt
from trusted_space.store import MemoryStore


def _ledger(name: str, uses: int = 5) -> Ledger:
    store = MemoryStore()
    ledger = Ledger(store, SigningKey.generate(), f"{name}.example/ledger")
    with store.transaction() as tx:
        for i in range(uses):
            record_event(tx, "query.use", {"i": i})
    return ledger


def _receipt(ledger: Ledger, index: int, participant: str) -> dict[str, Any]:
    doc = ledger.receipt(index, ledger.checkpoint()).to_json()
    return doc | {"vkey": ledger.vkey, "participant": participant}


def test_verified_summary_is_the_summary_of_a_receipt_that_verifies() -> None:
    ledger = _ledger("tax")
    receipt = _receipt(ledger, 3, "tax")

    summary = verified_summary(receipt, ledger.vkey)

    assert summary == receipt_summary(receipt, ledger.vkey) | {"verified": True}
    assert (summary["participant"], summary["leafIndex"], summary["treeSize"]) == ("tax", 3, 5)
    # what the summary shows is enough to redo the check by hand
    verify_receipt(
        summary["checkpoint"],
        summary["vkey"],
        base64.b64decode(summary["entry"]),
        summary["leafIndex"],
        [bytes.fromhex(h) for h in summary["inclusionPath"]],
    )


def test_a_receipt_under_another_key_or_with_a_changed_entry_does_not_verify() -> None:
    ledger, other = _ledger("tax"), _ledger("court")
    receipt = _receipt(ledger, 1, "tax")
    forged = receipt | {"entry": _receipt(ledger, 2, "tax")["entry"]}

    with pytest.raises(VerificationError):
        verified_summary(receipt, other.vkey)
    with pytest.raises(VerificationError):
        verified_summary(forged, ledger.vkey)
    with pytest.raises(ValidationError, match="malformed vkey"):
        verified_summary(receipt, "")  # an empty key verifies nothing (not the receipt's own)
    assert verified_summary(receipt)["vkey"] == ledger.vkey  # None: the key the receipt carries


def test_every_receipt_of_a_result_and_of_a_training_is_verified() -> None:
    tax, court = _ledger("tax"), _ledger("court")
    vkeys = {"tax": tax.vkey, "court": court.vkey}
    result = {"receipts": {"tax": _receipt(tax, 0, "tax"), "court": _receipt(court, 4, "court")}}
    training = {
        "receipts": {
            "tax": {"align": _receipt(tax, 0, "tax"), "epochs": [_receipt(tax, 1, "tax")]},
        }
    }

    checked = verify_receipts(result, vkeys)
    trained = verify_train_receipts(training, vkeys)

    assert {p: s["leafIndex"] for p, s in checked.items()} == {"tax": 0, "court": 4}
    assert all(s["verified"] for s in checked.values())
    assert [s["leafIndex"] for s in trained["tax"]] == [0, 1]
    with pytest.raises(VerificationError):
        verify_receipts(result, {"tax": court.vkey, "court": court.vkey})
