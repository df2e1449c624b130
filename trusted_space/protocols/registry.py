"""Joint-score protocols by name: ``"paillier"``, ``"ckks"``, ``"additive"``.

STYLE: backends are registered by name. A query names its protocol; the provider side of every
registered protocol is served by the same ``score.*`` operations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from trusted_space.errors import ValidationError
from trusted_space.protocols.base import ScoreProtocol
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore

__all__ = ["SCORE_PROTOCOLS", "get_score_protocol"]

SCORE_PROTOCOLS: Final[Mapping[str, Callable[[], ScoreProtocol]]] = {
    "paillier": PaillierScore,
    "ckks": CkksScore,
    "additive": AdditiveScore,
}
"""Factories of the default protocol objects, by name."""


def get_score_protocol(name: str) -> ScoreProtocol:
    """A fresh protocol object for ``name``.

    Raises:
        ValidationError: no protocol of that name.
    """
    factory = SCORE_PROTOCOLS.get(name)
    if factory is None:
        raise ValidationError(f"unknown score protocol {name!r}; known: {sorted(SCORE_PROTOCOLS)}")
    return factory()
