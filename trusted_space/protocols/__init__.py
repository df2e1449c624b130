"""Multi-party protocols written against a :class:`~trusted_space.transport.Transport`.

Joint scores (:mod:`.score`, one flow for every protocol registered by name in :mod:`.registry`:
``"paillier"``, ``"ckks"``, ``"additive"``), the operator's key-less aggregator and Beaver-triple
dealer (:mod:`.operator`). A provider's node gets its operations with :func:`register_provider`,
the operator's with :func:`register_operator`; an analyst runs :func:`run_score`. The message
flows, rounds and what each party learns are in ``docs/protocols.md``.

Aggregates (:mod:`.aggregate`) and joint training (:mod:`.train`, :mod:`.train_ops`,
:mod:`.train_mpc`) are packages beside the score flow; the query models all three run are in
:mod:`trusted_space.queries`.
"""

from trusted_space.protocols import base, operator, registry, score
from trusted_space.protocols.operator import register_operator
from trusted_space.protocols.registry import SCORE_PROTOCOLS, get_score_protocol
from trusted_space.protocols.score import register_provider, run_score, store_party_weights

__all__ = [
    "SCORE_PROTOCOLS",
    "base",
    "get_score_protocol",
    "operator",
    "register_operator",
    "register_provider",
    "registry",
    "run_score",
    "score",
    "store_party_weights",
]
