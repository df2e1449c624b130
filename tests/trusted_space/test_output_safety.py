"""Output safety on the score path: what the analyst receives from a CKKS score is rounded.

A raw CKKS decryption is the message plus noise linear in the secret key (Li-Micciancio 2021):
whoever sees raw decryptions can work back to the key, and the noise also carries a small term
that depends on the providers' inputs. ``crypto.ckks.SecretContext.decrypt`` rounds before a value
leaves it (``tests/crypto/test_ckks.py::test_decryption_is_rounded_before_release``); this checks
that a joint score's released logits are those rounded values, end to end, and not a raw
decryption taken some other way. The other output guarantees have their tests where the
mechanism lives (``tests/test_leakage_index.py`` lists them): minimum cohorts in
``test_aggregate.py``, budgets that never go negative in ``test_budget.py``.
"""

from __future__ import annotations

import numpy as np

from crypto import ckks
from trusted_space.protocols import register_operator, register_provider, run_score
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.queries.score import Link, Model, ScoreQuery

from ._joint import ANALYST, OPERATOR, PURPOSE, build_space, provide


def test_ckks_scores_are_released_rounded(rng: np.random.Generator) -> None:
    n, columns = 40, ["a", "b", "c"]
    space = build_space(["tax-bureau"])
    register_operator(space.operator.node)
    node = space.providers["tax-bureau"].node
    register_provider(node)
    node.operator = OPERATOR
    keys = [f"ent-{i:03d}" for i in range(n)]
    x = rng.uniform(-4, 4, (n, len(columns)))
    w = rng.uniform(-1.5, 1.5, len(columns))
    dataset, agreement = provide(space, "tax-bureau", columns, keys, x)
    assert agreement is not None
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol="ckks",
        mode="analyst-held",
        model=Model(
            0.0,
            Link("identity"),
            (("tax-bureau", tuple(zip(columns, w.tolist(), strict=True))),),
            id="model-1",
        ),
        agreements={"tax-bureau": agreement},
        datasets={"tax-bureau": dataset},
        entities=tuple(keys),
    )
    secret = ckks.SecretContext.generate()
    decimals = secret.preset.default_decimals

    result = run_score(
        space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=CkksScore(secret)
    )

    def off_grid(values: np.ndarray) -> np.ndarray:  # distance to the release grid, in steps
        scaled = values * 10**decimals
        return np.abs(scaled - np.round(scaled))

    exact = x @ w
    assert float(np.max(off_grid(result.logits))) < 1e-6  # every released value is rounded
    assert float(np.median(off_grid(exact))) > 1e-3  # which plain floats are not
    assert float(np.max(np.abs(result.logits - exact))) <= secret.preset.linear_tolerance
