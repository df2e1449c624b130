"""Usage policies: an ODRL subset, its DSP JSON-LD form, and the provider's decision point.

Why this module exists: a provider publishes graded datasets with usage policies, and **its own
node** decides every request against them; it never takes a consumer's word that a policy was
checked. The most common complaint about existing connectors is the opaque refusal, so a decision
here is never a bare yes/no: it is a :class:`Decision` carrying an evaluation *trace* (which rule,
which constraint, which value was seen, what came out), the duties the consumer and the node take
on, and a one-line human reason. A refusal is a ``Decision`` with ``allowed=False``, not an
exception; exceptions are for input that cannot be processed at all (:class:`ValidationError`).

Threats addressed:

- *Loosened policies.* :func:`check_grade_floor` refuses at publish time a tier or policy looser
  than the data's security grade allows, and :func:`evaluate` re-applies the same floor to every
  request, so a policy edited in the store after publication still cannot release raw rows of a
  ``zone`` dataset.
- *Racing the use limit.* ``count`` is consumed with a store counter that has a hard limit, in
  the same transaction as the decision's ledger entry; N parallel requests past the limit cannot
  all win.
- *Denying a decision happened.* Every decision, allow or deny, is appended to the node's ledger
  with its full trace and a SHA-256 digest of it, inside the same transaction.
- *Ambiguous policies.* Parsing is strict: an unknown left operand, operator, member or a
  nonsensical operand/operator pairing is a :class:`ValidationError` naming the JSON path, never
  silently ignored (an ignored constraint is a permission nobody granted).

Model (ODRL 2.2 shaped): a :class:`Policy` has permissions and prohibitions (:class:`Rule`,
action ``use``) with :class:`Constraint` s and :class:`Duty` s, and policy-level obligations.
Semantics: a permission applies when all its constraints hold; an applicable prohibition denies;
no applicable permission denies (default deny). The operand table is in ``docs/policies.md``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from trusted_space.errors import GradeFloorError, LimitExceededError, ValidationError
from trusted_space.events import canonical_json, record_event
from trusted_space.store import Store, Transaction

__all__ = [
    "COUNT_NAMESPACE",
    "DUTY_ACTIONS",
    "LEFT_OPERANDS",
    "ODRL_PROFILE",
    "OPERATORS",
    "OUTPUT_KINDS",
    "PROTOCOLS",
    "QUERY_KINDS",
    "TIERS",
    "ConsentChecker",
    "Constraint",
    "Decision",
    "Duty",
    "DutyDue",
    "Policy",
    "Rule",
    "TraceStep",
    "UsageRequest",
    "check_grade_floor",
    "decide",
    "evaluate",
    "from_odrl",
    "to_odrl",
    "trace_digest",
]

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------

ODRL_PROFILE: Final = "urn:trusted-space:odrl-profile:1"
"""Profile IRI exported with every policy: our left operands are defined by this profile."""

COUNT_NAMESPACE: Final = "policy.count"
"""Store counter namespace for ``count`` (key: the agreement id)."""

OPERATORS: Final = ("eq", "neq", "isAnyOf", "isNoneOf", "isAllOf", "lt", "lteq", "gt", "gteq")
QUERY_KINDS: Final = ("score", "aggregate", "train", "transfer")
"""Values of ``computation``: the three joint computations, plus ``transfer`` (raw-row pull)."""
COMPUTATIONS: Final = ("score", "aggregate", "train")
PROTOCOLS: Final = ("paillier", "ckks", "additive")
OUTPUT_KINDS: Final = ("score", "aggregate", "raw")
TIERS: Final = ("unconditional", "conditional", "zone")
DUTY_ACTIONS: Final = ("log", "notify", "delete")

_SET_OPS: Final = ("eq", "neq", "isAnyOf", "isNoneOf")
_TIME_OPS: Final = ("lt", "lteq", "gt", "gteq")

_DURATION_RE: Final = re.compile(
    r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
)
_XSD_INTEGER: Final = ("xsd:integer", "http://www.w3.org/2001/XMLSchema#integer")


@dataclass(frozen=True)
class _OperandSpec:
    operators: tuple[str, ...]
    value: Literal["string", "enum", "datetime", "int", "duration", "required"]
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
}
"""Left operands understood in permissions and prohibitions, with their allowed operators."""

RightOperand = str | int | tuple[str, ...]


def _fail(path: str, message: str) -> ValidationError:
    return ValidationError(f"{path}: {message}")


def _parse_datetime(value: str, path: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _fail(path, f"{value!r} is not an ISO 8601 date-time") from exc
    if parsed.tzinfo is None:
        raise _fail(path, f"{value!r} has no time zone (add 'Z' or an offset)")
    return parsed


def _check_constraint(
    left: str, operator: str, right: object, path: str, *, where: str, duty: bool = False
) -> RightOperand:
    """Validate one constraint and return its right operand in model form (tuple for lists)."""
    if duty:
        if left != "deleteAfter":
            raise _fail(f"{path}.leftOperand", f"unknown duty constraint {left!r}; use deleteAfter")
        if operator != "eq":
            raise _fail(f"{path}.operator", f"deleteAfter takes operator 'eq', not {operator!r}")
        if not isinstance(right, str) or not _DURATION_RE.match(right):
            raise _fail(f"{path}.rightOperand", f"{right!r} is not an ISO 8601 duration (P30D)")
        return right
    spec = LEFT_OPERANDS.get(left)
    if spec is None:
        raise _fail(
            f"{path}.leftOperand", f"unknown left operand {left!r}; known: {sorted(LEFT_OPERANDS)}"
        )
    if operator not in OPERATORS:
        raise _fail(f"{path}.operator", f"unknown operator {operator!r}; known: {list(OPERATORS)}")
    if operator not in spec.operators:
        raise _fail(
            f"{path}.operator",
            f"operator {operator!r} makes no sense for {left!r}; use one of {list(spec.operators)}",
        )
    if where == "prohibition" and not spec.in_prohibition:
        raise _fail(f"{path}.leftOperand", f"{left!r} is only meaningful in a permission")
    rpath = f"{path}.rightOperand"
    if spec.value in ("string", "enum"):
        if operator in ("eq", "neq"):
            if not isinstance(right, str) or not right:
                raise _fail(rpath, f"{left} {operator} needs a non-empty string, got {right!r}")
            items: tuple[str, ...] = (right,)
            result: RightOperand = right
        else:
            if not isinstance(right, list | tuple) or not right:
                raise _fail(rpath, f"{left} {operator} needs a non-empty list, got {right!r}")
            if not all(isinstance(v, str) and v for v in right):
                raise _fail(rpath, f"{left} {operator} needs non-empty strings, got {right!r}")
            if len(set(right)) != len(right):
                raise _fail(rpath, f"duplicate values in {list(right)!r}")
            items = tuple(right)
            result = items
        if spec.value == "enum":
            bad = [v for v in items if v not in spec.values]
            if bad:
                raise _fail(rpath, f"unknown {left} value(s) {bad}; known: {list(spec.values)}")
        return result
    if spec.value == "datetime":
        if not isinstance(right, str):
            raise _fail(rpath, f"dateTime needs an ISO 8601 string, got {right!r}")
        _parse_datetime(right, rpath)
        return right
    if spec.value == "int":
        if isinstance(right, bool) or not isinstance(right, int) or right < 1:
            raise _fail(rpath, f"{left} needs a positive integer, got {right!r}")
        return right
    if spec.value == "duration":
        if not isinstance(right, str) or not _DURATION_RE.match(right):
            raise _fail(rpath, f"{right!r} is not an ISO 8601 duration (e.g. 'P30D')")
        return right
    if right != "required":
        raise _fail(rpath, f"consent eq takes 'required', got {right!r}")
    return right


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """An atomic ODRL constraint ``left_operand operator right_operand``.

    Lists are stored as tuples (a list passed in is converted), so policies are hashable and
    compare by value. ``deleteAfter`` is accepted only inside a ``delete`` duty.
    """

    left_operand: str
    operator: str
    right_operand: RightOperand

    def __post_init__(self) -> None:
        right: object = self.right_operand
        if isinstance(right, list):
            object.__setattr__(self, "right_operand", tuple(right))


@dataclass(frozen=True)
class Duty:
    """A duty: ``log`` (implicit anyway), ``notify`` (tell the provider of each use) or ``delete``.

    A ``delete`` duty carries exactly one ``deleteAfter eq <ISO 8601 duration>`` constraint.
    """

    action: str
    constraints: tuple[Constraint, ...] = ()
    uid: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraints", tuple(self.constraints))
        _check_duty(self.action, self.constraints, "Duty")


@dataclass(frozen=True)
class Rule:
    """A permission or prohibition on action ``use``, with constraints and (permissions) duties."""

    constraints: tuple[Constraint, ...] = ()
    duties: tuple[Duty, ...] = ()
    uid: str | None = None
    action: str = "use"

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraints", tuple(self.constraints))
        object.__setattr__(self, "duties", tuple(self.duties))
        if self.action != "use":
            raise _fail("Rule.action", f"only action 'use' is supported, not {self.action!r}")


@dataclass(frozen=True)
class Policy:
    """An ODRL ``Offer`` (published with a dataset) or ``Agreement`` (signed, bound to an assignee).

    Validation happens on construction, so every ``Policy`` in memory is one the engine can
    evaluate; the messages name the offending rule and constraint.
    """

    uid: str
    target: str
    assigner: str
    permissions: tuple[Rule, ...] = ()
    prohibitions: tuple[Rule, ...] = ()
    obligations: tuple[Duty, ...] = ()
    kind: Literal["Offer", "Agreement"] = "Offer"
    assignee: str | None = None
    timestamp: str | None = None

    def __post_init__(self) -> None:
        for name in ("permissions", "prohibitions", "obligations"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_policy(self)


def _check_duty(action: str, constraints: Sequence[Constraint], path: str) -> None:
    if action not in DUTY_ACTIONS:
        raise _fail(f"{path}.action", f"unknown duty {action!r}; known: {list(DUTY_ACTIONS)}")
    if action == "delete":
        if len(constraints) != 1:
            raise _fail(f"{path}.constraint", "a delete duty needs exactly one deleteAfter")
    elif constraints:
        raise _fail(f"{path}.constraint", f"a {action} duty takes no constraints")
    for j, c in enumerate(constraints):
        _check_constraint(
            c.left_operand,
            c.operator,
            c.right_operand,
            f"{path}.constraint[{j}]",
            where="duty",
            duty=True,
        )


def _check_rule(rule: Rule, path: str, where: str) -> None:
    seen: set[str] = set()
    for j, c in enumerate(rule.constraints):
        cpath = f"{path}.constraint[{j}]"
        _check_constraint(c.left_operand, c.operator, c.right_operand, cpath, where=where)
        if LEFT_OPERANDS[c.left_operand].unique:
            if c.left_operand in seen:
                raise _fail(f"{cpath}.leftOperand", f"{c.left_operand!r} appears twice in a rule")
            seen.add(c.left_operand)
    if where == "prohibition" and rule.duties:
        raise _fail(f"{path}.duty", "a prohibition has no duties (use a permission)")
    for k, d in enumerate(rule.duties):
        _check_duty(d.action, d.constraints, f"{path}.duty[{k}]")


def _check_policy(policy: Policy) -> None:
    for name in ("uid", "target", "assigner"):
        value = getattr(policy, name)
        if not isinstance(value, str) or not value:
            raise _fail(f"Policy.{name}", f"must be a non-empty string, got {value!r}")
    if policy.kind not in ("Offer", "Agreement"):
        raise _fail("Policy.kind", f"must be 'Offer' or 'Agreement', not {policy.kind!r}")
    if policy.kind == "Agreement" and not policy.assignee:
        raise _fail("Policy.assignee", "an Agreement names its assignee")
    if not policy.permissions and not policy.prohibitions:
        raise _fail("Policy", "needs at least one permission or prohibition")
    for i, r in enumerate(policy.permissions):
        _check_rule(r, f"permission[{i}]", "permission")
    for i, r in enumerate(policy.prohibitions):
        _check_rule(r, f"prohibition[{i}]", "prohibition")
    for i, d in enumerate(policy.obligations):
        _check_duty(d.action, d.constraints, f"obligation[{i}]")


# ----------------------------------------------------------------------------------------------
# ODRL JSON-LD (compacted, as DSP 2025-1 carries it)
# ----------------------------------------------------------------------------------------------


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


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {type(value).__name__}")
    return value


def _members(doc: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in doc:
        if key not in known:
            raise _fail(f"{path}.{key}", f"unknown member; allowed: {sorted(known)}")


def _optional(doc: Mapping[str, Any], key: str, path: str) -> str | None:
    if key not in doc:
        return None
    value = doc[key]
    if not isinstance(value, str) or not value:
        raise _fail(f"{path}.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _required(doc: Mapping[str, Any], key: str, path: str) -> str:
    value = _optional(doc, key, path)
    if value is None:
        raise _fail(f"{path}.{key}", "missing")
    return value


def _array(doc: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise _fail(f"{path}.{key}", f"expected an array, got {type(value).__name__}")
    return value


def _right_from_json(value: Any, path: str, left: str) -> object:
    if isinstance(value, bool | int | float) or value is None:
        raise _fail(
            path,
            f"{value!r}: DSP 2025-1 right operands are strings, objects or arrays; write an "
            'integer as {"@value": "5", "@type": "xsd:integer"}',
        )
    spec = LEFT_OPERANDS.get(left)
    if isinstance(value, str) and spec is not None and spec.value == "int":
        if not re.fullmatch(r"\d+", value):
            raise _fail(path, f"{left} needs a positive integer, got {value!r}")
        return int(value)
    if isinstance(value, Mapping):
        _members(value, path, ("@value", "@type"))
        literal, kind = value.get("@value"), value.get("@type")
        if kind in _XSD_INTEGER and isinstance(literal, str) and re.fullmatch(r"\d+", literal):
            return int(literal)
        if kind in ("xsd:dateTime", "xsd:duration", "xsd:string") and isinstance(literal, str):
            return literal
        raise _fail(path, f"unsupported typed literal {dict(value)!r}")
    return value


def _constraint_from_json(value: Any, path: str, *, where: str, duty: bool = False) -> Constraint:
    doc = _obj(value, path)
    if any(k in doc for k in ("and", "or", "xone", "andSequence")):
        raise _fail(path, "logical constraints (and/or/xone/andSequence) are not supported")
    _members(doc, path, ("leftOperand", "operator", "rightOperand", "@type"))
    if "@type" in doc and doc["@type"] not in ("Constraint", "odrl:Constraint"):
        raise _fail(f"{path}.@type", f"expected 'Constraint', got {doc['@type']!r}")
    left = _required(doc, "leftOperand", path)
    operator = _required(doc, "operator", path)
    if "rightOperand" not in doc:
        raise _fail(f"{path}.rightOperand", "missing")
    if not duty and left not in LEFT_OPERANDS:
        raise _fail(
            f"{path}.leftOperand", f"unknown left operand {left!r}; known: {sorted(LEFT_OPERANDS)}"
        )
    right = _right_from_json(doc["rightOperand"], f"{path}.rightOperand", left)
    checked = _check_constraint(left, operator, right, path, where=where, duty=duty)
    return Constraint(left, operator, checked)


def _duty_from_json(value: Any, path: str) -> Duty:
    doc = _obj(value, path)
    _members(doc, path, ("@id", "@type", "action", "constraint"))
    action = _required(doc, "action", path)
    if action not in DUTY_ACTIONS:
        raise _fail(f"{path}.action", f"unknown duty {action!r}; known: {list(DUTY_ACTIONS)}")
    constraints = tuple(
        _constraint_from_json(c, f"{path}.constraint[{j}]", where="duty", duty=True)
        for j, c in enumerate(_array(doc, "constraint", path))
    )
    _check_duty(action, constraints, path)
    return Duty(action, constraints, _optional(doc, "@id", path))


def _rule_from_json(value: Any, path: str, where: str) -> Rule:
    doc = _obj(value, path)
    _members(doc, path, ("@id", "@type", "action", "constraint", "duty"))
    action = _required(doc, "action", path)
    if action != "use":
        raise _fail(f"{path}.action", f"only action 'use' is supported, not {action!r}")
    constraints = tuple(
        _constraint_from_json(c, f"{path}.constraint[{j}]", where=where)
        for j, c in enumerate(_array(doc, "constraint", path))
    )
    duties = tuple(
        _duty_from_json(d, f"{path}.duty[{k}]") for k, d in enumerate(_array(doc, "duty", path))
    )
    rule = Rule(constraints, duties, _optional(doc, "@id", path))
    _check_rule(rule, path, where)
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
    doc = _obj(doc, root)
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
        raise _fail(f"{root}.@type", f"expected 'Offer' or 'Agreement', got {kind!r}")
    if "profile" in doc:
        profiles = doc["profile"] if isinstance(doc["profile"], list) else [doc["profile"]]
        if profiles != [ODRL_PROFILE]:
            raise _fail(f"{root}.profile", f"unsupported profile {doc['profile']!r}")
    uid = _required(doc, "@id", root)
    found = _required(doc, "target", root) if target is None else _optional(doc, "target", root)
    if found is not None and target is not None and found != target:
        raise _fail(f"{root}.target", f"{found!r} is not the dataset {target!r}")
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
        raise _fail(f"{root}.permission", "a policy needs at least one permission or prohibition")
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
        raise _fail(root, str(exc)) from exc


# ----------------------------------------------------------------------------------------------
# Request, trace, decision
# ----------------------------------------------------------------------------------------------


class ConsentChecker(Protocol):
    """Data-subject authorisations (implemented by ``trusted_space.consent``)."""

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool: ...

    def missing_consents(
        self, entities: Sequence[str], grantee: str, purpose: str, at: datetime
    ) -> list[str]: ...


@dataclass(frozen=True)
class UsageRequest:
    """What a request asks for, as the **provider's node** established it.

    The node fills this from the verified, signed request (``assignee`` is the authenticated
    participant, ``roles`` come from its membership credential, ``at`` is the node's own receipt
    time), never from unverified claims in the body.

    Attributes:
        assignee: participant id of the requester.
        purpose: declared purpose, e.g. ``pre-loan-review``.
        query_kind: ``score``, ``aggregate``, ``train`` or ``transfer`` (raw-row pull).
        output: ``score``, ``aggregate`` or ``raw``.
        at: when the request was received (time-zone aware).
        roles: roles from the requester's credential.
        protocol: ``paillier``, ``ckks``, ``additive`` or ``None`` (transfer).
        agreement_id: the agreement the request relies on (``count`` is kept per agreement).
        cohort_size: number of entities an aggregate is computed over.
        entities: USCCs named by the request (checked against ``consent``).
    """

    assignee: str
    purpose: str
    query_kind: str
    output: str
    at: datetime
    roles: frozenset[str] = frozenset()
    protocol: str | None = None
    agreement_id: str | None = None
    cohort_size: int | None = None
    entities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", frozenset(self.roles))
        object.__setattr__(self, "entities", tuple(self.entities))
        if not self.assignee or not self.purpose:
            raise ValidationError("UsageRequest: assignee and purpose must be non-empty")
        if self.query_kind not in QUERY_KINDS:
            raise ValidationError(
                f"UsageRequest.query_kind: {self.query_kind!r} not in {list(QUERY_KINDS)}"
            )
        if self.output not in OUTPUT_KINDS:
            raise ValidationError(
                f"UsageRequest.output: {self.output!r} not in {list(OUTPUT_KINDS)}"
            )
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValidationError(
                f"UsageRequest.protocol: {self.protocol!r} not in {list(PROTOCOLS)}"
            )
        if self.at.tzinfo is None:
            raise ValidationError("UsageRequest.at must be time-zone aware")
        if self.cohort_size is not None and (
            isinstance(self.cohort_size, bool) or self.cohort_size < 0
        ):
            raise ValidationError(f"UsageRequest.cohort_size: bad value {self.cohort_size!r}")


Outcome = Literal["satisfied", "violated", "not_applicable", "partial"]


@dataclass(frozen=True)
class TraceStep:
    """One checked condition.

    Attributes:
        rule: ``permission``, ``prohibition``, ``floor`` (grade floor), ``agreement`` (binding of
            an Agreement to its assignee), ``count`` (consumption) or ``default`` (default deny).
        index: position of the rule in its list (``None`` for non-rule steps).
        rule_id: the rule's ``@id`` if it has one.
        left_operand, operator, right_operand: the constraint (JSON form of the right operand).
        seen: the value the request presented (JSON-compatible).
        outcome: ``satisfied`` (the constraint holds), ``violated``, ``not_applicable`` (e.g.
            ``minCohort`` on a score query) or ``partial`` (consent held for some entities).
        blocking: whether this step is why the request is (or would be) refused.
        message: the human sentence for this step.
        refused_entities: entities without consent (``consent`` steps only).
    """

    rule: str
    index: int | None
    rule_id: str | None
    left_operand: str
    operator: str
    right_operand: Any
    seen: Any
    outcome: Outcome
    blocking: bool
    message: str
    refused_entities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to the ledger and returned with a 403."""
        return {
            "rule": self.rule,
            "index": self.index,
            "rule_id": self.rule_id,
            "left_operand": self.left_operand,
            "operator": self.operator,
            "right_operand": self.right_operand,
            "seen": self.seen,
            "outcome": self.outcome,
            "blocking": self.blocking,
            "message": self.message,
            "refused_entities": list(self.refused_entities),
        }


@dataclass(frozen=True)
class DutyDue:
    """A duty the decision imposes on the node or the consumer.

    ``log`` (always), ``notify`` (tell ``recipient``, the provider, of the use), ``delete`` (the
    consumer deletes results ``after`` the ISO 8601 duration).
    """

    action: str
    recipient: str | None = None
    after: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form for the ledger."""
        return {"action": self.action, "recipient": self.recipient, "after": self.after}


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one request: allowed or not, and exactly why.

    Attributes:
        allowed: whether the request may proceed (for ``permitted_entities`` only when
            ``partial``).
        policy_uid: the policy evaluated.
        reason: one human sentence; for a refusal, the first blocking step.
        trace: every step evaluated, in order.
        duties: duties to fulfil when allowed (``log`` is always there).
        permission_index: which permission granted the request.
        partial: consent was missing for some entities and the caller chose ``exclude``.
        refused_entities: entities without consent.
        permitted_entities: entities the query may use (all of them unless ``partial``).
        uses: the agreement's use count after this decision, when ``count`` applied.
        trace_digest: SHA-256 hex of the canonical JSON of the trace.
        ledger_index: index of the ``policy.decision`` ledger entry.
    """

    allowed: bool
    policy_uid: str
    reason: str
    trace: tuple[TraceStep, ...]
    duties: tuple[DutyDue, ...] = ()
    permission_index: int | None = None
    partial: bool = False
    refused_entities: tuple[str, ...] = ()
    permitted_entities: tuple[str, ...] = ()
    uses: int | None = None
    trace_digest: str = ""
    ledger_index: int | None = field(default=None, compare=False)

    def trace_json(self) -> list[dict[str, Any]]:
        """The trace as JSON (what the digest covers)."""
        return [s.to_json() for s in self.trace]


def trace_digest(trace: Sequence[TraceStep]) -> str:
    """SHA-256 (hex) of the canonical JSON of a trace, as recorded in the ledger."""
    return hashlib.sha256(canonical_json([s.to_json() for s in trace])).hexdigest()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, tuple | list | frozenset | set):
        return repr(list(value))
    return repr(value)


def _compare_set(operator: str, seen: Any, right: RightOperand) -> bool:
    """Set semantics: a scalar ``seen`` is a one-element set; ``None`` matches nothing."""
    values: set[str] = set() if seen is None else ({seen} if isinstance(seen, str) else set(seen))
    rset = set(right) if isinstance(right, tuple) else {right}
    if operator == "eq":
        return bool(values & rset) if not isinstance(seen, str) else seen == right
    if operator == "neq":
        return not (values & rset)
    if operator == "isAnyOf":
        return bool(values & rset)
    if operator == "isNoneOf":
        return not (values & rset)
    return rset <= values  # isAllOf


_SET_WORDS: Final = {
    "eq": ("is", "is not"),
    "neq": ("is not", "is"),
    "isAnyOf": ("is one of", "is not any of"),
    "isNoneOf": ("is none of", "is one of"),
    "isAllOf": ("include all of", "do not include all of"),
}
_ORDER_WORDS: Final = {
    "lt": ("is before", "is not before"),
    "lteq": ("is at or before", "is after"),
    "gt": ("is after", "is not after"),
    "gteq": ("is at or after", "is before"),
}


def _ordered(operator: str, seen: Any, right: Any) -> bool:
    if operator == "lt":
        return bool(seen < right)
    if operator == "lteq":
        return bool(seen <= right)
    if operator == "gt":
        return bool(seen > right)
    return bool(seen >= right)


@dataclass
class _Ctx:
    request: UsageRequest
    now: datetime
    tx: Transaction
    consent: ConsentChecker | None
    partial_consent: str


def _step(
    rule: str,
    index: int | None,
    rule_id: str | None,
    c: Constraint,
    seen: Any,
    outcome: Outcome,
    message: str,
    refused: Sequence[str] = (),
) -> TraceStep:
    return TraceStep(
        rule=rule,
        index=index,
        rule_id=rule_id,
        left_operand=c.left_operand,
        operator=c.operator,
        right_operand=list(c.right_operand)
        if isinstance(c.right_operand, tuple)
        else c.right_operand,
        seen=seen,
        outcome=outcome,
        blocking=False,
        message=message,
        refused_entities=tuple(refused),
    )


def _check(c: Constraint, ctx: _Ctx, rule: str, index: int, rule_id: str | None) -> TraceStep:
    req, lo, op = ctx.request, c.left_operand, c.operator

    def done(seen: Any, outcome: Outcome, msg: str, refused: Sequence[str] = ()) -> TraceStep:
        return _step(rule, index, rule_id, c, seen, outcome, msg, refused)

    if lo in ("assignee", "purpose", "computation", "protocol", "output", "role"):
        value: Any = {
            "assignee": req.assignee,
            "purpose": req.purpose,
            "computation": req.query_kind,
            "protocol": req.protocol,
            "output": req.output,
            "role": sorted(req.roles),
        }[lo]
        holds = _compare_set(op, value, c.right_operand)
        word = _SET_WORDS[op][0 if holds else 1]
        if lo == "role":
            msg = f"roles {_fmt(value)} {word} {_fmt(c.right_operand)}"
        elif value is None:
            msg = f"{lo} (none given) {word} {_fmt(c.right_operand)}"
        else:
            msg = f"{lo} {value!r} {word} {_fmt(c.right_operand)}"
        return done(value, "satisfied" if holds else "violated", msg)

    if lo == "dateTime":
        limit = datetime.fromisoformat(str(c.right_operand))
        holds = _ordered(op, ctx.now, limit)
        word = _ORDER_WORDS[op][0 if holds else 1]
        stamp = ctx.now.isoformat()
        msg = f"dateTime {stamp} {word} {c.right_operand}"
        return done(stamp, "satisfied" if holds else "violated", msg)

    if lo == "minCohort":
        if req.query_kind != "aggregate" and req.output != "aggregate":
            return done(req.cohort_size, "not_applicable", "minCohort applies to aggregates only")
        k = int(c.right_operand)  # type: ignore[arg-type]
        if req.cohort_size is None:
            return done(None, "violated", f"aggregate names no cohort size; minimum is {k}")
        holds = _ordered(op, req.cohort_size, k)
        relation = ">=" if op == "gteq" else ">"
        msg = (
            f"cohort size {req.cohort_size} {relation} {k}"
            if holds
            else f"cohort size {req.cohort_size} is below the minimum ({relation} {k})"
        )
        return done(req.cohort_size, "satisfied" if holds else "violated", msg)

    if lo == "count":
        n = int(c.right_operand)  # type: ignore[arg-type]
        limit_n = n if op == "lteq" else n - 1
        if req.agreement_id is None:
            return done(None, "violated", "count needs an agreement id; the request names none")
        use = ctx.tx.counter(COUNT_NAMESPACE, req.agreement_id) + 1
        if use <= limit_n:
            msg = f"use {use} of agreement {req.agreement_id!r} is within count {op} {n}"
            return done(use, "satisfied", msg)
        msg = f"use {use} of agreement {req.agreement_id!r} exceeds count {op} {n}"
        return done(use, "violated", msg)

    if lo == "consent":
        entities = list(req.entities)
        if not entities:
            return done(
                {"entities": 0, "consented": 0},
                "violated",
                "consent is required but the request names no entities to check",
            )
        if ctx.consent is None:
            return done(
                {"entities": len(entities), "consented": 0},
                "violated",
                "consent is required but no consent registry is available",
            )
        missing = ctx.consent.missing_consents(entities, req.assignee, req.purpose, ctx.now)
        missing_set = set(missing)
        refused = [e for e in entities if e in missing_set]
        seen = {"entities": len(entities), "consented": len(entities) - len(refused)}
        if not refused:
            msg = f"consent held for all {len(entities)} entities for purpose {req.purpose!r}"
            return done(seen, "satisfied", msg)
        if len(refused) == len(entities):
            msg = f"no consent for any of the {len(entities)} entities for {req.purpose!r}"
            return done(seen, "violated", msg, refused)
        msg = (
            f"consent missing for {len(refused)} of {len(entities)} entities "
            f"for purpose {req.purpose!r}: {refused}"
        )
        return done(seen, "partial", msg, refused)

    # retention: not a condition on the request, a duty on the consumer.
    msg = f"results must be deleted within {c.right_operand}"
    return done(None, "not_applicable", msg)


def _floor_steps(request: UsageRequest, tier: str | None, max_grade: int | None) -> list[TraceStep]:
    if tier is not None and tier not in TIERS:
        raise ValidationError(f"tier {tier!r} not in {list(TIERS)}")
    if max_grade is not None and (
        isinstance(max_grade, bool) or not isinstance(max_grade, int) or not 1 <= max_grade <= 5
    ):
        raise ValidationError(f"max_grade must be 1..5, got {max_grade!r}")
    steps: list[TraceStep] = []

    def add(lo: str, op: str, right: Any, seen: Any, ok: bool, msg: str) -> None:
        outcome: Outcome = "satisfied" if ok else "violated"
        steps.append(TraceStep("floor", None, None, lo, op, right, seen, outcome, False, msg))

    if max_grade is not None:
        add(
            "grade",
            "lteq",
            4,
            max_grade,
            max_grade <= 4,
            f"grade {max_grade} data " + ("may be offered" if max_grade <= 4 else "never leaves"),
        )
        if max_grade <= 4 and tier is not None:
            allowed = _TIERS_FOR_GRADE[max_grade]
            ok = tier in allowed
            msg = f"tier {tier!r} is {'' if ok else 'not '}allowed for grade {max_grade} data"
            add("tier", "isAnyOf", list(allowed), tier, ok, msg)
    zone = tier == "zone" or (max_grade is not None and max_grade >= 3)
    if zone:
        ok = request.output != "raw"
        where = f"tier {tier!r}" if tier else f"grade {max_grade}"
        add(
            "output",
            "neq",
            "raw",
            request.output,
            ok,
            f"output {request.output!r} is "
            + ("allowed" if ok else f"never released for {where} data (computation only)"),
        )
        ok = request.query_kind in COMPUTATIONS
        add(
            "computation",
            "isAnyOf",
            list(COMPUTATIONS),
            request.query_kind,
            ok,
            f"computation {request.query_kind!r} is "
            + ("allowed" if ok else f"not allowed for {where} data"),
        )
    elif tier == "conditional" and request.output == "raw":
        ok = request.agreement_id is not None
        add(
            "agreement",
            "neq",
            None,
            request.agreement_id,
            ok,
            "raw rows of a conditional dataset "
            + ("are covered by an agreement" if ok else "need an agreement"),
        )
    return steps


_TIERS_FOR_GRADE: Final[Mapping[int, tuple[str, ...]]] = {
    1: TIERS,
    2: ("conditional", "zone"),
    3: ("zone",),
    4: ("zone",),
}


def _mark(step: TraceStep) -> TraceStep:
    return replace(step, blocking=True)


def _rule_label(kind: str, index: int, uid: str | None) -> str:
    return f"{kind}[{index}]" + (f" {uid!r}" if uid else "")


def evaluate(
    policy: Policy,
    request: UsageRequest,
    *,
    tx: Transaction,
    consent: ConsentChecker | None = None,
    now: datetime | None = None,
    tier: str,
    max_grade: int,
    partial_consent: Literal["deny", "exclude"] = "deny",
) -> Decision:
    """Decide ``request`` against ``policy`` inside ``tx``: evaluate, consume, record.

    Every constraint of every rule is evaluated (a complete trace, not just the first failure).
    When the request is allowed and the granting permission has ``count``, one use is consumed
    with ``tx.increment(COUNT_NAMESPACE, agreement_id, limit=N)``; then the decision is appended
    to the ledger as a ``policy.decision`` event. All of this is in ``tx``: if the caller's
    transaction fails, the use and the entry vanish together. Calling this *is* deciding: there
    is no way to get a decision that is not on the ledger.

    Args:
        policy: the provider's policy (or agreement) for the dataset.
        request: the request as the provider's node established it.
        tx: the open store transaction.
        consent: the consent registry, needed when the policy has ``consent``.
        now: the instant to evaluate at (``dateTime``, consent); defaults to ``request.at``.
        tier: the dataset's open tier. Required with ``max_grade`` so that the grade floor is
            re-applied on every request, even if a policy was edited to allow more.
        max_grade: the highest security grade among the dataset's fields.
        partial_consent: when consent is held for only some entities: ``"deny"`` (default)
            refuses the request; ``"exclude"`` allows it for the consented entities only and
            lists the others in ``refused_entities``.

    Returns:
        The :class:`Decision`, with ``ledger_index`` set.

    Raises:
        ValidationError: ``tier``/``max_grade``/``partial_consent`` is not a known value.
    """
    if partial_consent not in ("deny", "exclude"):
        raise ValidationError(
            f"partial_consent must be 'deny' or 'exclude', not {partial_consent!r}"
        )
    instant = now or request.at
    if instant.tzinfo is None:
        raise ValidationError("now must be time-zone aware")
    ctx = _Ctx(request, instant, tx, consent, partial_consent)
    steps: list[TraceStep] = []
    blockers: list[int] = []

    for s in _floor_steps(request, tier, max_grade):
        if s.outcome == "violated":
            blockers.append(len(steps))
        steps.append(s)

    if policy.kind == "Agreement":
        for lo, expected, seen in (
            ("assignee", policy.assignee, request.assignee),
            ("agreement", policy.uid, request.agreement_id),
        ):
            ok = seen == expected
            msg = f"{lo} {seen!r} " + (
                "matches the agreement" if ok else f"is not the agreement's {expected!r}"
            )
            if not ok:
                blockers.append(len(steps))
            steps.append(
                TraceStep(
                    "agreement",
                    None,
                    policy.uid,
                    lo,
                    "eq",
                    expected,
                    seen,
                    "satisfied" if ok else "violated",
                    False,
                    msg,
                )
            )

    prohibited_reason: str | None = None
    for i, rule in enumerate(policy.prohibitions):
        rsteps = [_check(c, ctx, "prohibition", i, rule.uid) for c in rule.constraints]
        applies = all(s.outcome == "satisfied" for s in rsteps)
        start = len(steps)
        steps.extend(rsteps)
        if applies:
            if not rsteps:
                steps.append(
                    TraceStep(
                        "prohibition",
                        i,
                        rule.uid,
                        "",
                        "",
                        None,
                        None,
                        "satisfied",
                        False,
                        "prohibition without constraints: always applies",
                    )
                )
            blockers.extend(range(start, len(steps)))
            if prohibited_reason is None:
                why = " and ".join(s.message for s in steps[start:])
                prohibited_reason = (
                    f"prohibited by {_rule_label('prohibition', i, rule.uid)}: {why}"
                )

    granted: int | None = None
    granted_partial: TraceStep | None = None
    failures: list[str] = []
    perm_blockers: list[int] = []
    candidates: list[tuple[int, TraceStep | None]] = []
    for i, rule in enumerate(policy.permissions):
        start = len(steps)
        rsteps = [_check(c, ctx, "permission", i, rule.uid) for c in rule.constraints]
        steps.extend(rsteps)
        bad = [start + j for j, s in enumerate(rsteps) if s.outcome == "violated"]
        part = next((s for s in rsteps if s.outcome == "partial"), None)
        if part is not None and partial_consent == "deny":
            bad.append(start + rsteps.index(part))
            bad.sort()
        if bad:
            perm_blockers.extend(bad)
            failures.append(
                (
                    _rule_label("permission", i, rule.uid) + ": "
                    if len(policy.permissions) > 1
                    else ""
                )
                + steps[bad[0]].message
            )
        else:
            candidates.append((i, part))
    if candidates:
        granted, granted_partial = min(candidates, key=lambda c: (c[1] is not None, c[0]))

    reason: str
    if blockers and steps[blockers[0]].rule in ("floor", "agreement"):
        reason = steps[blockers[0]].message
    elif prohibited_reason is not None:
        reason = prohibited_reason
    elif granted is None:
        if not policy.permissions:
            msg = f"policy {policy.uid!r} has no permission: default deny"
            steps.append(
                TraceStep("default", None, None, "", "", None, None, "violated", False, msg)
            )
            blockers.append(len(steps) - 1)
            reason = msg
        else:
            blockers.extend(perm_blockers)
            reason = "; ".join(failures)
            if len(policy.permissions) > 1:
                reason = "no permission applies: " + reason
    else:
        reason = f"allowed by {_rule_label('permission', granted, policy.permissions[granted].uid)}"

    allowed = not blockers and granted is not None
    uses: int | None = None
    if allowed and granted is not None:
        rule = policy.permissions[granted]
        count = next((c for c in rule.constraints if c.left_operand == "count"), None)
        if count is not None and request.agreement_id is not None:
            n = int(count.right_operand)  # type: ignore[arg-type]
            limit_n = n if count.operator == "lteq" else n - 1
            try:
                uses = tx.increment(COUNT_NAMESPACE, request.agreement_id, limit=limit_n)
            except LimitExceededError:
                allowed = False
                msg = (
                    f"count {count.operator} {n} for agreement {request.agreement_id!r} "
                    "was exhausted by a concurrent request"
                )
                blockers.append(len(steps))
                steps.append(_step("count", granted, rule.uid, count, None, "violated", msg))
                reason = msg
            else:
                steps.append(
                    _step(
                        "count",
                        granted,
                        rule.uid,
                        count,
                        uses,
                        "satisfied",
                        f"use {uses} of {limit_n} recorded for agreement {request.agreement_id!r}",
                    )
                )

    refused: tuple[str, ...] = ()
    permitted: tuple[str, ...] = tuple(request.entities)
    partial = False
    if granted_partial is not None:
        refused = granted_partial.refused_entities
    elif not allowed:
        refused = next((s.refused_entities for s in steps if s.refused_entities), ())
    if allowed and refused:
        partial = True
        gone = set(refused)
        permitted = tuple(e for e in request.entities if e not in gone)
        reason += f" for {len(permitted)} of {len(request.entities)} entities"
        reason += f" (excluded: {list(refused)})"
    if not allowed:
        permitted = ()

    blocked = set(blockers)
    trace = tuple(_mark(s) if k in blocked else s for k, s in enumerate(steps))
    duties = _duties(policy, granted) if allowed else (DutyDue("log"),)
    digest = trace_digest(trace)
    decision = Decision(
        allowed=allowed,
        policy_uid=policy.uid,
        reason=reason,
        trace=trace,
        duties=duties,
        permission_index=granted if allowed else None,
        partial=partial,
        refused_entities=refused,
        permitted_entities=permitted,
        uses=uses,
        trace_digest=digest,
    )
    index = record_event(
        tx,
        "policy.decision",
        {
            "allowed": allowed,
            "policy": policy.uid,
            "target": policy.target,
            "agreement": request.agreement_id,
            "assignee": request.assignee,
            "purpose": request.purpose,
            "query_kind": request.query_kind,
            "output": request.output,
            "at": ctx.now.astimezone(UTC).isoformat(),
            "reason": reason,
            "partial": partial,
            "refused_entities": list(refused),
            "uses": uses,
            "duties": [d.to_json() for d in duties],
            "trace_digest": digest,
            "trace": decision.trace_json(),
        },
    )
    return replace(decision, ledger_index=index)


def _duties(policy: Policy, granted: int | None) -> tuple[DutyDue, ...]:
    out: list[DutyDue] = [DutyDue("log")]
    sources: list[Duty] = list(policy.obligations)
    retention: list[str] = []
    if granted is not None:
        rule = policy.permissions[granted]
        sources.extend(rule.duties)
        retention = [
            str(c.right_operand) for c in rule.constraints if c.left_operand == "retention"
        ]
    for d in sources:
        if d.action == "notify":
            due = DutyDue("notify", recipient=policy.assigner)
        elif d.action == "delete":
            due = DutyDue("delete", after=str(d.constraints[0].right_operand))
        else:
            continue
        if due not in out:
            out.append(due)
    for after in retention:
        due = DutyDue("delete", after=after)
        if due not in out:
            out.append(due)
    return tuple(out)


def decide(
    store: Store,
    policy: Policy,
    request: UsageRequest,
    consent: ConsentChecker | None = None,
    *,
    now: datetime | None = None,
    tier: str,
    max_grade: int,
    partial_consent: Literal["deny", "exclude"] = "deny",
) -> Decision:
    """Open a transaction, :func:`evaluate` in it, and commit; return the decision.

    The ``count`` consumption and the ledger entry commit together or not at all. See
    :func:`evaluate` for the arguments.
    """
    with store.transaction() as tx:
        return evaluate(
            policy,
            request,
            tx=tx,
            consent=consent,
            now=now,
            tier=tier,
            max_grade=max_grade,
            partial_consent=partial_consent,
        )


# ----------------------------------------------------------------------------------------------
# Grade floors
# ----------------------------------------------------------------------------------------------


def _allowed_values(rule: Rule, operand: str, universe: Sequence[str]) -> set[str] | None:
    """Values of ``operand`` a rule can permit, or ``None`` when it does not constrain it."""
    allowed: set[str] | None = None
    for c in rule.constraints:
        if c.left_operand != operand:
            continue
        right = set(c.right_operand) if isinstance(c.right_operand, tuple) else {c.right_operand}
        if c.operator in ("eq", "isAnyOf"):
            values = {str(v) for v in right}
        else:
            values = set(universe) - {str(v) for v in right}
        allowed = values if allowed is None else allowed & values
    return allowed


def check_grade_floor(policy: Policy, tier: str, max_grade: int) -> None:
    """Refuse a tier or policy looser than the data's highest security grade allows.

    Rules (JR/T 0197-2020 grades; see ``docs/policies.md``):

    - grade 5: never offered, in any tier, not even for computation;
    - grades 3-4: tier ``zone`` only;
    - grade 2: tier ``conditional`` or ``zone``;
    - grade 1: any tier;
    - tier ``zone`` (whatever the grade): every permission must exclude ``output: raw`` and
      restrict ``computation`` to ``score``/``aggregate``/``train``.

    Raises:
        GradeFloorError: the combination is too loose; the message says which rule.
        ValidationError: ``tier`` or ``max_grade`` is not a known value.
    """
    if tier not in TIERS:
        raise ValidationError(f"tier {tier!r} not in {list(TIERS)}")
    if isinstance(max_grade, bool) or not isinstance(max_grade, int) or not 1 <= max_grade <= 5:
        raise ValidationError(f"max_grade must be an integer 1..5, got {max_grade!r}")
    if max_grade == 5:
        raise GradeFloorError(
            f"policy {policy.uid!r}: grade 5 data is never offered, not even for computation"
        )
    allowed = _TIERS_FOR_GRADE[max_grade]
    if tier not in allowed:
        raise GradeFloorError(
            f"policy {policy.uid!r}: grade {max_grade} data may be offered in tier(s) "
            f"{list(allowed)}, not {tier!r}"
        )
    if tier != "zone":
        return
    for i, rule in enumerate(policy.permissions):
        label = _rule_label("permission", i, rule.uid)
        outputs = _allowed_values(rule, "output", OUTPUT_KINDS)
        if outputs is None or "raw" in outputs:
            raise GradeFloorError(
                f"policy {policy.uid!r}: {label} permits output 'raw', but grade {max_grade} "
                "data in tier 'zone' is computation only (add output isAnyOf [score, aggregate])"
            )
        kinds = _allowed_values(rule, "computation", QUERY_KINDS)
        if kinds is None or not kinds <= set(COMPUTATIONS):
            raise GradeFloorError(
                f"policy {policy.uid!r}: {label} must restrict computation to "
                f"{list(COMPUTATIONS)} for tier 'zone' (found "
                f"{'no computation constraint' if kinds is None else sorted(kinds)})"
            )
