"""Band release over an in-memory network: only the band of each logit leaves, computed on shares.

The bands equal those of the float64 plaintext logits; the analyst never takes an aggregated sum
(the comparer does) and never holds a logit; the comparison circuit is exact over the whole ring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trusted_space.compute import InMemoryData
from trusted_space.errors import ValidationError
from trusted_space.protocols import _common, run_score
from trusted_space.protocols._common import ring_from_bytes, ring_to_bytes
from trusted_space.protocols.compare import AND_WORDS, deal_and_triples, sign_program
from trusted_space.protocols.operator import (
    add_to_aggregate,
    fetch_and_triples,
    open_aggregation,
    take_aggregate,
)
from trusted_space.protocols.score.band import comparer_of
from trusted_space.protocols.train_mpc import run_pair
from trusted_space.queries.common import MODES
from trusted_space.transport import RemoteError

from ._joint import ANALYST, OPERATOR
from .test_score_protocols import _named, calls, make_setup


def _edges_in_gaps(logits: np.ndarray[Any, Any], k: int) -> tuple[float, ...]:
    """Edges at the midpoints of the ``k`` widest gaps between sorted logits (no logit near one)."""
    z = np.sort(logits)
    gaps = np.argsort(np.diff(z))[-k:]
    return tuple(sorted(float((z[i] + z[i + 1]) / 2) for i in gaps))


@given(
    values=st.lists(st.integers(-(2**63) + 1, 2**63 - 1), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=30)
def test_the_sign_of_two_shares_is_exact_over_the_ring(values: list[int], seed: int) -> None:
    x = np.array(values, dtype=np.int64)
    mask = np.random.default_rng(seed).integers(0, 2**64 - 1, size=x.size, dtype=np.uint64)
    t0, t1 = deal_and_triples(x.size)
    bits, nothing, _ = run_pair(
        sign_program(0, mask, t0), sign_program(1, x.view(np.uint64) - mask, t1)
    )
    assert nothing is None
    assert np.array_equal(bits.astype(bool), x < 0)


@pytest.mark.parametrize("mode", MODES)
def test_bands_equal_the_plaintext_bands_and_the_analyst_never_takes_a_sum(
    mode: str, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 7)
    setup = make_setup(20, {"tax-bureau": 3, "court": 2}, rng)
    own_x = rng.uniform(-3, 3, (20, 2))
    own_w = np.array([0.3, -0.7])
    own = InMemoryData()
    own.add("ds-own", setup.keys, [name for name, _ in _named(ANALYST, own_w)], own_x)
    setup.datasets[ANALYST] = "ds-own"
    expected = 1.0 + setup.expected() + own_x @ own_w
    edges = _edges_in_gaps(expected, 3)
    query = setup.query("additive", mode, own=own_w, intercept=1.0, band_edges=edges)
    result = run_score(setup.space.transport(ANALYST), ANALYST, OPERATOR, query, analyst_data=own)
    assert result.bands is not None
    assert np.array_equal(result.bands, np.searchsorted(edges, expected, side="left"))
    assert result.logits.size == 0 and "logits" not in result.to_json()
    comparer = comparer_of(list(setup.agreements))
    assert calls(setup.space, "aggregate.take", ANALYST) == 0
    assert calls(setup.space, "aggregate.take", comparer) == 3  # blocks of 7
    assert calls(setup.space, "score.compare", ANALYST) == 3 * 4  # four exchanges per block


def test_a_band_release_is_refused_for_protocols_that_open_the_logit(
    rng: np.random.Generator,
) -> None:
    setup = make_setup(4, {"tax-bureau": 1}, rng)
    for protocol in ("paillier", "ckks"):
        with pytest.raises(ValidationError, match=r"bandEdges.*additive"):
            setup.query(protocol, "party-held", band_edges=(0.0,))


def test_the_aggregator_hands_a_band_release_sum_to_the_comparer_only(
    rng: np.random.Generator,
) -> None:
    setup = make_setup(3, {"tax-bureau": 1, "court": 1}, rng)
    net = setup.space.transport
    contributors = ["court", "tax-bureau"]
    open_aggregation(
        net(ANALYST), OPERATOR, query="q1", codec="ring64", contributors=contributors,
        counts=[3], recipient="court",
    )  # fmt: skip
    block = ring_to_bytes(np.arange(3, dtype=np.uint64))

    def add(provider: str, recipient: str | None) -> None:
        add_to_aggregate(
            net(provider), OPERATOR, query="q1", analyst=ANALYST, contributors=contributors,
            block=0, count=3, payload=block, recipient=recipient,
        )  # fmt: skip

    with pytest.raises(RemoteError) as told_otherwise:  # a provider told the analyst takes it
        add("tax-bureau", None)
    add("tax-bureau", "court")
    add("court", "court")
    with pytest.raises(RemoteError) as by_the_analyst:
        take_aggregate(net(ANALYST), OPERATOR, query="q1", block=0)
    taken = take_aggregate(net("court"), OPERATOR, query="q1", block=0, analyst=ANALYST)

    assert told_otherwise.value.status == 409
    assert by_the_analyst.value.status == 404
    assert np.array_equal(ring_from_bytes(taken, 3), 2 * np.arange(3, dtype=np.uint64))


def test_comparison_triples_are_dealt_once_to_each_of_their_two_parties(
    rng: np.random.Generator,
) -> None:
    setup = make_setup(2, {"tax-bureau": 1}, rng)
    net = setup.space.transport
    parties = (ANALYST, "tax-bureau")

    def fetch(who: str) -> np.ndarray[Any, Any]:
        return fetch_and_triples(
            net(who), OPERATOR, session="q2", batch="band.0", parties=parties, values=5
        )

    mine, theirs = fetch(ANALYST), fetch("tax-bureau")
    with pytest.raises(RemoteError) as again:
        fetch(ANALYST)

    assert again.value.status == 409
    u, v, w = (np.split(mine, 3)[i] ^ np.split(theirs, 3)[i] for i in range(3))
    assert u.size == AND_WORDS * 5 and np.array_equal(w, u & v)
