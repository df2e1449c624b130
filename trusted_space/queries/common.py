"""What the three query models share: entity id checks and the vocabulary.

A query crosses institutions, so every query file (score, aggregate, train) is parsed strictly:
an unknown member, a non-finite number or a malformed id is refused with a
:class:`~trusted_space.errors.ValidationError` naming its JSON path, never silently dropped. The
JSON checks are :mod:`trusted_space.jsonpath`'s; the entity id checks here are the one copy the
three models use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from trusted_space.errors import ValidationError
from trusted_space.jsonpath import path_error
from trusted_space.uscc import all_canonical, validate_uscc

__all__ = [
    "ID_KINDS",
    "MISSING_RULES",
    "MODES",
    "CheckedEntities",
    "check_entities",
    "check_entity",
]

MODES: Final = ("analyst-held", "party-held")
ID_KINDS: Final = ("uscc", "opaque")
MISSING_RULES: Final = ("fail", "impute")
_MAX_ENTITY_ID: Final = 128


def check_entity(value: object, id_kind: str, path: str) -> str:
    if id_kind == "uscc":
        try:
            return validate_uscc(value)
        except ValidationError as exc:
            raise path_error(path, str(exc)) from exc
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_ENTITY_ID
        or not value.isprintable()
        or "\n" in value
        or value != value.strip()
    ):
        raise path_error(
            path, f"{value!r} is not an opaque id (1-{_MAX_ENTITY_ID} printable chars)"
        )
    return value


def _all_clean(values: tuple[object, ...], id_kind: str) -> bool:
    """Whether every value passes :func:`check_entity` unchanged (checked over all at once)."""
    if not values:
        return True
    if id_kind == "uscc":
        return all_canonical(values)
    if set(map(type, values)) != {str}:
        return False
    texts: tuple[str, ...] = values  # type: ignore[assignment]
    joined = "".join(texts)  # printable: no newline; no surrounding spaces: strip is identity
    return (
        joined.isprintable()
        and min(map(len, texts)) >= 1
        and max(map(len, texts)) <= _MAX_ENTITY_ID
        and sum(map(len, map(str.strip, texts))) == len(joined)
    )


class CheckedEntities(tuple[str, ...]):
    """Ids :func:`check_entities` passed for ``id_kind``: checked once per query.

    A copy of the query made later (``dataclasses.replace``) keeps them and does not check a
    million ids again.
    """

    id_kind: str


def check_entities(entities: Sequence[str], id_kind: str, path: str) -> tuple[str, ...]:
    if isinstance(entities, CheckedEntities) and entities.id_kind == id_kind:
        return entities
    out = tuple(entities)
    if not _all_clean(out, id_kind):  # one by one: names the first bad id, normalises USCCs
        out = tuple(check_entity(e, id_kind, f"{path}[{i}]") for i, e in enumerate(out))
    if len(set(out)) != len(out):
        seen: set[str] = set()
        for i, e in enumerate(out):
            if e in seen:
                raise path_error(f"{path}[{i}]", f"entity {e!r} appears twice")
            seen.add(e)
    checked = CheckedEntities(out)
    checked.id_kind = id_kind
    return checked
