"""What an analyst does with a result on its own side: model files, score files, receipts.

:func:`load_model` reads a model file; :func:`write_scores` writes ``id,logit,<output>`` rows;
:func:`receipt_summary` turns a provider's receipt into what an auditor checks by hand (the
signed checkpoint note, the node's ledger vkey as registered at the operator, the use entry's leaf
index, the tree size, the inclusion path and the entry bytes); :func:`verify_receipts` and
:func:`verify_train_receipts` check every receipt of a result with
:func:`trusted_space.ledger.verify_receipt`.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trusted_space.errors import ValidationError
from trusted_space.ledger import Receipt, open_checkpoint, verify_receipt
from trusted_space.queries.score import Model

__all__ = [
    "load_model",
    "output_column",
    "receipt_summary",
    "verify_train_receipts",
    "write_scores",
]


def receipt_summary(receipt: dict[str, Any], vkey: str | None = None) -> dict[str, Any]:
    """What an auditor needs to check a receipt by hand (see the module docstring)."""
    parsed = Receipt.from_json(
        {k: v for k, v in receipt.items() if k not in ("vkey", "participant")}
    )
    key = vkey or str(receipt["vkey"])
    head = open_checkpoint(parsed.checkpoint, key)
    return {
        "participant": receipt.get("participant"),
        "checkpoint": parsed.checkpoint,
        "vkey": key,
        "leafIndex": parsed.index,
        "treeSize": head.size,
        "inclusionPath": [p.hex() for p in parsed.proof],
        "entry": base64.b64encode(parsed.entry).decode("ascii"),
    }


def output_column(link: Any) -> str:
    """The name of the output column for a model link (JSON form)."""
    if link == "logistic":
        return "probability"
    if isinstance(link, dict) and "scorecard" in link:
        return "points"
    return "score"


def write_scores(path: Path, result: dict[str, Any]) -> int:
    """Write ``id,logit,<probability|points|score>``; returns the rows written."""
    column = output_column(result.get("link"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "logit", column])
        for e, z, y in zip(result["entities"], result["logits"], result["outputs"], strict=True):
            out.writerow([e, repr(float(z)), repr(float(y))])
    tmp.replace(path)
    return len(result["entities"])


def load_model(path: Path) -> Model:
    """A model file (``ValidationError`` naming the JSON path)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path}: not a readable JSON model ({exc})") from exc
    return Model.from_json(doc)


def verify_train_receipts(
    result: Mapping[str, Any], vkeys: Mapping[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Every receipt of a training (alignment, then one per epoch), verified against ``vkeys``.

    Returns:
        provider → receipt summaries (:func:`connectors.spaces.local.receipt_summary`), each
        verified.

    Raises:
        VerificationError: a receipt does not verify.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for provider, entry in dict(result.get("receipts", {})).items():
        receipts = [entry["align"], *entry.get("epochs", [])]
        summaries = []
        for receipt in receipts:
            summary = receipt_summary(dict(receipt), vkeys.get(provider))
            verify_receipt(
                summary["checkpoint"],
                summary["vkey"],
                base64.b64decode(summary["entry"]),
                summary["leafIndex"],
                [bytes.fromhex(h) for h in summary["inclusionPath"]],
            )
            summaries.append(summary | {"verified": True})
        out[provider] = summaries
    return out
