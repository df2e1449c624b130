"""The policy model: :class:`Policy`, :class:`Rule`, :class:`Constraint`, :class:`Duty`.

Frozen dataclasses, checked when built: a policy that exists is well formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from trusted_space.jsonpath import path_error
from trusted_space.policy.vocabulary import (
    DUTY_ACTIONS,
    LEFT_OPERANDS,
    RightOperand,
    check_constraint,
)

__all__ = ["Constraint", "Duty", "Policy", "Rule", "check_duty", "check_rule"]


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
        check_duty(self.action, self.constraints, "Duty")


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
            raise path_error("Rule.action", f"only action 'use' is supported, not {self.action!r}")


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


def check_duty(action: str, constraints: Sequence[Constraint], path: str) -> None:
    if action not in DUTY_ACTIONS:
        raise path_error(f"{path}.action", f"unknown duty {action!r}; known: {list(DUTY_ACTIONS)}")
    if action == "delete":
        if len(constraints) != 1:
            raise path_error(f"{path}.constraint", "a delete duty needs exactly one deleteAfter")
    elif constraints:
        raise path_error(f"{path}.constraint", f"a {action} duty takes no constraints")
    for j, c in enumerate(constraints):
        check_constraint(
            c.left_operand,
            c.operator,
            c.right_operand,
            f"{path}.constraint[{j}]",
            where="duty",
            duty=True,
        )


def check_rule(rule: Rule, path: str, where: str) -> None:
    seen: set[str] = set()
    for j, c in enumerate(rule.constraints):
        cpath = f"{path}.constraint[{j}]"
        check_constraint(c.left_operand, c.operator, c.right_operand, cpath, where=where)
        if LEFT_OPERANDS[c.left_operand].unique:
            if c.left_operand in seen:
                raise path_error(
                    f"{cpath}.leftOperand", f"{c.left_operand!r} appears twice in a rule"
                )
            seen.add(c.left_operand)
    if where == "prohibition" and rule.duties:
        raise path_error(f"{path}.duty", "a prohibition has no duties (use a permission)")
    for k, d in enumerate(rule.duties):
        check_duty(d.action, d.constraints, f"{path}.duty[{k}]")


def _check_policy(policy: Policy) -> None:
    for name in ("uid", "target", "assigner"):
        value = getattr(policy, name)
        if not isinstance(value, str) or not value:
            raise path_error(f"Policy.{name}", f"must be a non-empty string, got {value!r}")
    if policy.kind not in ("Offer", "Agreement"):
        raise path_error("Policy.kind", f"must be 'Offer' or 'Agreement', not {policy.kind!r}")
    if policy.kind == "Agreement" and not policy.assignee:
        raise path_error("Policy.assignee", "an Agreement names its assignee")
    if not policy.permissions and not policy.prohibitions:
        raise path_error("Policy", "needs at least one permission or prohibition")
    for i, r in enumerate(policy.permissions):
        check_rule(r, f"permission[{i}]", "permission")
    for i, r in enumerate(policy.prohibitions):
        check_rule(r, f"prohibition[{i}]", "prohibition")
    for i, d in enumerate(policy.obligations):
        check_duty(d.action, d.constraints, f"obligation[{i}]")
