"""What an analyst does with a result on its own side: model files, score files, receipts.

:func:`load_model` reads a model file; :func:`write_scores` writes ``id,logit,<output>`` rows;
:func:`receipt_summary` turns a provider's receipt into what an auditor checks by hand (the
signed checkpoint note, the node's ledger vkey as registered at the operator, the use entry's leaf
index, the tree size, the inclusion path and the entry bytes); :func:`verified_summary` is that
summary of a receipt checked with :func:`trusted_space.ledger.verify_receipt` — the one place a
receipt is verified on the analyst's side: :func:`verify_receipts` (a score or aggregate result),
:func:`verify_train_receipts` (a training), the local space and the demo all call it.
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
from trusted_space.notes import Checkpoint
from trusted_space.queries.score import Model

__all__ = [
    "load_model",
    "output_column",
    "receipt_summary",
    "verified_summary",
    "verify_receipts",
    "verify_train_receipts",
    "write_scores",
]


def _parse(receipt: Mapping[str, Any]) -> Receipt:
    return Receipt.from_json({k: v for k, v in receipt.items() if k not in ("vkey", "participant")})


def receipt_summary(receipt: dict[str, Any], vkey: str | None = None) -> dict[str, Any]:
    """What an auditor needs to check a receipt by hand (see the module docstring)."""
    parsed = _parse(receipt)
    key = vkey or str(receipt["vkey"])
    return _summary(receipt, parsed, key, open_checkpoint(parsed.checkpoint, key))


def verified_summary(receipt: Mapping[str, Any], vkey: str | None = None) -> dict[str, Any]:
    """:func:`receipt_summary` of a receipt that verifies, with ``"verified": True``.

    Args:
        receipt: the receipt as the result carries it (JSON).
        vkey: the node's ledger vkey as the analyst knows it; ``None``: the vkey the receipt
            carries (an empty key verifies nothing).

    Raises:
        VerificationError: the checkpoint's signature or the inclusion proof does not verify.
        ValidationError: a malformed receipt or vkey.
    """
    parsed = _parse(receipt)
    key = str(receipt["vkey"]) if vkey is None else vkey
    head = verify_receipt(parsed.checkpoint, key, parsed.entry, parsed.index, parsed.proof)
    return _summary(receipt, parsed, key, head) | {"verified": True}


def verify_receipts(
    result: Mapping[str, Any], vkeys: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Every provider's receipt of a score or aggregate result, verified against ``vkeys``.

    Returns:
        provider → :func:`verified_summary`.

    Raises:
        VerificationError: a receipt does not verify.
    """
    return {
        provider: verified_summary(receipt, vkeys.get(provider))
        for provider, receipt in dict(result.get("receipts", {})).items()
    }


def _summary(
    receipt: Mapping[str, Any], parsed: Receipt, key: str, head: Checkpoint
) -> dict[str, Any]:
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
    """Write ``id,logit,<probability|points|score>`` (a band release: ``id,band``).

    Returns the rows written.
    """
    column = output_column(result.get("link"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        if "bands" in result:
            out.writerow(["id", "band"])
            for e, band in zip(result["entities"], result["bands"], strict=True):
                out.writerow([e, int(band)])
        else:
            out.writerow(["id", "logit", column])
            for e, z, y in zip(
                result["entities"], result["logits"], result["outputs"], strict=True
            ):
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
        provider → :func:`verified_summary` of each receipt, in that order.

    Raises:
        VerificationError: a receipt does not verify.
    """
    return {
        provider: [
            verified_summary(receipt, vkeys.get(provider))
            for receipt in [entry["align"], *entry.get("epochs", [])]
        ]
        for provider, entry in dict(result.get("receipts", {})).items()
    }
