"""Band release of a joint score: only the band each logit falls in leaves, never the logit.

A provider's policy may require it (``release eq band``, ``releaseBands lteq k``). With the
``additive`` protocol the providers' partials reach the aggregator masked, and the analyst holds
the masks (and, analyst-held, its own Beaver shares): the aggregator's sum and the analyst's
local sum are two additive shares of the logit. In a band release the aggregator hands its sum
not to the analyst but to one contributing provider, the **comparer** (the analyst declares it
when it opens the aggregation; every provider names the same one when it adds a block, and the
aggregator refuses a block that names another, and any take by the analyst). The analyst
(party 0) and the comparer (party 1) then compute ``[z > t]`` for every edge ``t`` on their
shares (:mod:`trusted_space.protocols.compare`, XOR triples from the operator's dealer,
``dealer.bits``) and only the analyst learns the bits — a unary code of the band.

What the comparer learns: the aggregator's sum, which is the logit minus the other providers'
masks (uniform to it) and minus the analyst's shares; with no other provider it is its own
partial, which it computed itself. The intercept and the analyst's own columns stay with the
analyst: it shifts each entity's edges by them (``t - b - own``), clipped to the range a logit
can take so that no difference wraps around the ring.

Operations: the analyst calls ``score.compare`` (header ``{query, block}``, payload its packed
messages) at the comparer four times per block; the comparer's first call takes the block's
sum from the aggregator and its triples from the dealer.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trusted_space.errors import ValidationError
from trusted_space.protocols.compare import MESSAGES, sign_program
from trusted_space.protocols.operator import fetch_and_triples
from trusted_space.protocols.train_mpc import Exchange, pack_messages, unpack_messages
from trusted_space.transport import Transport

__all__ = [
    "COMPARE_OPERATION",
    "Comparer",
    "band_batch",
    "comparer_of",
    "run_compare",
]

COMPARE_OPERATION: Final = "score.compare"
Ring = npt.NDArray[np.uint64]


def comparer_of(providers: list[str]) -> str:
    """The contributor that compares with the analyst: the first provider of the query."""
    return sorted(providers)[0]


def band_batch(block: int) -> str:
    """The dealer batch of one block's comparisons."""
    return f"band.{block}"


def run_compare(
    transport: Transport,
    analyst: str,
    operator: str,
    comparer: str,
    query: str,
    block: int,
    share: Ring,
) -> npt.NDArray[np.int64]:
    """As the analyst: the band of each entity of one block (rows of ``share``)."""
    from trusted_space.protocols.score.wire import ScoreBlock  # local: wire imports the queries

    rows, edges = share.shape
    triples = fetch_and_triples(
        transport,
        operator,
        session=query,
        batch=band_batch(block),
        parties=(analyst, comparer),
        values=share.size,
    )
    mine = Exchange(sign_program(0, share, triples))
    pending = mine.start()
    header = ScoreBlock(query, block).to_header()
    while not mine.done:
        answer = transport.call(comparer, COMPARE_OPERATION, header, pack_messages(pending))
        pending = mine.feed(unpack_messages(answer.payload, max_messages=MESSAGES))
    bits: Any = mine.result
    counts = np.asarray(bits, dtype=np.int64).reshape(rows, edges).sum(axis=1)
    return np.asarray(counts, dtype=np.int64)


class Comparer:
    """The comparer's side of one block: its program, fed the analyst's messages."""

    def __init__(self, share: Ring, triples: Ring) -> None:
        self._exchange = Exchange(sign_program(1, share, triples))
        self._sent = 0

    def answer(self, payload: bytes) -> tuple[bytes, bool]:
        """The reply to the analyst's messages, and whether this block is finished."""
        messages = unpack_messages(payload, max_messages=MESSAGES)
        out = [] if self._sent else self._exchange.start()
        out += self._exchange.feed(messages)
        self._sent += len(out)
        if self._sent > MESSAGES:  # pragma: no cover - the program sends exactly MESSAGES
            raise ValidationError("the comparison sent more messages than it has")
        return pack_messages(out), self._sent == MESSAGES
