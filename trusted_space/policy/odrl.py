"""ODRL JSON-LD, compacted as DSP 2025-1 carries it: :func:`to_odrl` and :func:`from_odrl`.

Parsing is strict: an unknown member, operand or operator is a :class:`ValidationError` naming
the JSON path, never ignored (an ignored constraint is a permission nobody granted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from trusted_space.errors import ValidationError
from trusted_space.jsonpath import check_array, check_mapping, check_text, path_error
from trusted_space.policy.model import Constraint, Duty, Policy, Rule, check_duty, check_rule
from trusted_space.policy.vocabulary import (
    DUTY_ACTIONS,
    LEFT_OPERANDS,
    ODRL_PROFILE,
    XSD_DECIMAL,
    XSD_INTEGER,
    RightOperand,
    check_constraint,
)

__all__ = ["from_odrl", "to_odrl"]


def _right_to_json(value: RightOperand) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, int):
        # DSP's RightOperand is a string, object or array: integers travel as typed literals.
        return {"@value": str(value), "@type": "xsd:integer"}
    return value


def _constraint_to_json(c: Constraint) -> dict[str, Any]:
    return {
        "leftOperand": c.left_operand,
        "operator": c.operator,
        "rightOperand": _right_to_json(c.right_operand),
    }


def _duty_to_json(d: Duty) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if d.uid is not None:
        out["@id"] = d.uid
    out["action"] = d.action
    if d.constraints:
        out["constraint"] = [_constraint_to_json(c) for c in d.constraints]
    return out


def _rule_to_json(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.uid is not None:
        out["@id"] = r.uid
    out["action"] = r.action
    if r.constraints:
        out["constraint"] = [_constraint_to_json(c) for c in r.constraints]
    if r.duties:
        out["duty"] = [_duty_to_json(d) for d in r.duties]
    return out


def to_odrl(policy: Policy, *, in_dataset: bool = False) -> dict[str, Any]:
    """Export a policy as a compacted ODRL object for DSP 2025-1 messages.

    Args:
        policy: the policy.
        in_dataset: ``True`` for an ``Offer`` inside a catalog ``Dataset``'s ``hasPolicy``, where
            DSP forbids ``target`` (the dataset is the target); pass the dataset id back to
            :func:`from_odrl` as ``target``. Ignored for agreements, which always name it.

    Returns:
        ``{"@id", "@type": "Offer" | "Agreement", "profile", "target", "assigner", ...,
        "permission": [...], "prohibition": [...], "obligation": [...]}`` without ``@context``
        (the enclosing DSP message carries it).
    """
    out: dict[str, Any] = {"@id": policy.uid, "@type": policy.kind, "profile": ODRL_PROFILE}
    if policy.kind == "Agreement" or not in_dataset:
        out["target"] = policy.target
    out["assigner"] = policy.assigner
    if policy.assignee is not None:
        out["assignee"] = policy.assignee
    if policy.timestamp is not None:
        out["timestamp"] = policy.timestamp
    if policy.permissions:
        out["permission"] = [_rule_to_json(r) for r in policy.permissions]
    if policy.prohibitions:
        out["prohibition"] = [_rule_to_json(r) for r in policy.prohibitions]
    if policy.obligations:
        out["obligation"] = [_duty_to_json(d) for d in policy.obligations]
    return out


def _members(doc: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in doc:
        if key not in known:
            raise path_error(f"{path}.{key}", f"unknown member; allowed: {sorted(known)}")


def _optional(doc: Mapping[str, Any], key: str, path: str) -> str | None:
    if key not in doc:
        return None
    return check_text(doc[key], f"{path}.{key}")


def _required(doc: Mapping[str, Any], key: str, path: str) -> str:
    value = _optional(doc, key, path)
    if value is None:
        raise path_error(f"{path}.{key}", "missing")
    return value


def _array(doc: Mapping[str, Any], key: str, path: str) -> list[Any]:
    return check_array(doc.get(key, []), f"{path}.{key}")


def _right_from_json(value: Any, path: str, left: str) -> object:
    if isinstance(value, bool | int | float) or value is None:
        raise path_error(
            path,
            f"{value!r}: DSP 2025-1 right operands are strings, objects or arrays; write an "
            'integer as {"@value": "5", "@type": "xsd:integer"}',
        )
    spec = LEFT_OPERANDS.get(left)
    if isinstance(value, str) and spec is not None and spec.value == "int":
        if not re.fullmatch(r"\d+", value):
            raise path_error(path, f"{left} needs a positive integer, got {value!r}")
        return int(value)
    if isinstance(value, Mapping):
        _members(value, path, ("@value", "@type"))
        literal, kind = value.get("@value"), value.get("@type")
        if kind in XSD_INTEGER and isinstance(literal, str) and re.fullmatch(r"\d+", literal):
            return int(literal)
        if kind in XSD_DECIMAL and isinstance(literal, str):
            return literal
        if kind in ("xsd:dateTime", "xsd:duration", "xsd:string") and isinstance(literal, str):
            return literal
        raise path_error(path, f"unsupported typed literal {dict(value)!r}")
    return value


def _constraint_from_json(value: Any, path: str, *, where: str, duty: bool = False) -> Constraint:
    doc = check_mapping(value, path)
    if any(k in doc for k in ("and", "or", "xone", "andSequence")):
        raise path_error(path, "logical constraints (and/or/xone/andSequence) are not supported")
    _members(doc, path, ("leftOperand", "operator", "rightOperand", "@type"))
    if "@type" in doc and doc["@type"] not in ("Constraint", "odrl:Constraint"):
        raise path_error(f"{path}.@type", f"expected 'Constraint', got {doc['@type']!r}")
    left = _required(doc, "leftOperand", path)
    operator = _required(doc, "operator", path)
    if "rightOperand" not in doc:
        raise path_error(f"{path}.rightOperand", "missing")
    if not duty and left not in LEFT_OPERANDS:
        raise path_error(
            f"{path}.leftOperand", f"unknown left operand {left!r}; known: {sorted(LEFT_OPERANDS)}"
        )
    right = _right_from_json(doc["rightOperand"], f"{path}.rightOperand", left)
    checked = check_constraint(left, operator, right, path, where=where, duty=duty)
    return Constraint(left, operator, checked)


def _duty_from_json(value: Any, path: str) -> Duty:
    doc = check_mapping(value, path)
    _members(doc, path, ("@id", "@type", "action", "constraint"))
    action = _required(doc, "action", path)
    if action not in DUTY_ACTIONS:
        raise path_error(f"{path}.action", f"unknown duty {action!r}; known: {list(DUTY_ACTIONS)}")
    constraints = tuple(
        _constraint_from_json(c, f"{path}.constraint[{j}]", where="duty", duty=True)
        for j, c in enumerate(_array(doc, "constraint", path))
    )
    check_duty(action, constraints, path)
    return Duty(action, constraints, _optional(doc, "@id", path))


def _rule_from_json(value: Any, path: str, where: str) -> Rule:
    doc = check_mapping(value, path)
    _members(doc, path, ("@id", "@type", "action", "constraint", "duty"))
    action = _required(doc, "action", path)
    if action != "use":
        raise path_error(f"{path}.action", f"only action 'use' is supported, not {action!r}")
    constraints = tuple(
        _constraint_from_json(c, f"{path}.constraint[{j}]", where=where)
        for j, c in enumerate(_array(doc, "constraint", path))
    )
    duties = tuple(
        _duty_from_json(d, f"{path}.duty[{k}]") for k, d in enumerate(_array(doc, "duty", path))
    )
    rule = Rule(constraints, duties, _optional(doc, "@id", path))
    check_rule(rule, path, where)
    return rule


def from_odrl(doc: Mapping[str, Any], *, target: str | None = None) -> Policy:
    """Parse a compacted ODRL ``Offer`` or ``Agreement`` strictly.

    Args:
        doc: the policy object (as found in ``hasPolicy``, ``offer`` or ``agreement``).
        target: the dataset id, for an offer taken from a ``Dataset`` (which has no ``target``).
            When both are present they must agree.

    Raises:
        ValidationError: anything unknown or malformed; the message starts with the JSON path,
            e.g. ``$.permission[0].constraint[1].operator: unknown operator 'like'``.
    """
    root = "$"
    doc = check_mapping(doc, root)
    _members(
        doc,
        root,
        (
            "@context",
            "@id",
            "@type",
            "profile",
            "target",
            "assigner",
            "assignee",
            "timestamp",
            "permission",
            "prohibition",
            "obligation",
        ),
    )
    kind = doc.get("@type")
    if kind not in ("Offer", "Agreement"):
        raise path_error(f"{root}.@type", f"expected 'Offer' or 'Agreement', got {kind!r}")
    if "profile" in doc:
        profiles = doc["profile"] if isinstance(doc["profile"], list) else [doc["profile"]]
        if profiles != [ODRL_PROFILE]:
            raise path_error(f"{root}.profile", f"unsupported profile {doc['profile']!r}")
    uid = _required(doc, "@id", root)
    found = _required(doc, "target", root) if target is None else _optional(doc, "target", root)
    if found is not None and target is not None and found != target:
        raise path_error(f"{root}.target", f"{found!r} is not the dataset {target!r}")
    assigner = _required(doc, "assigner", root)
    assignee = (
        _required(doc, "assignee", root)
        if kind == "Agreement"
        else _optional(doc, "assignee", root)
    )
    timestamp = _optional(doc, "timestamp", root)
    permissions = tuple(
        _rule_from_json(r, f"{root}.permission[{i}]", "permission")
        for i, r in enumerate(_array(doc, "permission", root))
    )
    prohibitions = tuple(
        _rule_from_json(r, f"{root}.prohibition[{i}]", "prohibition")
        for i, r in enumerate(_array(doc, "prohibition", root))
    )
    obligations = tuple(
        _duty_from_json(d, f"{root}.obligation[{i}]")
        for i, d in enumerate(_array(doc, "obligation", root))
    )
    if not permissions and not prohibitions:
        raise path_error(
            f"{root}.permission", "a policy needs at least one permission or prohibition"
        )
    try:
        return Policy(
            uid=uid,
            target=found or target or "",
            assigner=assigner,
            permissions=permissions,
            prohibitions=prohibitions,
            obligations=obligations,
            kind=kind,
            assignee=assignee,
            timestamp=timestamp,
        )
    except ValidationError as exc:
        raise path_error(root, str(exc)) from exc
