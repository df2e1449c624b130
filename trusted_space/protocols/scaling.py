"""Per-column power-of-two scaling of a joint score, and the precision each protocol promises.

Raw columns hold yuan amounts next to flags: one fixed-point scale for every column loses either
the small weights or the large features. So every provider column ``j`` has a *declared range*
``R_j`` (the catalog field's ``bound``, which the analyst's node puts in the query's ``ranges``) and
a scale ``2^e_j``, the least power of two ``≥ R_j``. The analyst multiplies the column's weight by
``2^e_j``; the provider divides the column by ``2^e_j`` — both exact in float64 — so every
protocol computes ``Σ_j (w_j·2^e_j)·(x_j·2^-e_j)`` over features in ``[-1, 1]``: each product at
full relative precision whatever ``w`` and ``x`` are.

What it reveals: ``e_j`` travels to the provider that published ``R_j``; nothing else. The
provider refuses a scale that is not its catalog's and a column whose catalog declares no range
(in both modes), so no bound the analyst chooses ever meets the data: an analyst cannot vary one
to learn ``max |x|``. A value outside the declared range (the provider's own data disagreeing
with its catalog) is refused naming the column, never the value.

Precision: ``L = Σ_j |w_j|·2^e_j`` over every provider column bounds every logit the protocols
compute (the analyst's own columns are added in float64). Each protocol's error is at most a
known multiple of ``L`` and of the column count (:func:`logit_error_bound`); the analyst refuses,
before anything is sent, a query whose bound exceeds the protocol's stated precision
(:data:`STATED_PRECISION`), naming the column with the largest ``|w_j|·2^e_j``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from trusted_space.errors import ValidationError
from trusted_space.protocols.base import FloatArray
from trusted_space.queries.score import ScoreQuery

__all__ = [
    "ADDITIVE_FEATURE_BITS",
    "CKKS_MAX_LOGIT",
    "MAX_SCALE_EXPONENT",
    "STATED_PRECISION",
    "check_party_partials",
    "additive_weight_bits",
    "check_precision",
    "column_exponents",
    "logit_bound",
    "logit_error_bound",
    "paillier_frac_bits",
    "scale_exponent",
    "scaled_query",
    "unscaled_features",
]

MAX_SCALE_EXPONENT: Final = 60
"""Declared ranges up to ``2^60`` (≈ 1.2e18); below ``2^-60`` a range counts as ``2^-60``."""

STATED_PRECISION: Final = {"paillier": 1e-6, "ckks": 1e-4, "additive": 1e-4}
"""Largest absolute logit error each protocol promises (analyst-held and party-held)."""

ADDITIVE_FEATURE_BITS: Final = 30
"""Fractional bits of a scaled feature (``|x·2^-e| ≤ 1``) in the additive ring."""

CKKS_MAX_LOGIT: Final = 2.0**18
"""CKKS slots hold values below ``2^19`` at the presets' scales; logits stay below ``2^18``."""


_NO_RANGE: Final = (
    "column {column!r} declares no range in the catalog: a score cannot use it until its "
    "provider declares the field's bound"
)


def scale_exponent(bound: float) -> int:
    """``e`` with ``2^e`` the least power of two ``≥ bound`` (``bound > 0``)."""
    if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
        raise ValidationError("a declared range must be a positive finite number")
    mantissa, exponent = math.frexp(float(bound))  # bound = m·2^exp, 0.5 ≤ m < 1
    e = exponent - 1 if mantissa == 0.5 else exponent
    if e > MAX_SCALE_EXPONENT:
        raise ValidationError(f"a declared range above 2^{MAX_SCALE_EXPONENT} is not supported")
    return max(e, -MAX_SCALE_EXPONENT)


def column_exponents(query: ScoreQuery, provider: str) -> tuple[int, ...]:
    """The scale exponent of each of ``provider``'s model columns (model order)."""
    ranges = query.ranges.get(provider, {})
    return tuple(
        scale_exponent(ranges.get(c, query.feature_bound)) for c in query.model.columns(provider)
    )


def scaled_query(query: ScoreQuery) -> tuple[ScoreQuery, dict[str, tuple[int, ...]]]:
    """The query the protocols run: provider weights times ``2^e_j``, features within ``[-1, 1]``.

    Returns the scaled query (``feature_bound`` 1) and each provider's exponents. In party-held
    mode the weights stay at the providers; the exponents are still sent (the provider scales
    nothing then, but checks its values against the declared ranges).
    """
    exponents = {p: column_exponents(query, p) for p in query.providers}
    weights = []
    for party, columns in query.model.weights:
        if party in exponents:
            columns = tuple(
                (c, math.ldexp(w, e)) for (c, w), e in zip(columns, exponents[party], strict=True)
            )
        weights.append((party, columns))
    model = dataclasses.replace(query.model, weights=tuple(weights))
    return dataclasses.replace(query, model=model, feature_bound=1.0), exponents


def logit_bound(query: ScoreQuery) -> tuple[float, int, tuple[str, str] | None]:
    """``L = Σ |w'_j|`` over the scaled query's provider columns, their count, the largest one."""
    total, count, largest, worst = 0.0, 0, -1.0, None
    for p in query.providers:
        for column, w in zip(query.model.columns(p), query.model.weights_of(p), strict=True):
            total += abs(float(w))
            count += 1
            if abs(float(w)) > largest:
                largest, worst = abs(float(w)), (p, column)
    return total, count, worst


def additive_weight_bits(bound: float, terms: int) -> int:
    """Fractional bits of the scaled weights so that ``Σ |X·w|`` stays below ``2^62``."""
    room = 62 - ADDITIVE_FEATURE_BITS - math.ceil(math.log2(bound + terms + 1.0))
    return max(0, min(room, 31))


def paillier_frac_bits(bound: float, terms: int) -> int:
    """Fixed-point bits so the rounding error ``(L + k)·2^-(f+1)`` stays below 1e-8."""
    need = math.ceil(math.log2((bound + terms + 1.0) / 2e-8))
    return max(32, min(need, 60))  # the vectorised path needs |x|·2^f below 2^62


def logit_error_bound(protocol: str, bound: float, terms: int) -> float:
    """The worst absolute logit error of ``protocol`` for ``L = bound`` over ``terms`` columns.

    Rounding each scaled feature to ``2^-fx`` costs at most ``L·2^-(fx+1)``, each scaled weight
    to ``2^-fw`` at most ``k·2^-(fw+1)`` (features within ``[-1, 1]``); CKKS adds its
    decryption noise and release rounding (1e-5 at N = 8192) and a relative ``L·2^-30``.
    """
    if protocol == "additive":
        fw = additive_weight_bits(bound, terms)
        return bound * 2.0 ** -(ADDITIVE_FEATURE_BITS + 1) + terms * 2.0 ** -(fw + 1)
    if protocol == "paillier":
        f = paillier_frac_bits(bound, terms)
        return (bound + terms) * 2.0 ** -(f + 1)
    if bound >= CKKS_MAX_LOGIT:
        return math.inf
    return 1e-5 + bound * 2.0**-30


def check_precision(query: ScoreQuery) -> None:
    """Refuse (before anything is sent) a scaled analyst-held query its protocol cannot meet.

    Raises:
        ValidationError: naming the column whose ``|w|·2^e`` is largest and the reason.
    """
    if query.mode != "analyst-held":
        return
    bound, terms, worst = logit_bound(query)
    error = logit_error_bound(query.protocol, bound, terms)
    stated = STATED_PRECISION[query.protocol]
    if error <= stated or worst is None:
        return
    party, column = worst
    raise ValidationError(
        f"column {column!r} of {party}: its weight times its declared range lets logits reach "
        f"{bound:.3g}, beyond what {query.protocol} computes within {stated:g}; declare a "
        "tighter range for it or use paillier"
    )


def unscaled_features(
    x: FloatArray,
    columns: Sequence[str],
    exponents: Sequence[int],
    declared: Mapping[str, float | None],
) -> FloatArray:
    """The provider's side: check ``x`` against the declared ranges, return ``x·2^-e_j``.

    ``declared``: the catalog's range of each column (``None`` where it declares none). A query
    exponent that differs from the catalog's is refused, and so is a value outside the catalog's
    range; the messages name the column and the catalog, never a value.

    Raises:
        ValidationError: a scale that is not the catalog's, or a value outside the range.
    """
    if len(exponents) != len(columns):
        raise ValidationError(f"expected {len(columns)} column scales, got {len(exponents)}")
    for column, e in zip(columns, exponents, strict=True):
        bound = declared.get(column)
        if bound is None:
            raise ValidationError(_NO_RANGE.format(column=column))
        if scale_exponent(bound) != e:
            raise ValidationError(
                f"column {column!r}: the query's scale 2^{e} is not the catalog's declared range"
            )
    if not x.size:
        return x
    largest = np.max(np.abs(x), axis=0)
    for j, column in enumerate(columns):
        bound = declared.get(column)
        limit = bound if bound is not None else math.ldexp(1.0, exponents[j])
        if not float(largest[j]) <= limit:
            if bound is not None:
                raise ValidationError(
                    f"column {column!r} has values outside its declared range in the catalog"
                )
            raise ValidationError(
                f"column {column!r} has values beyond the query's declared range 2^{exponents[j]}"
            )
    return np.ldexp(x, -np.asarray(exponents, dtype=np.int64)[np.newaxis, :])


def check_party_partials(
    x: FloatArray,
    weights: Mapping[str, float],
    declared: Mapping[str, float | None],
    partial_bound: float,
) -> None:
    """Party-held: the provider's own check of its columns and weights before it computes.

    Each value must lie in its column's declared range (refused naming the column, never the
    value). When every column declares one, ``L_p = Σ |w_j|·R_j`` bounds every partial logit: a
    query whose ``partialBound`` is below it is refused up front, naming the column with the
    largest ``|w_j|·R_j`` — so no partial is ever refused for its value (no bound oracle).

    Raises:
        ValidationError: a value outside a declared range, or ``L_p`` above ``partialBound``.
    """
    columns = list(weights)
    if x.size:
        largest = np.max(np.abs(x), axis=0)
        for j, column in enumerate(columns):
            bound = declared.get(column)
            if bound is not None and not float(largest[j]) <= bound:
                raise ValidationError(
                    f"column {column!r} has values outside its declared range in the catalog"
                )
    ranges = [declared.get(c) for c in columns]
    for column, r in zip(columns, ranges, strict=True):
        if r is None:
            raise ValidationError(_NO_RANGE.format(column=column))
    products = [abs(weights[c]) * float(r or 0.0) for c, r in zip(columns, ranges, strict=True)]
    if sum(products) > partial_bound:
        worst = columns[int(np.argmax(products))]
        raise ValidationError(
            f"column {worst!r}: its weight times its declared range lets this provider's partial "
            f"logits exceed the query's partialBound {partial_bound:g}"
        )
