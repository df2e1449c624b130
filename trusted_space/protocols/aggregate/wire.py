"""What the aggregate protocols put on the wire: payload packing, ring encoding, CKKS totals.

Shared by the provider and the analyst: the fixed-point ring encoding of the additive protocol
(:data:`RING_FRAC_BITS`), the row blocks of Beaver material, and the CKKS slot sum that adds
noise or a mask through a fresh encryption.

And the ``stats.*`` headers, one frozen dataclass per message with ``to_header()`` beside
``from_header(header)`` (paired serde, as in :mod:`trusted_space.protocols.score.wire`):
requests :class:`StatsQuery` (``stats.open``), :class:`StatsRef` (``stats.count``),
:class:`StatsRelease`, :class:`StatsFetch`, :class:`StatsEntities`; replies
:class:`StatsReceived` (a part that was not the last), :class:`StatsOpened`,
:class:`StatsReleased`, :class:`StatsTotals`. A bad field is a
:class:`~trusted_space.errors.ValidationError` naming it (``header.<name>: ...``; a 4xx at the
edge); checks that need the provider's session (the mask behind a count, whether it was
released) stay with the operation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

from crypto import ckks
from crypto.fixedpoint import FixedPoint
from crypto.psi import MAX_SET_SIZE
from trusted_space.budget import from_micro, to_micro
from trusted_space.errors import ValidationError
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols._common import crypto_errors, header_int, header_str
from trusted_space.queries.aggregate import check_statistic
from trusted_space.queries.common import MISSING_RULES

__all__ = [
    "MAX_MATERIAL",
    "RING_FRAC_BITS",
    "StatsEntities",
    "StatsFetch",
    "StatsOpened",
    "StatsQuery",
    "StatsReceived",
    "StatsRef",
    "StatsRelease",
    "StatsReleased",
    "StatsTotals",
    "ckks_total",
    "dealer_session",
    "encode_ring",
    "material_blocks",
    "pack",
    "unpack",
]

FloatArray = npt.NDArray[np.float64]
Ring = npt.NDArray[np.uint64]
RING_FRAC_BITS: Final = 16
"""Fixed-point fractional bits of the provider's values in the additive protocol."""
MAX_MATERIAL: Final = 1 << 36
# ----------------------------------------------------------------------------------------------
# Wire helpers
# ----------------------------------------------------------------------------------------------


def pack(blobs: Sequence[bytes]) -> bytes:
    return b"".join(len(b).to_bytes(8, "big") + b for b in blobs)


def unpack(data: bytes, count: int) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 8 > len(data):
            raise ValidationError("payload is truncated")
        size = int.from_bytes(data[offset : offset + 8], "big")
        offset += 8
        if offset + size > len(data):
            raise ValidationError("payload is truncated")
        out.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ValidationError("payload has trailing bytes")
    return out


def ckks_total(
    context: ckks.PublicContext, indicator: ckks.EncryptedVector, row: FloatArray, extra: float
) -> ckks.EncryptedVector:
    """``Σ s_i·row_i + extra`` in every slot of one ciphertext (a vector of length 1).

    ``extra`` (noise or mask) enters through a *fresh* encryption added to every chunk, which
    also re-randomises the result (the analyst knows the randomness of its own indicator
    ciphertexts). The slots are summed by rotations *after* that, so every slot holds the same
    noisy value: decrypting the other slots with the raw secret key reveals nothing more.
    """
    with crypto_errors("ckks aggregate"):
        product = ckks.mul_plain(indicator, row)
        fresh = np.zeros(indicator.length)
        fresh[0] = extra
        mixed = ckks.add(product, context.encrypt(fresh))
        return ckks.sum_slots(context, mixed)


def encode_ring(values: npt.ArrayLike) -> Ring:
    with crypto_errors("fixed point"):
        return FixedPoint(RING_FRAC_BITS).encode(np.asarray(values, dtype=np.float64))


def material_blocks(rows: int, terms: int) -> list[tuple[int, int]]:
    """Row blocks whose triples (and Beaver messages) stay far below the message limit."""
    size = max(1, min(1 << 16, (1 << 22) // (terms + 1)))
    return [(s, min(s + size, rows)) for s in range(0, rows, size)]


def dealer_session(query: str, dataset: str) -> str:
    return f"stats/{query}/{dataset}"


# ----------------------------------------------------------------------------------------------
# Typed headers of the stats.* messages
# ----------------------------------------------------------------------------------------------


def _epsilon(header: Mapping[str, Any]) -> float | None:
    """The optional epsilon, rounded to whole micro-epsilon as the budget counts it."""
    value = header.get("epsilon")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("header.epsilon: expected a number")
    return from_micro(to_micro(float(value)))


@dataclass(frozen=True)
class StatsRef:
    """Which aggregate a message is for: ``stats.count`` and the reference of the others.

    ``stats.fetch`` is this reference plus the ``offset`` that
    :func:`~trusted_space.protocols._parts.fetch_rest` adds (:class:`StatsFetch`).
    """

    query: str
    dataset: str

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "dataset": self.dataset}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_str(header, "query"), header_str(header, "dataset"))


@dataclass(frozen=True)
class StatsQuery:
    """``stats.open``: the aggregate as the provider needs it (payload: the indicator, in parts).

    The header of every part is this plus the parts layer's ``part``, ``parts`` and ``total``;
    the provider reads it whole at part 0. ``bins`` are checked against the statistic and the
    column by :func:`~trusted_space.protocols.aggregate.statistic.plan_for` (anything but a
    list counts as none, as before); ``epsilon`` is rounded to whole micro-epsilon.
    """

    query: str
    agreement: str
    dataset: str
    column: str
    statistic: str
    protocol: str
    purpose: str
    bins: tuple[Any, ...] = ()
    epsilon: float | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "query": self.query,
            "agreement": self.agreement,
            "dataset": self.dataset,
            "column": self.column,
            "statistic": self.statistic,
            "protocol": self.protocol,
            "purpose": self.purpose,
            "bins": list(self.bins),
        }
        if self.epsilon is not None:
            header["epsilon"] = self.epsilon
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        query = header_str(header, "query")
        agreement = header_str(header, "agreement")
        dataset = header_str(header, "dataset")
        column = header_str(header, "column")
        statistic = check_statistic(header.get("statistic"))
        protocol = header_str(header, "protocol")
        purpose = header_str(header, "purpose")
        epsilon = _epsilon(header)
        if protocol not in PROTOCOLS:
            raise ValidationError(f"header.protocol: {protocol!r} not in {list(PROTOCOLS)}")
        bins = header.get("bins", [])
        return cls(
            query=query,
            agreement=agreement,
            dataset=dataset,
            column=column,
            statistic=statistic,
            protocol=protocol,
            purpose=purpose,
            bins=tuple(bins) if isinstance(bins, list) else (),
            epsilon=epsilon,
        )


@dataclass(frozen=True)
class StatsEntities:
    """``stats.entities``: the aggregate over ``count`` explicit ids (the payload, in parts).

    ``missing`` is the rule for ids the provider does not hold. The provider reads
    :meth:`declared_count` at every part (it bounds what it buffers) and the whole message
    once the last part arrived.
    """

    aggregate: StatsQuery
    count: int
    missing: str

    def to_header(self) -> dict[str, Any]:
        return {**self.aggregate.to_header(), "count": self.count, "missing": self.missing}

    @staticmethod
    def declared_count(header: Mapping[str, Any]) -> int:
        return header_int(header, "count", 1, MAX_SET_SIZE)

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        count = cls.declared_count(header)
        missing = header_str(header, "missing")
        if missing not in MISSING_RULES:
            raise ValidationError(f"header.missing: {missing!r} not in {list(MISSING_RULES)}")
        return cls(StatsQuery.from_header(header), count, missing)


@dataclass(frozen=True)
class StatsRelease:
    """``stats.release``: the analyst's count (payload: additive's Beaver messages, in parts).

    ``count`` is the decrypted masked count as digits (``paillier``), as a number (``ckks``),
    or the analyst's share of the count as digits (``additive``); whether it is a count of the
    indicator is for the provider's session to say.
    """

    query: str
    dataset: str
    count: str | float

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "dataset": self.dataset, "count": self.count}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], protocol: str) -> Self:
        """The message of an aggregate run with ``protocol`` (the provider's session knows)."""
        query = header_str(header, "query")
        dataset = header_str(header, "dataset")
        value = header.get("count")
        count: str | float
        if protocol == "ckks":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValidationError("header.count: expected the decrypted count")
            count = value
        elif not isinstance(value, str) or not value.isdigit():
            what = "decrypted count" if protocol == "paillier" else "analyst's share"
            raise ValidationError(f"header.count: expected the {what} as digits")
        else:
            count = value
        return cls(query, dataset, count)


@dataclass(frozen=True)
class StatsFetch:
    """``stats.fetch``: the part of the released statistics from ``offset`` (no payload)."""

    query: str
    dataset: str
    offset: int

    def to_header(self) -> dict[str, Any]:
        return {"query": self.query, "dataset": self.dataset, "offset": self.offset}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(
            header_str(header, "query"),
            header_str(header, "dataset"),
            header_int(header, "offset", 0, MAX_MATERIAL),
        )


@dataclass(frozen=True)
class StatsReceived:
    """The reply to a ``stats.*`` part that was not the last: parts received so far."""

    received: int

    def to_header(self) -> dict[str, Any]:
        return {"received": self.received}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "received", 1, 1 << 16))


@dataclass(frozen=True)
class StatsOpened:
    """The ``stats.open`` reply: the indicator arrived, over the provider's ``rows`` rows."""

    rows: int

    def to_header(self) -> dict[str, Any]:
        return {"rows": self.rows}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Self:
        return cls(header_int(header, "rows", 0, MAX_SET_SIZE))


def _receipt(header: Mapping[str, Any], provider: str) -> Mapping[str, Any]:
    receipt = header.get("receipt")
    if not isinstance(receipt, dict):
        raise ValidationError(f"{provider}: no receipt for the release")
    return receipt


def _names_and_scales(
    header: Mapping[str, Any], provider: str
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    names = header.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationError(f"{provider} released other values than asked for")
    scales = header.get("noiseScales")
    if (
        not isinstance(scales, list)
        or len(scales) != len(names)
        or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scales)
    ):
        raise ValidationError(f"{provider}: no noise scales")
    return tuple(names), tuple(float(s) for s in scales)


@dataclass(frozen=True)
class StatsReleased:
    """The ``stats.release`` reply: what was released, and the release's receipt.

    The payload is the first part of the encrypted or shared totals (the header also carries
    the parts layer's ``total`` and ``offset``); ``divisors`` are CKKS's scale-downs, one per
    value. ``count`` is the cohort size the provider authorised.
    """

    names: tuple[str, ...]
    noise_scales: tuple[float, ...]
    count: int
    receipt: Mapping[str, Any]
    divisors: tuple[float, ...] | None = None

    def to_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "names": list(self.names),
            "noiseScales": list(self.noise_scales),
            "count": self.count,
            "receipt": dict(self.receipt),
        }
        if self.divisors is not None:
            header["divisors"] = list(self.divisors)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the errors: the analyst reports who failed)."""
        receipt = _receipt(header, provider)
        names, scales = _names_and_scales(header, provider)
        divisors = header.get("divisors")
        if divisors is not None and (
            not isinstance(divisors, list)
            or len(divisors) != len(names)
            or not all(isinstance(d, int | float) and not isinstance(d, bool) for d in divisors)
        ):
            raise ValidationError("released CKKS values come without their divisors")
        return cls(
            names=names,
            noise_scales=scales,
            count=header_int(header, "count", 0, MAX_SET_SIZE),
            receipt=receipt,
            divisors=None if divisors is None else tuple(float(d) for d in divisors),
        )


@dataclass(frozen=True)
class StatsTotals:
    """The ``stats.entities`` reply: noisy totals in the clear, and the release's receipt.

    ``missing`` lists (up to a thousand of) the ids the provider does not hold.
    """

    names: tuple[str, ...]
    totals: tuple[float, ...]
    noise_scales: tuple[float, ...]
    count: int
    missing: tuple[str, ...]
    receipt: Mapping[str, Any]

    def to_header(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "totals": list(self.totals),
            "noiseScales": list(self.noise_scales),
            "count": self.count,
            "missing": list(self.missing),
            "receipt": dict(self.receipt),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], provider: str) -> Self:
        """The reply of ``provider`` (named in the errors: the analyst reports who failed)."""
        totals = header.get("totals")
        if not isinstance(totals, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in totals
        ):
            raise ValidationError(f"{provider}: no totals")
        missing = header.get("missing", [])
        if not isinstance(missing, list):
            raise ValidationError(f"{provider}: malformed missing list")
        receipt = _receipt(header, provider)
        names, scales = _names_and_scales(header, provider)
        return cls(
            names=names,
            totals=tuple(float(v) for v in totals),
            noise_scales=scales,
            count=header_int(header, "count", 0, MAX_SET_SIZE),
            missing=tuple(str(m) for m in missing),
            receipt=receipt,
        )
