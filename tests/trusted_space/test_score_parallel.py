"""Joint scores with providers served concurrently, one block per call.

The in-memory transport keeps ``max_concurrency`` at 1 (its tests see one deterministic message
order); here a wrapper declares one, so ``run_score`` serves every provider from its own thread
and takes each block's sum as soon as all providers sent theirs. The results must be those of
the sequential run, every block computed exactly once, a refusal must still end the query with
the provider's trace, and a block cannot be computed twice.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from crypto import ckks, paillier
from trusted_space.errors import ValidationError
from trusted_space.protocols import _common, run_score
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore
from trusted_space.transport import RemoteError, Reply, Transport

from ._joint import ANALYST, OPERATOR
from .test_score_protocols import MODES, PROTOCOLS, TOLERANCE, calls, make_setup


class Parallel(Transport):
    """A transport that may be called from several threads (and records which ones did)."""

    max_concurrency = 4

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sender = inner.sender
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        with self._lock:
            self.threads.add(threading.get_ident())
        return self.inner.call(peer, operation, header, payload)


@pytest.fixture(scope="module")
def keys() -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    return paillier.generate_keypair(2048)


@pytest.fixture(scope="module")
def context() -> ckks.SecretContext:
    return ckks.SecretContext.generate()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_concurrent_providers_give_the_sequential_result(
    protocol: str,
    mode: str,
    keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey],
    context: ckks.SecretContext,
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 5)
    columns = {"tax-bureau": 3, "court": 2, "social-insurance": 1, "utilities": 2}
    setup = make_setup(23, columns, rng)
    proto = {
        "paillier": PaillierScore(keys, workers=0),
        "ckks": CkksScore(context),
        "additive": AdditiveScore(),
    }[protocol]
    transport = Parallel(setup.space.transport(ANALYST))
    result = run_score(transport, ANALYST, OPERATOR, setup.query(protocol, mode), protocol=proto)
    expected = -0.75 + setup.expected()
    assert float(np.max(np.abs(result.logits - expected))) <= TOLERANCE[protocol]
    assert len(transport.threads) > 1  # the providers were served from their own threads
    blocks = 1 if protocol == "ckks" else 5  # 23 entities in blocks of 5 (CKKS: of its slots)
    per_block = (
        "score.beaver" if (protocol, mode) == ("additive", "analyst-held") else "score.block"
    )
    for p in columns:
        assert calls(setup.space, "aggregate.add", p) == blocks
    assert calls(setup.space, per_block, ANALYST) == blocks * len(columns)
    assert calls(setup.space, "aggregate.take", ANALYST) == blocks
    assert set(result.receipts) == set(columns)


def test_a_refusal_among_concurrent_providers_ends_the_query_with_its_trace(
    rng: np.random.Generator,
) -> None:
    from trusted_space.queries.score import ScoreQuery

    setup = make_setup(12, {"tax-bureau": 2, "court": 2, "utilities": 1}, rng)
    query = setup.query("additive", "analyst-held")
    doc = query.to_json()
    doc["purpose"] = "risk-monitoring"  # no provider's offer permits it
    with pytest.raises(RemoteError) as info:
        run_score(
            Parallel(setup.space.transport(ANALYST)),
            ANALYST,
            OPERATOR,
            ScoreQuery.from_json(doc),
        )
    assert info.value.status == 403 and info.value.problem["trace"]
    assert calls(setup.space, "aggregate.take") == 0  # nothing was released


class Replaying(Transport):
    """Sends every ``score.block`` call twice and keeps what the second one got."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sender = inner.sender
        self.second: list[int] = []

    def call(
        self, peer: str, operation: str, header: Mapping[str, Any], payload: bytes = b""
    ) -> Reply:
        reply = self.inner.call(peer, operation, header, payload)
        if operation == "score.block":
            try:
                self.inner.call(peer, operation, header, payload)
                self.second.append(200)
            except RemoteError as exc:
                self.second.append(exc.status)
        return reply


def test_a_block_is_computed_once_and_the_session_ends_with_the_last(
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 4)
    setup = make_setup(10, {"court": 2}, rng)
    transport = Replaying(setup.space.transport(ANALYST))
    query = setup.query("additive", "party-held", id="urn:uuid:q-once")
    result = run_score(transport, ANALYST, OPERATOR, query)
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-3
    # Blocks 0 and 1 again: refused (409); after the last block the session is gone (404).
    assert transport.second == [409, 409, 404]
    assert calls(setup.space, "aggregate.add", "court") == 3


def test_a_ckks_session_pool_gives_the_in_process_partial(
    context: ckks.SecretContext,
    rng: np.random.Generator,
) -> None:
    from trusted_space.protocols import score_ckks

    public = context.public_context().serialize()
    w = np.array([0.5, -0.25, 1.0])
    weights = ckks.encrypt_weights(context, w).serialize()
    x = rng.uniform(-4, 4, (score_ckks._POOL_ROWS + 1000, 3))
    results = []
    for workers in (1, 2):
        side = score_ckks.CkksProvider(
            "analyst-held", {"preset": context.preset.name}, public, workers=workers
        )
        try:
            loaded = side.load_weights(weights, 3)
            results.append(
                context.decrypt(context.load_vector(side.weighted_partial(None, 0, x, loaded)))
            )  # type: ignore[arg-type]
            assert (side._pool is None) == (workers == 1)
        finally:
            side.close()
    for got in results:
        assert got.shape == (x.shape[0],)
        assert float(np.max(np.abs(got - x @ w))) <= 1e-4


def test_the_analysts_own_columns_are_read_alongside_the_providers(
    rng: np.random.Generator,
) -> None:
    from trusted_space.compute import InMemoryData

    from .test_score_protocols import _named

    setup = make_setup(25, {"tax-bureau": 2, "court": 1}, rng)
    own_x = rng.uniform(-3, 3, (25, 2))
    own_w = np.array([0.3, -0.7])
    own = InMemoryData()
    own.add("ds-own", setup.keys, [name for name, _ in _named(ANALYST, own_w)], own_x)
    setup.datasets[ANALYST] = "ds-own"
    query = setup.query("additive", "analyst-held", own=own_w, intercept=1.0)
    transport = Parallel(setup.space.transport(ANALYST))
    result = run_score(transport, ANALYST, OPERATOR, query, analyst_data=own)
    expected = 1.0 + setup.expected() + own_x @ own_w
    assert float(np.max(np.abs(result.logits - expected))) <= 1e-3
    # An entity missing from the analyst's own data still fails the query ("fail" rule).
    short = InMemoryData()
    short.add("ds-own", setup.keys[1:], [name for name, _ in _named(ANALYST, own_w)], own_x[1:])
    with pytest.raises(ValidationError, match="missing from the analyst's own data"):
        run_score(
            Parallel(setup.space.transport(ANALYST)),
            ANALYST,
            OPERATOR,
            setup.query("additive", "analyst-held", own=own_w, id="urn:uuid:q-short"),
            analyst_data=short,
        )


def test_a_job_ends_when_its_blocks_are_computed_not_when_they_are_claimed() -> None:
    from trusted_space.protocols.base import ProviderJob

    job = ProviderJob(None, "q", "a", "o", ["p"], "analyst-held", [(0, 5), (5, 8)])  # type: ignore[arg-type]
    job.values = {0: np.zeros((5, 1)), 1: np.zeros((3, 1))}
    job.claim(0)
    job.claim(1)
    with pytest.raises(KeyError):
        job.claim(1)
    assert job.complete(1) is False  # block 0 is still being computed on another thread
    assert job.complete(0) is True


def test_pooled_paillier_blocks_in_flight_finish_before_the_session_closes(
    keys: tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
    rng: np.random.Generator,
) -> None:
    from trusted_space.protocols import score_paillier

    # Full blocks of 6 use the provider's process pool, the last block of 2 does not, so the
    # small last block usually finishes first while a pooled one is still running.
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 6)
    monkeypatch.setattr(score_paillier, "_POOL_ROWS", 6)
    setup = make_setup(20, {"tax-bureau": 2, "court": 1}, rng)
    result = run_score(
        Parallel(setup.space.transport(ANALYST)),
        ANALYST,
        OPERATOR,
        setup.query("paillier", "analyst-held"),
        protocol=PaillierScore(keys, workers=0),
    )
    assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_ckks_blocks_computed_at_once_on_one_context(
    context: ckks.SecretContext,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    rng: np.random.Generator,
) -> None:
    # Three blocks of 4,096 per provider, two in flight: TenSEAL contexts are shared state.
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 4096)
    setup = make_setup(9000, {"tax-bureau": 3, "court": 2}, rng)
    for _ in range(2):
        result = run_score(
            Parallel(setup.space.transport(ANALYST)),
            ANALYST,
            OPERATOR,
            setup.query("ckks", mode, id=f"urn:uuid:q-ckks-{mode}-{_}"),
            protocol=CkksScore(context),
        )
        assert float(np.max(np.abs(result.logits - (-0.75 + setup.expected())))) <= 1e-3
