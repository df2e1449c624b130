"""Metering: how many data-service calls each agreement and each participant made.

Why: the platform reports usage (the finance zone this mirrors counts every data-service call, 240
million of them) and providers bill or throttle by it. Counters live in the node's store, so a
call is counted in the same transaction as the work it meters: a call that rolled back was never
counted, and a counted call cannot be lost by a crash. Unlike the policy ``count`` constraint
(``trusted_space.policy``), metering has no limit: it records, it does not refuse.

Counters (namespace → key):

- ``metering.agreement`` → agreement id; ``metering.agreement.kind`` → ``<agreement id>#<kind>``
- ``metering.participant`` → participant id; ``metering.participant.kind`` →
  ``<participant id>#<kind>``

and a small index document per subject listing the kinds seen, so :func:`usage` can summarise
without scanning counters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from trusted_space.errors import ValidationError
from trusted_space.store import Transaction

__all__ = ["UsageSummary", "record_use", "usage"]

_KIND_RE: Final = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_INDEX_NS: Final = "metering.kinds"

Subject = Literal["agreement", "participant"]


@dataclass(frozen=True)
class UsageSummary:
    """Use counts of one agreement or participant.

    Attributes:
        subject: ``agreement`` or ``participant``.
        subject_id: the agreement or participant id.
        total: all uses.
        by_kind: ``(kind, count)`` pairs, sorted by kind.
    """

    subject: Subject
    subject_id: str
    total: int
    by_kind: tuple[tuple[str, int], ...]

    def count(self, kind: str) -> int:
        """Uses of one kind (0 when never used)."""
        return dict(self.by_kind).get(kind, 0)


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{name} must be a non-empty string, got {value!r}")


def _bump(tx: Transaction, subject: Subject, subject_id: str, kind: str, count: int) -> None:
    tx.increment(f"metering.{subject}", subject_id, count)
    if tx.increment(f"metering.{subject}.kind", f"{subject_id}#{kind}", count) == count:
        key = f"{subject}:{subject_id}"
        doc = tx.get(_INDEX_NS, key)
        kinds = set(doc.body["kinds"]) if doc else set()
        kinds.add(kind)
        tx.put(_INDEX_NS, key, {"kinds": sorted(kinds)})


def record_use(
    tx: Transaction, agreement_id: str, participant: str, kind: str, *, count: int = 1
) -> None:
    """Count ``count`` data-service calls (default one) against their agreement and participant.

    Args:
        tx: the transaction doing the metered work.
        agreement_id: the agreement the call relies on.
        participant: the calling participant.
        kind: what was called, e.g. ``score``, ``aggregate``, ``train``, ``transfer``, ``catalog``
            (lower case, ``[a-z][a-z0-9._-]*``).
        count: how many such calls (a group of uses decided together counts each of them).

    Raises:
        ValidationError: an id is empty, ``kind`` is malformed or ``count`` is below 1.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(f"count must be a positive integer, got {count!r}")
    _check_id("agreement_id", agreement_id)
    _check_id("participant", participant)
    if not isinstance(kind, str) or not _KIND_RE.match(kind):
        raise ValidationError(f"kind must match {_KIND_RE.pattern}, got {kind!r}")
    _bump(tx, "agreement", agreement_id, kind, count)
    _bump(tx, "participant", participant, kind, count)


def usage(
    tx: Transaction, *, agreement_id: str | None = None, participant: str | None = None
) -> UsageSummary:
    """Summarise the uses of one agreement or one participant (exactly one must be given).

    Raises:
        ValueError: neither or both of ``agreement_id`` and ``participant`` were given.
    """
    if (agreement_id is None) == (participant is None):
        raise ValueError("give exactly one of agreement_id and participant")
    subject: Subject = "agreement" if agreement_id is not None else "participant"
    subject_id = agreement_id if agreement_id is not None else participant
    if subject_id is None:  # pragma: no cover - excluded above; narrows the type
        raise ValueError("give exactly one of agreement_id and participant")
    _check_id(subject, subject_id)
    doc = tx.get(_INDEX_NS, f"{subject}:{subject_id}")
    kinds: list[str] = sorted(doc.body["kinds"]) if doc else []
    by_kind = tuple((k, tx.counter(f"metering.{subject}.kind", f"{subject_id}#{k}")) for k in kinds)
    return UsageSummary(
        subject=subject,
        subject_id=subject_id,
        total=tx.counter(f"metering.{subject}", subject_id),
        by_kind=by_kind,
    )
