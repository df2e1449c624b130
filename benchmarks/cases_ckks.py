"""CKKS joint-score benchmark: encrypted weights x plaintext features for up to 1M entities."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tenseal as ts
from _harness import timer

from crypto.ckks import (
    PRESET_8192_DEPTH1,
    PublicContext,
    SecretContext,
    encrypt_weights,
    weighted_sum,
)

FEATURES = 20
NAIVE_SAMPLE = 200


def _naive_seconds(sk: SecretContext, w: np.ndarray, x: np.ndarray, n: int) -> tuple[float, str]:
    """One ciphertext per entity: E(w) (20 slots) dot the entity's plaintext row, on a sample."""
    ctx = sk.tenseal_context
    ctx.generate_galois_keys()
    enc_w = ts.ckks_vector(ctx, w.tolist())
    with timer() as t:
        for row in x[:NAIVE_SAMPLE]:
            enc_w.dot(row.tolist())
    per_entity = t[0] / NAIVE_SAMPLE
    note = (
        f"TenSEAL CKKSVector(E(w), 20 slots).dot(row) per entity, {NAIVE_SAMPLE}-entity sample "
        f"({per_entity * 1e3:.2f} ms each) extrapolated to n; same preset, 1 process"
    )
    return per_entity * n, note


def ckks_weighted_sum(quick: bool, n: int | None = None) -> dict[str, Any]:
    """E(w) . X for n x 20 plaintext features (``n``: 100k quick, else 1M; or the query's)."""
    n = n or (100_000 if quick else 1_000_000)
    workers = min(2, os.cpu_count() or 1)
    rng = np.random.default_rng(2024)
    x = rng.normal(size=(n, FEATURES))
    w = rng.uniform(-1.0, 1.0, FEATURES)

    with timer() as t_base:
        expected = x @ w

    with timer() as t_keys:
        sk = SecretContext.generate(PRESET_8192_DEPTH1)
        public_bytes = sk.public_context().serialize()
    with timer() as t_enc:
        weight_bytes = encrypt_weights(sk, w).serialize()

    # Provider: loads the analyst's public context and encrypted weights from bytes, computes.
    with timer() as t_provider:
        pub = PublicContext.load(public_bytes)
        enc_w = pub.load_vector(weight_bytes)
        partial = weighted_sum(pub, enc_w, x, workers=workers)
        result_bytes = partial.serialize()

    with timer() as t_dec:
        z = sk.decrypt(sk.load_vector(result_bytes))

    naive, naive_note = _naive_seconds(sk, w, x, n)
    return {
        "case": "ckks_weighted_sum_1m",
        "n": n,
        "features": FEATURES,
        "preset": PRESET_8192_DEPTH1.name,
        "workers": workers,
        "rerandomize": True,
        "seconds": t_provider[0],
        "encrypt_seconds": t_enc[0],
        "decrypt_seconds": t_dec[0],
        "keygen_seconds": t_keys[0],
        "baseline": "numpy float64 X @ w (plaintext, same run)",
        "baseline_seconds": t_base[0],
        "slowdown_vs_plaintext": t_provider[0] / t_base[0],
        "naive_seconds": naive,
        "naive_note": naive_note,
        "speedup_vs_naive": naive / t_provider[0],
        "ciphertexts": partial.n_chunks,
        "result_mb": len(result_bytes) / 2**20,
        "max_abs_error": float(np.max(np.abs(z - expected))),
    }


CASES = {"ckks_weighted_sum_1m": ckks_weighted_sum}
