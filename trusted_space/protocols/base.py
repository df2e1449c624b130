"""What a joint-score protocol implements: an analyst side, a provider side, an aggregation codec.

Why: the message flow of a joint score (docs/protocols.md) is the same for every protocol — the
analyst opens an aggregation at the operator and a session at each provider, sends the entity ids
in blocks, each provider enforces its policy and reads its rows, then computes its partial logit
block by block (one call per block: ``score.block``, or ``score.beaver`` for an interactive
protocol) and sends it to the aggregator, and the analyst takes and decodes the sums. Only the
cryptography differs, so a protocol is three small objects behind these interfaces, registered by
name (:mod:`trusted_space.protocols.registry`); the flow itself lives once in
:mod:`trusted_space.protocols.score`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trusted_space.compute import ComputeNode
from trusted_space.errors import ConflictError
from trusted_space.protocols._common import Memo
from trusted_space.queries.score import ScoreQuery
from trusted_space.transport import Transport

__all__ = [
    "AnalystSide",
    "EncryptedWeights",
    "ProviderJob",
    "ProviderSide",
    "ScoreProtocol",
]

FloatArray = npt.NDArray[np.float64]


@dataclass
class ProviderJob:
    """One provider's part of one query, as its node established it (``analyst`` authenticated).

    ``values`` holds the provider's feature blocks (party-held: its partial logits) from
    ``score.run`` until each block is computed; it never leaves the provider. ``weights`` holds
    the analyst's loaded (encrypted) weights in analyst-held mode. ``recipient``: in a band
    release, the contributor the aggregator hands the sums to (never the analyst).
    """

    node: ComputeNode
    query: str
    analyst: str
    operator: str
    contributors: list[str]
    mode: str
    blocks: list[tuple[int, int]]
    values: dict[int, FloatArray] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    completed: set[int] = field(default_factory=set)
    weights: Any = None
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    recipient: str | None = None

    def claim(self, block: int) -> FloatArray:
        """Take block ``block``'s values, once (a second claim of a block is refused).

        Raises:
            KeyError: the block was already claimed (or does not exist).
            ConflictError: the analyst cancelled the query (no block starts after that).
        """
        with self.lock:
            if self.cancelled:
                raise ConflictError(f"query {self.query!r} was cancelled by its analyst")
            if block in self.done:
                raise KeyError(block)
            self.done.add(block)
            return self.values.pop(block)

    def complete(self, block: int) -> bool:
        """Record block ``block`` as computed; whether the job is over (its state may go).

        Over: every block computed, or the query cancelled and no other block in flight.
        Claimed is not computed: with blocks on several threads, the last block claimed may
        finish before an earlier one, whose work must not be torn down under it.
        """
        with self.lock:
            self.completed.add(block)
            return len(self.completed) == len(self.blocks) or (
                self.cancelled and self.done <= self.completed
            )

    def cancel(self) -> bool:
        """Refuse any further block; whether none is in flight (its state may go now).

        Otherwise the handler of the last block in flight releases it (:meth:`complete`).
        """
        with self.lock:
            self.cancelled = True
            return self.done <= self.completed


class EncryptedWeights(Memo[bytes, bytes]):
    """A held key's encryptions of weights, made once per distinct weights (up to ``size``).

    Why: a standing serving session runs the same model under the same key many times a
    second; encrypting its weights again for every run was a large share of the analyst's work
    (a Paillier ``r^n`` per weight, a CKKS encryption per provider). Sending the same ciphertext
    again tells a provider only that the weights did not change, which the model digest in its
    ``query.use`` entry already says; the analyst, who made the ciphertext, knows its noise
    either way. Belongs to one key: the protocol object holding that key owns it, so a rotated
    key starts empty.
    """

    def __init__(self, size: int = 64) -> None:
        super().__init__(size)


class AnalystSide(ABC):
    """The analyst's state for one query: keys, parameters, decoding."""

    codec: str
    """The aggregation codec (:data:`~trusted_space.protocols.operator.AGGREGATE_CODECS`)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Public protocol parameters sent to providers and the aggregator."""

    @abstractmethod
    def material(self) -> bytes:
        """Public key material (a Paillier public key, a CKKS public context, or nothing)."""

    def weights_payload(self, provider: str, weights: FloatArray) -> bytes:
        """Analyst-held mode: the provider's weights, encrypted (sent with ``score.run``)."""
        return b""

    interactive: bool = False
    """Whether each block is an interactive round with the provider (``score.beaver``) rather
    than one ``score.block`` call."""

    def accept(
        self, provider: str, reply: Mapping[str, Any], blocks: list[tuple[int, int]]
    ) -> None:
        """A provider's ``score.run`` reply header (e.g. its mask seed); called once per provider.

        May be called from several threads at once (one per provider).
        """
        return None

    def round(
        self,
        transport: Transport,
        analyst: str,
        operator: str,
        provider: str,
        weights: FloatArray | None,
        block: int,
        count: int,
        skip: tuple[str, ...] = (),
    ) -> None:
        """One interactive round with ``provider`` for ``block`` (``interactive`` protocols).

        ``skip``: a served run's requests whose rows the provider zeroes (``ScoreBlock.skip``).
        May be called from several threads at once (one per provider).
        """
        raise NotImplementedError

    def prefetch(
        self,
        transport: Transport,
        analyst: str,
        operator: str,
        provider: str,
        block: int,
        count: int,
        terms: int,
    ) -> None:
        """Fetch now what :meth:`round` will need, while other messages travel.

        The additive protocol fetches the dealer's triple; one without such material does
        nothing. May be called from several threads at once (one per provider).
        """
        return None

    @abstractmethod
    def decode(self, block: int, count: int, payload: bytes) -> FloatArray:
        """The providers' summed partial logits of one block, from the aggregator's sum."""

    def band_share(
        self, block: int, count: int, edges: tuple[float, ...], shift: FloatArray
    ) -> npt.NDArray[np.uint64]:
        """A band release: the analyst's share of ``t - z`` per entity and edge, for one block.

        Only a protocol whose aggregated sum is an additive share of the logit can compute a
        band without opening the logit (:mod:`trusted_space.protocols.score.band`).
        """
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (process pools)."""


class ProviderSide(ABC):
    """A provider's protocol state for one session, built from the analyst's public material."""

    interactive: bool = False
    """Whether the partial needs further rounds with the analyst (``score.beaver``)."""

    def load_weights(self, payload: bytes, terms: int) -> Any:
        """Analyst-held mode: parse the analyst's encrypted weights for ``terms`` columns."""
        return None

    def weighted_partial(self, job: ProviderJob, block: int, x: FloatArray, weights: Any) -> bytes:
        """Analyst-held mode: the encrypted partial logits of one block (for the aggregator)."""
        raise NotImplementedError

    @abstractmethod
    def plain_partial(self, job: ProviderJob, block: int, z: FloatArray) -> bytes:
        """Party-held mode: one block of the plaintext partial, encrypted or masked."""

    def reply_extras(self) -> dict[str, Any]:
        """Extra header fields of the ``score.run`` reply (never per-entity values)."""
        return {}

    def interact(self, job: ProviderJob, block: int, x: FloatArray, payload: bytes) -> bytes:
        """One interactive round (``score.beaver``) over block ``block``'s values ``x``.

        Returns the reply payload.
        """
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (process pools)."""


class ScoreProtocol(ABC):
    """A joint-score protocol: builds its analyst and provider sides."""

    name: str

    def block_rows(self, query: ScoreQuery, terms: int) -> int:
        """Entities per block for this query (each message stays under the size limit)."""
        from trusted_space.protocols._common import DEFAULT_BLOCK_ROWS

        return DEFAULT_BLOCK_ROWS

    @abstractmethod
    def analyst(
        self, query: ScoreQuery, contributors: list[str], terms: Mapping[str, int]
    ) -> AnalystSide:
        """The analyst side for ``query`` (``terms``: columns per provider, analyst-held)."""

    @abstractmethod
    def provider(
        self, mode: str, params: Mapping[str, Any], material: bytes, *, workers: int = 1
    ) -> ProviderSide:
        """A provider side from the analyst's public parameters and material (validated).

        ``workers``: processes the side may use for its products (the provider node's
        ``score_workers``); a protocol that cannot use them ignores it.
        """
