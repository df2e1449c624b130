"""Old home of the score query model, kept for ``connectors`` until its imports move.

The model is in :mod:`trusted_space.queries.score` (beside the aggregate and train queries); new
code imports it from there. This module only re-exports what ``connectors`` imports.
"""

from __future__ import annotations

from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES
from trusted_space.queries.score import LINKS, QUERY_VERSION, Link, Model, ScoreQuery, ScoreResult

__all__ = [
    "ID_KINDS",
    "LINKS",
    "MISSING_RULES",
    "MODES",
    "QUERY_VERSION",
    "Link",
    "Model",
    "ScoreQuery",
    "ScoreResult",
]
