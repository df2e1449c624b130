"""The vectorised entity-list checks accept and refuse exactly what the one-by-one checks do.

A query's entity list (a million ids) is checked at the analyst all at once (``check_entities``,
:func:`trusted_space.uscc.all_canonical`) and on the wire at each provider
(``decode_ids``); any list the fast checks do not pass is checked id by id, so results and error
messages must be those of the id-by-id checks for every input.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests._seeding import random_for
from trusted_space.errors import ValidationError
from trusted_space.protocols._common import decode_ids, encode_ids
from trusted_space.queries.common import check_entities, check_entity
from trusted_space.uscc import all_canonical, generate_uscc, validate_uscc

_CODES_RNG = random_for("tests/trusted_space/test_entity_checks.py::CODES")
CODES = [generate_uscc(_CODES_RNG) for _ in range(40)]


def one_by_one(values: list[Any], kind: str) -> tuple[str, ...] | str:
    try:
        out = tuple(check_entity(v, kind, f"$.e[{i}]") for i, v in enumerate(values))
    except ValidationError as exc:
        return str(exc)
    seen: set[str] = set()
    for i, v in enumerate(out):
        if v in seen:
            return f"$.e[{i}]: entity {v!r} appears twice"
        seen.add(v)
    return out


def at_once(values: list[Any], kind: str) -> tuple[str, ...] | str:
    try:
        return check_entities(values, kind, "$.e")
    except ValidationError as exc:
        return str(exc)


def mutate(code: str, how: int, rng: random.Random) -> Any:
    position = rng.randrange(18)
    return [
        code,
        code.lower(),
        f" {code}",
        code[:position] + rng.choice("0123456789ABCDEFGHJKLMNPQRTUWXYIOZSV") + code[position + 1 :],
        code[:17],
        code + "\n",
        code.replace(code[0], "\uff19", 1),  # a full-width digit: NFKC makes it canonical
        "",
        "x" * 129,
        "a b",
        "e-1",
        3,
    ][how]


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 11)), min_size=1, max_size=8),
    kind=st.sampled_from(["uscc", "opaque"]),
    seed=st.integers(0, 2**16),
    clean=st.booleans(),
)
def test_checked_at_once_equals_one_by_one(
    picks: list[tuple[int, int]], kind: str, seed: int, clean: bool
) -> None:
    rng = random.Random(seed)
    values = [CODES[i] if clean else mutate(CODES[i], how, rng) for i, how in picks]
    assert at_once(values, kind) == one_by_one(values, kind)


@settings(max_examples=200, deadline=None)
@given(picks=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 10)), min_size=1, max_size=6))
def test_all_canonical_means_validate_returns_the_code_itself(
    picks: list[tuple[int, int]],
) -> None:
    rng = random.Random(len(picks))
    codes = [mutate(CODES[i], how, rng) for i, how in picks]

    def canonical(code: Any) -> bool:
        try:
            return bool(validate_uscc(code) == code)
        except ValidationError:
            return False

    assert all_canonical(codes) == all(canonical(c) for c in codes)


@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 10)), min_size=1, max_size=6),
    kind=st.sampled_from(["uscc", "opaque"]),
)
def test_ids_on_the_wire_are_checked_like_one_by_one(
    picks: list[tuple[int, int]], kind: str
) -> None:
    rng = random.Random(sum(i for i, _ in picks))
    values = [
        v for v in (mutate(CODES[i], how, rng) for i, how in picks) if isinstance(v, str)
    ] or ["e-1"]
    payload = encode_ids(values)
    count = len(payload.decode("utf-8").split("\n"))
    try:
        got: Any = decode_ids(payload, count, kind)
    except ValidationError as exc:
        got = str(exc)
    expected: Any = payload.decode("utf-8").split("\n")
    for i, e in enumerate(expected):
        try:
            if kind == "uscc":
                validate_uscc(e)
            elif not e or len(e) > 128 or not e.isprintable():
                raise ValidationError("not an opaque id")
        except ValidationError as exc:
            expected = f"payload id {i}: {exc}"
            break
    assert got == expected
