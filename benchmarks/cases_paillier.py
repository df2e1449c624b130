"""Benchmark: encrypted weighted sums (joint-score logits) under Paillier, packed vs naive phe.

The analyst encrypts 20 weights under a 2048-bit key; the provider computes the packed encrypted
logits of 10,000 entities x 20 features (fixed-base bucket multi-exponentiation in a process pool,
obfuscated from the provider's pool); the analyst decrypts and unpacks. The baseline is the naive
``phe`` loop ``sum(enc_w[j] * x[i, j])`` plus one decryption per entity, timed on a sample and
extrapolated (same key, same weights).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from crypto import _paillier_kernels as _k
from crypto.paillier import IntegerCodec, ObfuscatorPool, PaillierEngine, generate_keypair

K = 20
BASELINE_SAMPLE = 200
WEIGHT_BOUND = 8.0
FEATURE_BOUND = 7.5
FRAC_BITS = 29  # resolution 2**-29 ~ 1.9e-9; feature magnitudes fit 32-bit exponents


def _weighted_sum(quick: bool) -> dict[str, Any]:
    n = 1_000 if quick else 10_000
    rng = np.random.default_rng(20250101)
    weights = rng.normal(0.0, 1.0, size=K).clip(-WEIGHT_BOUND, WEIGHT_BOUND)
    features = rng.normal(0.0, 1.5, size=(n, K)).clip(-FEATURE_BOUND, FEATURE_BOUND)
    expected = features @ weights

    t0 = time.perf_counter()
    public, private = generate_keypair(2048)
    keygen_s = time.perf_counter() - t0

    with (
        PaillierEngine(public, private, codec=IntegerCodec(FRAC_BITS), workers=2) as analyst,
        PaillierEngine(public, codec=IntegerCodec(FRAC_BITS), workers=2) as provider,
    ):
        layout = provider.weighted_sum_layout(WEIGHT_BOUND, FEATURE_BOUND, K)
        blocks = layout.blocks(n)

        # Offline phase: obfuscators for the provider's results (one per block).
        t0 = time.perf_counter()
        provider.prefill(blocks)
        prefill_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        enc_w = analyst.encrypt(weights)
        encrypt_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        packed = provider.packed_linear_combination(enc_w, features, layout)
        provider_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        logits = analyst.decrypt_packed(packed)
        decrypt_s = time.perf_counter() - t0
        wire_bytes = len(packed.serialize())

    # Naive phe loop on a sample, same key and weights.
    phe_pub, phe_priv = public.to_phe(), private.to_phe()
    phe_w = [phe_pub.encrypt(float(w)) for w in weights]
    sample = features[:BASELINE_SAMPLE]
    t0 = time.perf_counter()
    base_out = []
    for i in range(sample.shape[0]):
        acc = sum(
            (phe_w[j] * float(sample[i, j]) for j in range(1, K)), phe_w[0] * float(sample[i, 0])
        )
        base_out.append(phe_priv.decrypt(acc))
    base_sample_s = time.perf_counter() - t0
    base_err = float(np.max(np.abs(np.asarray(base_out) - expected[:BASELINE_SAMPLE])))

    seconds = provider_s + decrypt_s
    return {
        "case": "paillier_weighted_sum_10k",
        "n": n,
        "features": K,
        "seconds": seconds,
        "provider_seconds": provider_s,
        "decrypt_seconds": decrypt_s,
        "report_encrypt_seconds": encrypt_s,
        "offline_obfuscator_prefill_seconds": prefill_s,
        "keygen_seconds": keygen_s,
        "baseline": "naive phe loop: sum(enc_w[j] * x[i, j]) + decrypt per entity",
        "baseline_seconds": base_sample_s * n / BASELINE_SAMPLE,
        "baseline_note": (
            f"timed on {BASELINE_SAMPLE} entities ({base_sample_s:.3f} s) and extrapolated "
            f"linearly to {n}; same 2048-bit key and weights; single process"
        ),
        "baseline_max_abs_error": base_err,
        "max_abs_error": float(np.max(np.abs(logits - expected))),
        "slots_per_ciphertext": layout.slots,
        "slot_bits": layout.slot_bits,
        "frac_bits": layout.frac_bits,
        "ciphertexts": blocks,
        "result_wire_bytes": wire_bytes,
        "workers": 2,
    }


def _obfuscators(quick: bool) -> dict[str, Any]:
    """Obfuscators per second, one process: full ``r**n`` against fixed-base, interleaved."""
    rounds, per_round = (2, 20) if quick else (5, 40)
    public, private = generate_keypair(2048)
    pool = ObfuscatorPool(public)
    t0 = time.perf_counter()
    pool.generate(2 * (64 + 1))  # the first large batch draws the base and builds the tables
    setup_s = time.perf_counter() - t0
    full_s = fixed_s = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        _k.make_obfuscators(public.n, per_round)
        full_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.generate(per_round)
        fixed_s += time.perf_counter() - t0
    count = rounds * per_round
    sample = pool.generate(8)
    decrypted = [private.to_phe().raw_decrypt(o) for o in sample]  # encryptions of zero
    return {
        "case": "paillier_obfuscators",
        "n": count,
        "features": 0,
        "seconds": fixed_s,
        "baseline": "full r**n mod n**2 (public key only), same process, interleaved rounds",
        "baseline_seconds": full_s,
        "baseline_per_s": count / full_s,
        "max_abs_error": float(max(abs(v) for v in decrypted)),
        "setup_seconds": setup_s,
        "exponent_bits": pool.exponent_bits,
        "workers": 0,
    }


CASES = {"paillier_weighted_sum_10k": _weighted_sum, "paillier_obfuscators": _obfuscators}
