"""Strict JSON checks that name the JSON path of what they refuse.

Why: every document that crosses institutions (a query, a catalog entry, an ODRL policy) is parsed
strictly — an unknown member, a non-finite number or an empty name is refused with a
:class:`~trusted_space.errors.ValidationError` reading ``<path>: <what is wrong>``
(``$.weights.tax-bureau.tax_paid: expected a number, got 'x'``), never silently dropped or
coerced. These checks are the one copy the query models, the catalog and the policy parser use,
so the same mistake reads the same wherever it is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trusted_space.errors import ValidationError

__all__ = [
    "check_array",
    "check_choice",
    "check_mapping",
    "check_number",
    "check_object",
    "check_text",
    "path_error",
]


def path_error(path: str, message: str) -> ValidationError:
    """The error for ``path``: ``"<path>: <message>"``."""
    return ValidationError(f"{path}: {message}")


def check_mapping(value: object, path: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object (members unchecked; see :func:`check_object`)."""
    if not isinstance(value, Mapping):
        raise path_error(path, f"expected an object, got {type(value).__name__}")
    return value


def check_object(
    value: object, path: str, required: set[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of the JSON object ``value``: every ``required`` member and no unknown one."""
    doc = check_mapping(value, path)
    keys = set(doc)
    if missing := sorted(required - keys):
        raise path_error(path, f"missing {', '.join(missing)}")
    if unknown := sorted(keys - required - set(optional)):
        raise path_error(path, f"unknown member {', '.join(map(str, unknown))}")
    return dict(doc)


def check_array(value: object, path: str) -> list[Any]:
    """``value`` if it is a JSON array."""
    if not isinstance(value, list):
        raise path_error(path, f"expected an array, got {type(value).__name__}")
    return value


def check_number(value: object, path: str) -> float:
    """A finite JSON number (not a boolean) as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise path_error(path, f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise path_error(path, f"expected a finite number, got {value!r}")
    return number


def check_text(
    value: object,
    path: str,
    *,
    allow_empty: bool = False,
    allow_blank: bool = True,
    max_length: int | None = None,
) -> str:
    """``value`` if it is a non-empty string.

    Args:
        value: the JSON value.
        path: its JSON path.
        allow_empty: any string passes, ``""`` included.
        allow_blank: a string of whitespace only passes (otherwise it counts as empty).
        max_length: the longest string that passes.
    """
    if (
        not isinstance(value, str)
        or (not allow_empty and not (value if allow_blank else value.strip()))
        or (max_length is not None and len(value) > max_length)
    ):
        raise path_error(path, f"expected a non-empty string, got {value!r}")
    return value


def check_choice(value: object, choices: Sequence[str], path: str) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise path_error(path, f"{value!r} is not one of {list(choices)}")
    return str(value)
