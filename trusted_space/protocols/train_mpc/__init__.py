"""Two-party secure SGD for logistic regression over Z_2^64: the arithmetic, without a transport.

Why a separate module: joint training (:mod:`trusted_space.protocols.train`) moves bytes between
the bank, the designated provider and the operator; *this* module is what each of the two compute
parties does with those bytes, written as a generator per party (``theirs = yield mine``) so that
the same code runs in one process (tests pair two generators directly) and across nodes (the
flow module feeds each generator the other side's messages).

Parties and roles. Party 0 is the bank (it holds the label), party 1 the designated provider.
Every feature column of every party is additively shared between them over Z_2^64 with
``f = 16`` fractional bits: a column of the bank is ``(x, 0)``, of the designated provider
``(0, x)``, of any other provider ``(x - r, r)`` with ``r`` from a seed that provider sent to
party 1 only. The weights ``w`` start as shares of zero and never leave their shares until the
end. The operator is the **dealer**: it hands out correlated randomness and is never a compute
party (with a party's shares it could unmask everything: dealer and party must not collude).

One mini-batch (``m`` rows ``S``, ``d`` columns including the intercept column of ones), six
opening rounds, each party sending one message per round (two rounds per call: three calls)::

    R1      open D = X_S - A, F = w - Bw          z = X_S·w      (matrix triple A, Bw, A·Bw)
    R2      leaves and carry levels 1-2 at once   29 ANDs of a value one party knows with one
            also opens e = z - b                  the other knows; b: a dealer mask, for beta(z)·z
    R3-R4   carry levels 3 and 4                  XOR-shared ANDs
    R5      open s, x, y XOR dealer bits          the last level and the bits' arithmetic form:
                                                  [z > t_k] = s XOR (x AND y), a polynomial in
                                                  the dealer's bits (monomials dealt, and their
                                                  products with b for [z > t_k]·z)
    R6      open F' = δ - Bg                      g = X_Sᵀ·δ      (triple Aᵀ, Bg, Aᵀ·Bg; same A)
    local   w ← w - (lr/m)·g - lr·λ·w             (public constants at 2^-12 relative precision)

**Sigmoid.** ``sigmoid(z)`` is replaced by the piecewise-linear interpolation of the sigmoid at
public knots
``t_1 < … < t_K`` (0 below ``t_1``, 1 above ``t_K``), written as hinges
``alpha(z) + beta(z)·z`` with ``alpha = Σ_k [z > t_k]·Δalpha_k`` and
``beta = Σ_k [z > t_k]·Δbeta_k`` — one
comparison per knot (all in the same rounds) and a single product. Polynomials cannot do this job
on real data: with standardised but heavy-tailed features a logit of -25 appears during training,
where any low-degree polynomial explodes (``docs/protocols.md`` has the measurements).

**Comparison** ``[z > t] = MSB(t - z)``. With ``|t - z| < 2^32`` at ``2^-8`` resolution the sign
is bit 32 of ``(x₀ mod 2^33) + (x₁ mod 2^33)``: the two top bits XOR the carry out of the low 32
bits, ``carry = G`` of a Kogge-Stone-style prefix over ``g = a∧b``, ``p = a⊕b`` where ``a`` is
party 0's low word and ``b`` party 1's — five levels over the leaves (two comparisons share one
64-bit word: the tree never crosses bit 32). The leaves and the first two levels take one round:
a bit's ``g = a·b`` and ``p = a·1 ⊕ 1·b`` are sums of products of a value party 0 knows with one
party 1 knows, and a level's ``G = G_hi ⊕ P_hi·G_lo``, ``P = P_hi·P_lo`` keep that form, so every
product is one AND of private inputs (29 for two levels), one-sided: each party masks its
input with bits only its own stream holds. The last level's AND, the XOR
with the top bits and the conversion to additive shares take one round together: ``s``, ``x``
and ``y`` are opened masked by dealer bits ``r``, each is ``D + (1 - 2D)·r`` in the ring, and the
bit is ``S + X·Y - 2·S·X·Y``, linear in the seven products of the three ``r`` (:data:`MONOMIALS`),
whose additive shares the dealer deals. ANDs use XOR-shared Beaver
triples; every opened word is masked by a uniform triple word, so openings are uniform.

**Truncation** is SecureML's local 2-party truncation (:func:`crypto.sharing.truncate_2pc`). It
fails (an error of about ``2^48``) with probability ``|x|/2^64`` for a ring value ``x``; every
truncation here is placed where ``|x| ≤ 2^40`` (probability ≤ 2^-24, typically 2^-30), see
:func:`update_scale`. A failure shows as an absurd held-out loss or weight, which the flow refuses
to release.

**Dealer material, compressed with seeds.** Each party receives a 32-byte seed once. For batch
``b`` of epoch ``e`` a party expands AES-256-CTR(seed, nonce ``e‖b‖0``) into the batch's
:class:`Layout`: its share of every *random* value (``A``, ``Bw``, triple inputs, ...). Party 0
takes its shares of the *derived* values (``A·Bw``, ``u∧v``, ...) from its stream too; party 1
receives them explicitly from the dealer (:func:`dealer_correction`: the derived value minus
party 0's share). So party 0 never fetches anything after its seed, and party 1 fetches only the
derived parts (about a third of the material). The dealer learns shapes only: not the rows, not
the schedule, not a single opening.

**Validation** (early stopping): the bank keeps a held-out split; per epoch the parties compute
shares of ``Σ z²/8 - (2y-1)·z/2`` (the second-order Taylor expansion of the log-loss around 0:
one square pair and one dot-product triple) and only party 0 learns the sum — a single scalar per
epoch. No gradient, logit or prediction is ever opened.

Layout: :mod:`.ring` (Z_2^64, fixed point, seeded expansion, message packing), :mod:`.sigmoid`
(the approximation), :mod:`.material` (dealer material and layouts), :mod:`.party` (the party
program), :mod:`.pair` (running two programs against each other).
"""

from __future__ import annotations

from trusted_space.protocols.train_mpc.material import (
    MONOMIALS,
    Layout,
    Segment,
    batch_sizes,
    dealer_correction,
    layout_for,
    material_share,
    sign_bits,
    update_scale,
)
from trusted_space.protocols.train_mpc.pair import Exchange, run_pair
from trusted_space.protocols.train_mpc.party import (
    MaterialSource,
    Party,
    PartyProgram,
    and_shares,
    level_mask,
    with_opening,
)
from trusted_space.protocols.train_mpc.ring import (
    CMP_FRAC_BITS,
    FRAC_BITS,
    MASK_SIGN_BITS,
    SEED_BYTES,
    decode_ring,
    encode_ring,
    expand,
    pack_messages,
    unpack_messages,
)
from trusted_space.protocols.train_mpc.sigmoid import Sigmoid

__all__ = [
    "CMP_FRAC_BITS",
    "FRAC_BITS",
    "MASK_SIGN_BITS",
    "MONOMIALS",
    "SEED_BYTES",
    "Exchange",
    "Layout",
    "MaterialSource",
    "Party",
    "PartyProgram",
    "Segment",
    "Sigmoid",
    "and_shares",
    "batch_sizes",
    "dealer_correction",
    "decode_ring",
    "encode_ring",
    "expand",
    "layout_for",
    "level_mask",
    "material_share",
    "pack_messages",
    "run_pair",
    "sign_bits",
    "unpack_messages",
    "update_scale",
    "with_opening",
]
