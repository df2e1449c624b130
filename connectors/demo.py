"""The demonstration behind ``make demo`` / ``trusted-space demo``.

Today it runs the crypto path of a joint pre-loan score in one process: a bank holds a logistic
model over 20 features spread across four providers (market registration, tax, social insurance,
court); each protocol computes every applicant's logit without the bank's weights or any provider's
features being visible to another party, and the result is compared with float64 plaintext. The
full space of connector processes replaces this once the connector and query layers exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto import ckks, paillier, sharing
from crypto.fixedpoint import FixedPoint

__all__ = ["ProtocolResult", "run"]

FloatArray = npt.NDArray[np.float64]
PROVIDERS = ("market-registration", "tax-bureau", "social-insurance", "court")
FEATURES_PER_PROVIDER = 5
TOLERANCE = {"paillier": 1e-6, "ckks": 1e-3, "additive": 1e-3}


@dataclass(frozen=True)
class ProtocolResult:
    protocol: str
    entities: int
    seconds: float
    max_abs_logit_error: float
    tolerance: float
    ok: bool
    what_the_bank_learns: str
    what_each_provider_learns: str


def _synthetic(entities: int, seed_rng: np.random.Generator) -> tuple[list[FloatArray], FloatArray]:
    """Standardised features per provider and the bank's weights (bounded, as a fitted model is)."""
    blocks = [
        np.clip(seed_rng.standard_normal((entities, FEATURES_PER_PROVIDER)), -6.0, 6.0)
        for _ in PROVIDERS
    ]
    weights = seed_rng.uniform(-1.5, 1.5, FEATURES_PER_PROVIDER * len(PROVIDERS))
    return blocks, weights


def _split(weights: FloatArray) -> list[FloatArray]:
    k = FEATURES_PER_PROVIDER
    return [weights[i * k : (i + 1) * k] for i in range(len(PROVIDERS))]


def _paillier(blocks: list[FloatArray], weights: FloatArray) -> FloatArray:
    public, private = paillier.generate_keypair(2048)
    with paillier.PaillierEngine(public, private, workers=0) as bank:
        enc_w = bank.encrypt(weights)
        k = FEATURES_PER_PROVIDER
        total: paillier.PackedCiphertexts | None = None
        with paillier.PaillierEngine(public, workers=2) as provider_engine:
            layout = provider_engine.weighted_sum_layout(
                weight_bound=2.0, feature_bound=6.0, terms=k, addends=len(PROVIDERS)
            )
            for i, block in enumerate(blocks):
                # What travels: the bank's encrypted weights for this provider's columns, as JSON.
                wire = paillier.CiphertextVector(
                    enc_w.values[i * k : (i + 1) * k], enc_w.key_id, enc_w.exponent
                ).serialize()
                received = paillier.CiphertextVector.load(
                    wire, public, exponent=provider_engine.codec.exponent
                )
                partial = provider_engine.packed_linear_combination(received, block, layout)
                total = partial if total is None else provider_engine.add_packed(total, partial)
        if total is None:
            raise RuntimeError("no providers")
        return bank.decrypt_packed(total)


def _ckks(blocks: list[FloatArray], weights: FloatArray) -> FloatArray:
    secret = ckks.SecretContext.generate()
    public_bytes = secret.public_context().serialize()
    partials = []
    for block, w in zip(blocks, _split(weights), strict=True):
        # Each provider receives only the public context (no secret key) and encrypted weights.
        evaluator = ckks.PublicContext.load(public_bytes)
        enc_w = evaluator.load_vector(ckks.encrypt_weights(secret, w).serialize())
        partials.append(ckks.weighted_sum(evaluator, enc_w, block))
    total = partials[0]
    for p in partials[1:]:
        total = ckks.add(total, p)
    return secret.decrypt(total)


def _additive(blocks: list[FloatArray], weights: FloatArray) -> FloatArray:
    codec = FixedPoint(frac_bits=16)
    x = np.hstack(blocks)
    x_shares = sharing.share(codec.encode(x), 2)
    w_shares = sharing.share(codec.encode(weights), 2)
    dealer = sharing.TripleDealer(2)
    batch = dealer.matmul_triple(x.shape, weights.shape)
    z_shares = sharing.beaver_multiply(x_shares, w_shares, batch)
    z = sharing.reconstruct(sharing.truncate(z_shares, codec.frac_bits))
    return codec.decode(z)


_PROTOCOLS: dict[str, tuple[Callable[[list[FloatArray], FloatArray], FloatArray], str, str]] = {
    "paillier": (
        _paillier,
        "each applicant's total logit (one decryption per packed block of all providers' sum)",
        "only ciphertexts of the bank's weights under the bank's 2048-bit key",
    ),
    "ckks": (
        _ckks,
        "each applicant's total logit, rounded before release",
        "only a public CKKS context (no secret key) and encrypted weights",
    ),
    "additive": (
        _additive,
        "each applicant's total logit (reconstructed from two shares)",
        "uniformly random shares of the weights and of the other parties' features",
    ),
}


def run(*, entities: int = 1000, json_output: bool = False) -> bool:
    """Run every protocol on the same synthetic applicants; print a summary; return success."""
    rng = np.random.default_rng()
    blocks, weights = _synthetic(entities, rng)
    intercept = -1.2
    plain_start = time.perf_counter()
    expected = np.hstack(blocks) @ weights
    plain_seconds = time.perf_counter() - plain_start

    results: list[ProtocolResult] = []
    for name, (fn, bank_learns, provider_learns) in _PROTOCOLS.items():
        start = time.perf_counter()
        logits = fn(blocks, weights)
        seconds = time.perf_counter() - start
        error = float(np.max(np.abs(logits - expected)))
        results.append(
            ProtocolResult(
                protocol=name,
                entities=entities,
                seconds=round(seconds, 3),
                max_abs_logit_error=error,
                tolerance=TOLERANCE[name],
                ok=error <= TOLERANCE[name],
                what_the_bank_learns=bank_learns,
                what_each_provider_learns=provider_learns,
            )
        )
    probabilities = 1.0 / (1.0 + np.exp(-(expected + intercept)))
    summary: dict[str, Any] = {
        "what": "joint pre-loan score: bank-held logistic model over 4 providers' features",
        "entities": entities,
        "features": int(weights.size),
        "providers": list(PROVIDERS),
        "plaintext_seconds": plain_seconds,
        "mean_default_probability": float(probabilities.mean()),
        "protocols": [asdict(r) for r in results],
        "ok": all(r.ok for r in results),
    }
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary, results)
    return bool(summary["ok"])


def _print_table(summary: dict[str, Any], results: list[ProtocolResult]) -> None:
    print(f"trusted-space demo: {summary['what']}")
    print(
        f"{summary['entities']} applicants, {summary['features']} features across "
        f"{', '.join(summary['providers'])}\n"
    )
    print(f"{'protocol':<10} {'seconds':>8} {'max |logit error|':>18} {'bound':>8}  result")
    for r in results:
        verdict = "ok" if r.ok else "FAILED"
        print(
            f"{r.protocol:<10} {r.seconds:>8.2f} {r.max_abs_logit_error:>18.2e} "
            f"{r.tolerance:>8.0e}  {verdict}"
        )
    print(f"{'plaintext':<10} {summary['plaintext_seconds']:>8.4f}")
    print("\nWhat each party learns:")
    for r in results:
        print(f"  {r.protocol}: bank: {r.what_the_bank_learns}")
        print(f"  {' ' * len(r.protocol)}  providers: {r.what_each_provider_learns}")
