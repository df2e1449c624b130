"""The policy vocabulary: operands, operators, query kinds, tiers, and the constraint checks.

What a constraint may say (``LEFT_OPERANDS``: which operators and right operands each operand
takes) is data here, so the parser, the evaluator and ``docs/policies.md`` read one table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, get_args

from trusted_space.jsonpath import path_error

__all__ = [
    "COMPUTATIONS",
    "COUNT_NAMESPACE",
    "DUTY_ACTIONS",
    "LEFT_OPERANDS",
    "MODEL_MODES",
    "MODEL_RULES",
    "RELEASE_KINDS",
    "ODRL_PROFILE",
    "OPERATORS",
    "OUTPUT_KINDS",
    "PROTOCOLS",
    "QUERY_KINDS",
    "TIERS",
    "ENTITY_NAMESPACE",
    "XSD_DECIMAL",
    "XSD_INTEGER",
    "ProtocolName",
    "account_key",
    "check_constraint",
    "duration_seconds",
]

ODRL_PROFILE: Final = "urn:trusted-space:odrl-profile:1"
"""Profile IRI exported with every policy: our left operands are defined by this profile."""

COUNT_NAMESPACE: Final = "policy.count"
"""Store counter namespace for ``count`` (key: :func:`account_key` of member, dataset, offer)."""
ENTITY_NAMESPACE: Final = "policy.entity"
"""Store counter namespace for ``entityCount`` (key: the account, the entity and the period)."""


def account_key(assignee: str, dataset: str | None, offer: str | None) -> str:
    """The key a member's uses of a dataset under one offer are counted by.

    Why not the agreement: a member that renegotiates gets a new agreement id, and a count kept
    per agreement would start again from zero. Every agreement granted from the same offer to
    the same member on the same dataset shares this key, so no renegotiation resets ``count``.
    """
    return json.dumps([dataset, offer, assignee], separators=(",", ":"))


OPERATORS: Final = ("eq", "neq", "isAnyOf", "isNoneOf", "isAllOf", "lt", "lteq", "gt", "gteq")
QUERY_KINDS: Final = ("score", "aggregate", "train", "transfer")
"""Values of ``computation``: the three joint computations, plus ``transfer`` (raw-row pull)."""
COMPUTATIONS: Final = ("score", "aggregate", "train")
ProtocolName = Literal["paillier", "ckks", "additive"]
"""A joint-computation protocol by name (the wire models type their ``protocol`` field with it)."""
PROTOCOLS: Final[tuple[ProtocolName, ...]] = get_args(ProtocolName)
"""The protocol names, in this order: the one list the queries, the policy operand ``protocol``,
the compute headers, the CLI and the registry of score protocols
(:data:`trusted_space.protocols.registry.SCORE_PROTOCOLS`) all follow."""
OUTPUT_KINDS: Final = ("score", "aggregate", "raw")
TIERS: Final = ("unconditional", "conditional", "zone")
MODEL_MODES: Final = ("analyst-held", "party-held", "trained", "approved")
"""Values of ``model``: who chose the weights a score applies to the provider's columns.

A request's model is ``analyst-held`` (encrypted or shared weights the provider cannot see),
``trained`` (party-held weights from a joint training this provider took part in) or
``approved`` (a party-held model part the analyst submitted and the provider's staff approved);
the right operand ``party-held`` matches both ``trained`` and ``approved``."""
MODEL_RULES: Final = ("modelMinColumns", "modelMaxWeight", "modelMaxShare")
"""Approval rules on party-held weights, checked by the provider on the weights it holds."""
RELEASE_KINDS: Final = ("logit", "band")
"""Values of ``release``: what of a score leaves to the analyst.

``logit`` is the exact total logit (every protocol); ``band`` is only the band among ``k`` the
logit falls in, computed inside the protocol so that the logit is never in clear at the analyst
(the ``additive`` protocol only: :mod:`trusted_space.protocols.score.band`)."""
DUTY_ACTIONS: Final = ("log", "notify", "delete")

_SET_OPS: Final = ("eq", "neq", "isAnyOf", "isNoneOf")
_TIME_OPS: Final = ("lt", "lteq", "gt", "gteq")

_DURATION_RE: Final = re.compile(
    r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
)
XSD_INTEGER: Final = ("xsd:integer", "http://www.w3.org/2001/XMLSchema#integer")
XSD_DECIMAL: Final = ("xsd:decimal", "http://www.w3.org/2001/XMLSchema#decimal")
_DECIMAL_RE: Final = re.compile(r"^\d+(\.\d+)?$")
_DURATION_UNITS: Final = {"Y": 365 * 86400, "W": 7 * 86400, "D": 86400}
_TIME_UNITS: Final = {"H": 3600, "M": 60, "S": 1}


def duration_seconds(value: str) -> int:
    """Whole seconds of an ISO 8601 duration (a year is 365 days, a month 30).

    Raises:
        ValueError: not a duration this vocabulary accepts, or shorter than one second.
    """
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not an ISO 8601 duration")
    date, _, time = value[1:].partition("T")
    total = 0.0
    for part, units in ((date, {**_DURATION_UNITS, "M": 30 * 86400}), (time, _TIME_UNITS)):
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)([A-Z])", part):
            total += float(number) * units[unit]
    if total < 1:
        raise ValueError(f"{value!r} is shorter than one second")
    return int(total)


@dataclass(frozen=True)
class _OperandSpec:
    operators: tuple[str, ...]
    value: Literal["string", "enum", "datetime", "int", "decimal", "duration", "required"]
    values: tuple[str, ...] = ()
    in_prohibition: bool = True
    unique: bool = False


LEFT_OPERANDS: Final[Mapping[str, _OperandSpec]] = {
    "assignee": _OperandSpec((*_SET_OPS,), "string"),
    "role": _OperandSpec((*_SET_OPS, "isAllOf"), "string"),
    "purpose": _OperandSpec((*_SET_OPS,), "string"),
    "dateTime": _OperandSpec(_TIME_OPS, "datetime"),
    "count": _OperandSpec(("lt", "lteq"), "int", in_prohibition=False, unique=True),
    "computation": _OperandSpec((*_SET_OPS,), "enum", QUERY_KINDS),
    "protocol": _OperandSpec((*_SET_OPS,), "enum", PROTOCOLS),
    "output": _OperandSpec((*_SET_OPS,), "enum", OUTPUT_KINDS),
    "minCohort": _OperandSpec(("gt", "gteq"), "int", in_prohibition=False, unique=True),
    "consent": _OperandSpec(("eq",), "required", in_prohibition=False, unique=True),
    "retention": _OperandSpec(("lteq",), "duration", in_prohibition=False, unique=True),
    "epsilon": _OperandSpec(("lteq",), "decimal", in_prohibition=False, unique=True),
    "epsilonTotal": _OperandSpec(("lteq",), "decimal", in_prohibition=False, unique=True),
    "entityCount": _OperandSpec(("lteq",), "int", in_prohibition=False, unique=True),
    "entityPeriod": _OperandSpec(("eq",), "duration", in_prohibition=False, unique=True),
    "model": _OperandSpec((*_SET_OPS,), "enum", MODEL_MODES),
    "modelMinColumns": _OperandSpec(("gteq",), "int", in_prohibition=False, unique=True),
    "modelMaxWeight": _OperandSpec(("lteq",), "decimal", in_prohibition=False, unique=True),
    "modelMaxShare": _OperandSpec(("lteq",), "decimal", in_prohibition=False, unique=True),
    "release": _OperandSpec((*_SET_OPS,), "enum", RELEASE_KINDS),
    "releaseBands": _OperandSpec(("lteq",), "int", in_prohibition=False, unique=True),
}
"""Left operands understood in permissions and prohibitions, with their allowed operators."""

RightOperand = str | int | tuple[str, ...]


def _parse_datetime(value: str, path: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise path_error(path, f"{value!r} is not an ISO 8601 date-time") from exc
    if parsed.tzinfo is None:
        raise path_error(path, f"{value!r} has no time zone (add 'Z' or an offset)")
    return parsed


def check_constraint(
    left: str, operator: str, right: object, path: str, *, where: str, duty: bool = False
) -> RightOperand:
    """Validate one constraint and return its right operand in model form (tuple for lists)."""
    if duty:
        if left != "deleteAfter":
            raise path_error(
                f"{path}.leftOperand", f"unknown duty constraint {left!r}; use deleteAfter"
            )
        if operator != "eq":
            raise path_error(
                f"{path}.operator", f"deleteAfter takes operator 'eq', not {operator!r}"
            )
        if not isinstance(right, str) or not _DURATION_RE.match(right):
            raise path_error(
                f"{path}.rightOperand", f"{right!r} is not an ISO 8601 duration (P30D)"
            )
        return right
    spec = LEFT_OPERANDS.get(left)
    if spec is None:
        raise path_error(
            f"{path}.leftOperand", f"unknown left operand {left!r}; known: {sorted(LEFT_OPERANDS)}"
        )
    if operator not in OPERATORS:
        raise path_error(
            f"{path}.operator", f"unknown operator {operator!r}; known: {list(OPERATORS)}"
        )
    if operator not in spec.operators:
        raise path_error(
            f"{path}.operator",
            f"operator {operator!r} makes no sense for {left!r}; use one of {list(spec.operators)}",
        )
    if where == "prohibition" and not spec.in_prohibition:
        raise path_error(f"{path}.leftOperand", f"{left!r} is only meaningful in a permission")
    rpath = f"{path}.rightOperand"
    if spec.value in ("string", "enum"):
        if operator in ("eq", "neq"):
            if not isinstance(right, str) or not right:
                raise path_error(
                    rpath, f"{left} {operator} needs a non-empty string, got {right!r}"
                )
            items: tuple[str, ...] = (right,)
            result: RightOperand = right
        else:
            if not isinstance(right, list | tuple) or not right:
                raise path_error(rpath, f"{left} {operator} needs a non-empty list, got {right!r}")
            if not all(isinstance(v, str) and v for v in right):
                raise path_error(rpath, f"{left} {operator} needs non-empty strings, got {right!r}")
            if len(set(right)) != len(right):
                raise path_error(rpath, f"duplicate values in {list(right)!r}")
            items = tuple(right)
            result = items
        if spec.value == "enum":
            bad = [v for v in items if v not in spec.values]
            if bad:
                raise path_error(
                    rpath, f"unknown {left} value(s) {bad}; known: {list(spec.values)}"
                )
        return result
    if spec.value == "datetime":
        if not isinstance(right, str):
            raise path_error(rpath, f"dateTime needs an ISO 8601 string, got {right!r}")
        _parse_datetime(right, rpath)
        return right
    if spec.value == "int":
        if isinstance(right, bool) or not isinstance(right, int) or right < 1:
            raise path_error(rpath, f"{left} needs a positive integer, got {right!r}")
        return right
    if spec.value == "decimal":
        if not isinstance(right, str) or not _DECIMAL_RE.match(right) or float(right) <= 0:
            raise path_error(rpath, f"{left} needs a positive decimal ('0.5'), got {right!r}")
        if left == "modelMaxShare" and float(right) > 1:
            raise path_error(
                rpath, f"modelMaxShare is a share of variance in (0, 1], got {right!r}"
            )
        return right
    if spec.value == "duration":
        if not isinstance(right, str) or not _DURATION_RE.match(right):
            raise path_error(rpath, f"{right!r} is not an ISO 8601 duration (e.g. 'P30D')")
        if left == "entityPeriod":
            try:
                duration_seconds(right)
            except ValueError as exc:
                raise path_error(rpath, str(exc)) from exc
        return right
    if right != "required":
        raise path_error(rpath, f"consent eq takes 'required', got {right!r}")
    return right
