"""Benchmark cases for additive secret sharing over Z_2^64 (crypto.sharing, crypto.fixedpoint).

Why: the ``additive`` score protocol must keep up with CKKS and Paillier on a million entities; this
measures the crypto path in-process (no network), so it is an upper bound on throughput: the real
protocol adds the transfer of the opened masked matrix (8 bytes x n x k per party and direction).

Run: ``.venv/bin/python benchmarks/_harness.py cases_sharing additive_dot_1m [--quick]``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from crypto.fixedpoint import FixedPoint
from crypto.sharing import (
    TripleDealer,
    TripleLedger,
    beaver_finish,
    beaver_mask,
    beaver_open,
    random_ring,
    reconstruct,
    row_blocks,
    share,
    truncate,
    truncate_2pc,
    truncation_failure_bound,
    truncation_failure_probability,
)

__all__ = ["CASES"]

FEATURES = 20
FRAC_BITS = 16
RESULT_BOUND = 1e3  # declared bound on a logit: a wrapped (failed) truncation is caught by decode


def _median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def additive_dot(quick: bool, n: int | None = None) -> dict[str, Any]:
    """2-party shared X (n x 20) @ shared w (20) with one matrix Beaver triple and truncation.

    ``n`` (default 100k quick, else 1M): ``joint_bench`` runs it at the query's size.
    """
    n = n or (100_000 if quick else 1_000_000)
    fp = FixedPoint(frac_bits=FRAC_BITS)
    data_rng = np.random.default_rng(20240601)
    features = data_rng.standard_normal((n, FEATURES))  # standardised features
    weights = data_rng.normal(0.0, 0.3, FEATURES)

    baseline_seconds = _median_seconds(lambda: features @ weights)
    expected = features @ weights

    start = time.perf_counter()
    x_shares = share(fp.encode(features, bound=16.0), 2)  # provider's features
    w_shares = share(fp.encode(weights, bound=16.0), 2)  # analyst's weights
    sharing_seconds = time.perf_counter() - start

    start = time.perf_counter()
    batches = TripleDealer(2).matmul_triple_blocks((n, FEATURES), (FEATURES,))
    dealer_seconds = time.perf_counter() - start

    # Online phase, streamed block by block exactly as two nodes would run it: each party masks
    # its shares with its triple share, the masked shares are summed (opened), each party finishes
    # its product share and truncates it locally; finally the analyst reconstructs and decodes.
    ledgers = [TripleLedger(0), TripleLedger(1)]
    logit_shares = [np.empty(n, dtype=np.uint64) for _ in range(2)]
    opened_bytes = 0
    start = time.perf_counter()
    for (lo, hi), batch in zip(row_blocks(n), batches, strict=True):
        triples = [batch.take(i) for i in range(2)]
        messages = [
            beaver_mask(x_shares[i][lo:hi], w_shares[i], triples[i], ledgers[i]) for i in range(2)
        ]
        opening = beaver_open(messages)
        for i in range(2):
            logit_shares[i][lo:hi] = truncate_2pc(beaver_finish(triples[i], opening), i, FRAC_BITS)
        opened_bytes += opening.d.nbytes + opening.e.nbytes
    result = fp.decode(reconstruct(logit_shares), bound=RESULT_BOUND)
    seconds = time.perf_counter() - start

    return {
        "case": "additive_dot_1m",
        "n": n,
        "features": FEATURES,
        "parties": 2,
        "frac_bits": FRAC_BITS,
        "seconds": seconds,
        "dealer_seconds": dealer_seconds,
        "input_sharing_seconds": sharing_seconds,
        "baseline": "numpy plaintext",
        "baseline_seconds": baseline_seconds,
        "slowdown_vs_plaintext": seconds / baseline_seconds,
        "max_abs_error": float(np.max(np.abs(result - expected))),
        "opened_bytes_per_party": opened_bytes,
        "blocks": len(batches),
    }


def _failure_rate(
    magnitude_bits: int, samples: int, parties: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Share values of magnitude in [2^(l-1), 2^l), truncate, count wrapped results."""
    low, high = 1 << (magnitude_bits - 1), 1 << magnitude_bits
    magnitudes = rng.integers(low, high, size=samples, dtype=np.int64)
    signs = np.where(rng.integers(0, 2, size=samples) == 0, -1, 1).astype(np.int64)
    secret = (magnitudes * signs).view(np.uint64)
    shares = share(secret, parties)  # CSPRNG masks, as in production
    if parties == 2:
        truncated = truncate(shares, FRAC_BITS)
    else:
        pairs = TripleDealer(parties).truncation_pairs(samples, FRAC_BITS)
        truncated = truncate(shares, FRAC_BITS, pairs)
    got = reconstruct(truncated).view(np.int64)
    want = (magnitudes * signs) >> FRAC_BITS
    failures = int(np.count_nonzero(np.abs(got - want) > 1))
    predicted = truncation_failure_probability(float(np.mean(magnitudes.astype(np.float64))))
    return {
        "magnitude_bits": magnitude_bits,
        "parties": parties,
        "samples": samples,
        "failures": failures,
        "measured_rate": failures / samples,
        "predicted_rate": predicted,
        "stated_bound": truncation_failure_bound(magnitude_bits),
    }


def truncation_failure_rate(quick: bool) -> dict[str, Any]:
    """Measured vs stated failure rate of probabilistic truncation near the magnitude bound."""
    samples = 200_000 if quick else 2_000_000
    rng = np.random.default_rng()
    random_ring(1)  # warm the CSPRNG import path
    start = time.perf_counter()
    rows = [_failure_rate(bits, samples, 2, rng) for bits in (48, 52, 56)]
    rows.append(_failure_rate(52, samples, 3, rng))
    seconds = time.perf_counter() - start
    return {
        "case": "truncation_failure_rate",
        "n": samples * len(rows),
        "features": 1,
        "frac_bits": FRAC_BITS,
        "seconds": seconds,
        "baseline": "stated rate |x|/2^64 (bound 2^(l+1-64))",
        "baseline_seconds": None,
        "max_abs_error": max(
            abs(r["measured_rate"] - r["predicted_rate"]) / r["predicted_rate"] for r in rows
        ),
        "max_abs_error_is": "max relative deviation of measured from predicted rate",
        "rows": rows,
    }


CASES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "additive_dot_1m": additive_dot,
    "truncation_failure_rate": truncation_failure_rate,
}
