"""Aggregates of one provider column over an analyst's cohort: sum, count, mean, histogram.

Why: regulators and banks want statistics over a group of enterprises (their applicants, their
portfolio) computed from a department's records, without the department learning *which*
enterprises form the group and without the analyst seeing any record. The cohort is aligned by PSI
first (:mod:`trusted_space.protocols.align`): the provider keeps all its ids in a shuffled order,
the analyst learns the positions of its matched ids in that order and builds a 0/1 **indicator**
over it. Every statistic is linear in the indicator ``s``::

    count = Σ s_i·p_i           (p_i = 1 where the value is present)
    sum   = Σ s_i·clip(v_i)·p_i (clipped to the column's published bounds)
    mean  = sum / count
    hist  = Σ s_i·[v_i in bin k], per bin (numpy.histogram's bins: the last one is closed)

so the provider computes them over *all* its rows against an indicator it cannot read:

- ``paillier``: the analyst sends ``E(s_i)`` under its own ≥ 2048-bit key; the provider returns
  ``Π E(s_i)^{x_ik} = E(Σ s_i·x_ik)`` per statistic (fixed exponent ``-2f``, obfuscated);
- ``ckks``: the analyst sends ``E(s)`` packed in slots and a public context with rotation keys
  (no secret key); the provider multiplies by its plaintext column, adds a fresh encryption (its
  noise, or zero: re-randomisation) and sums the slots; results are rounded at decryption;
- ``additive``: the analyst splits ``s = s_A + s_P`` over Z_2^64 and sends ``s_P`` (uniform); the
  inner products ``⟨s, X⟩`` are computed with Beaver matrix triples from the operator (dealer),
  the provider's values in fixed point (``f = 16``).

Message flow (operations on the provider, :func:`register_aggregate`)::

    analyst                                                      provider
    (align.*: PSI, the provider's first use, see align.py)
    stats.open     {query, agreement, dataset, column, statistic, bins, protocol, purpose,
                    epsilon?, operator?} + [public key | context, indicator], in parts
                   ──────────▶ alignment found for this analyst & query; budget checked; bounds
    stats.count    (paillier, ckks) ──▶ E(count + r) with a random mask r it keeps
                   ◀── ciphertext            (the analyst decrypts: count + r)
    stats.release  {count: count + r | the analyst's share of count} (+ Beaver messages, additive)
                   ──────────▶ count = (count + r) - r; authorize_use(cohort_size=count):
                               minCohort, purpose, ... refused → 403 + trace, nothing released;
                               epsilon charged (hard limit); only then the column is read
                   ◀── encrypted / shared statistics (+ Laplace noise under encryption),
                       noise scales, receipt             (large replies fetched by stats.fetch)
    stats.entities (explicit ids, in parts) ──▶ the same checks; the provider sees the ids,
                   looks them up and releases the (noisy) statistics in plaintext

What each party learns (semi-honest, non-colluding; DESIGN §10):

* the **provider** learns the number of analyst ids (PSI), the cohort *size* (needed to enforce
  ``minCohort`` itself) and the statistic asked for; never which rows form the cohort: it sees
  Paillier or CKKS ciphertexts, or a uniformly random share, of the indicator;
* the **analyst** learns the statistic (with noise when asked), nothing per row: it decrypts one
  value per statistic (Paillier: the ciphertext holds only the sum; CKKS: every slot holds the
  same noisy total; additive: the provider's share of the total only);
* the **operator** (additive only) deals triples and sees nothing else.

minCohort and the count mask. The provider evaluates ``minCohort`` with ``cohort_size = count``
from the very indicator it will aggregate (binding the decision to the computation), so it must
learn the count: it sends ``E(count + r)`` (additive: it holds ``Σ s_P`` and receives the
analyst's ``Σ s_A``), the analyst decrypts and returns ``count + r``, the provider subtracts ``r``.
The analyst knows the count anyway (it built the indicator); the mask keeps the decryption from
being a general decryption oracle for whatever the provider computed. Semi-honest: an analyst
that returns a wrong count (or a non-0/1 indicator) is outside the model; the Paillier path
checks that the value is a multiple of the fixed-point unit and at most the table size, and CKKS
takes a *lower* bound of the count (exact below ~10^5 rows; never more than the true count).

Noise and budget. With ``epsilon``, the provider adds Laplace noise of scale
``sensitivity / epsilon`` to each released value *under encryption* (``E(sum)·E(noise)``;
additive: to its share), drawn from a numpy ``Generator`` seeded by the OS: sensitivity 1 for a
count and for a histogram (one row changes one bin), ``max(|lo|, |hi|)`` for a sum; a mean spends
half of epsilon on each of sum and count. Noise is clamped at 64 scales (probability e^-64) so
fixed-point bounds hold. Epsilon is charged against the agreement's budget
(:mod:`trusted_space.budget`) after the policy allowed the release and before the column is read;
a query that does not fit is refused with a trace.

Explicit entities (``stats.entities``): the provider sees the ids (consent per entity applies),
authorises the use with ``cohort_size`` = their number, looks up the keys, applies the missing
rule — ``fail`` refuses listing the ids it does not hold, ``impute`` uses the column's published
``imputeDefault`` (and refuses if there is none) — charges epsilon, reads the values and releases
the (noisy) statistics in plaintext: there is nothing to hide from a provider that knows the
cohort. A null cell is not a value: every statistic ignores it (as in the cohort path, and as
SQL aggregates do) unless ``impute`` fills it.

Column bounds are a provider-side setting (:func:`set_column_bounds`), needed for sums and means:
they clip values, give the sensitivity and size the fixed-point/CKKS ranges.

Layout: :mod:`.wire` (packing, ring encoding, CKKS totals), :mod:`.bounds` (column bounds and
noise), :mod:`.statistic` (the released rows), :mod:`.provider` (the ``stats.*`` operations),
:mod:`.analyst` (:func:`run_aggregate`). The query and result models are in
:mod:`trusted_space.queries.aggregate` .
"""

from __future__ import annotations

from trusted_space.protocols.aggregate.analyst import run_aggregate
from trusted_space.protocols.aggregate.bounds import (
    BOUNDS_NAMESPACE,
    NOISE_TAIL,
    column_bounds,
    laplace_noise,
    set_column_bounds,
)
from trusted_space.protocols.aggregate.provider import STATS_OPERATIONS, register_aggregate
from trusted_space.protocols.aggregate.wire import RING_FRAC_BITS

__all__ = [
    "BOUNDS_NAMESPACE",
    "NOISE_TAIL",
    "RING_FRAC_BITS",
    "STATS_OPERATIONS",
    "column_bounds",
    "laplace_noise",
    "register_aggregate",
    "run_aggregate",
    "set_column_bounds",
]
