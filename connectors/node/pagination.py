"""Pages of the staff API's lists: ``?limit=&cursor=``, and a ``next`` link while more remain.

Every list route of ``/management`` (and the operator's staff list of members) answers at most
``limit`` items (default :data:`DEFAULT_LIMIT`, at most :data:`MAX_LIMIT`), still as a JSON
array, so a caller that reads one page reads what it read before. When more remain, the
response has a ``Link: <...>; rel="next"`` header (RFC 8288) with the same ``limit`` and a
``cursor``; :class:`connectors.client.http.AdminClient` and the console follow it, so a whole
list comes back to them however long it is.

Why a cursor and not an offset: a list is ordered by a key that never changes for an item
(its creation time and id, or its id), and the cursor is the last key sent. The next page starts
after that key, so an item added while a client pages is neither sent twice nor makes another
one skipped (an offset would shift under an insert). The cursor is opaque (base64url of a small
JSON document naming the list it belongs to); a malformed one, or one of another list, is a
``400`` problem naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar
from urllib.parse import urlencode

from fastapi import Depends, Query, Request, Response

from trusted_space.errors import ValidationError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "CursorQuery",
    "LimitQuery",
    "Pager",
    "PagerDep",
    "decode_cursor",
    "encode_cursor",
    "page",
    "pager",
]

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000

LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description="Items per page (a `next` link gives the rest).")
]
CursorQuery = Annotated[
    str | None,
    Query(max_length=1024, description="Where to go on: the `cursor` of the `next` link."),
]

Key = tuple[str | int, ...]
T = TypeVar("T")


def encode_cursor(path: str, key: Key) -> str:
    """The opaque cursor after ``key`` in the list at ``path``."""
    raw = json.dumps({"l": path, "k": list(key)}, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(path: str, cursor: str) -> Key:
    """The key a cursor of the list at ``path`` stands for.

    Raises:
        ValidationError: not a cursor, or a cursor of another list.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError("cursor: not a cursor of this list; use a `next` link") from exc
    key = doc.get("k") if isinstance(doc, dict) else None
    if (
        doc.get("l") != path
        or not isinstance(key, list)
        or not all(isinstance(k, str | int) and not isinstance(k, bool) for k in key)
    ):
        raise ValidationError("cursor: not a cursor of this list; use a `next` link")
    return tuple(key)


def page(
    request: Request,
    response: Response,
    items: Sequence[T],
    key: Callable[[T], Key],
    *,
    limit: int,
    cursor: str | None,
) -> list[T]:
    """The page of ``items`` after ``cursor`` (ordered by ``key``); sets the ``next`` link.

    Raises:
        ValidationError: a bad cursor.
    """
    path = request.url.path
    ordered = sorted(items, key=key)
    if cursor is not None:
        after = decode_cursor(path, cursor)
        try:
            ordered = [item for item in ordered if key(item) > after]
        except TypeError as exc:  # a key of another shape than this list's
            raise ValidationError("cursor: not a cursor of this list; use a `next` link") from exc
    chosen = ordered[:limit]
    if len(ordered) > limit:
        params = {k: v for k, v in request.query_params.items() if k != "cursor"}
        params.update(limit=str(limit), cursor=encode_cursor(path, key(chosen[-1])))
        response.headers["Link"] = f'<{path}?{urlencode(params)}>; rel="next"'
    return chosen


@dataclass(frozen=True)
class Pager:
    """A list route's paging: its request, response, ``limit`` and ``cursor`` (a dependency)."""

    request: Request
    response: Response
    limit: int
    cursor: str | None

    def __call__(self, items: Sequence[T], key: Callable[[T], Key]) -> list[T]:
        """The page of ``items`` (ordered by ``key``); see :func:`page`."""
        return page(self.request, self.response, items, key, limit=self.limit, cursor=self.cursor)


def pager(
    request: Request,
    response: Response,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Pager:
    """The :class:`Pager` of a list route (its ``limit`` and ``cursor`` query parameters)."""
    return Pager(request, response, limit, cursor)


PagerDep = Annotated[Pager, Depends(pager)]
"""Declare ``pages: PagerDep`` and return ``pages(items, key)``."""
