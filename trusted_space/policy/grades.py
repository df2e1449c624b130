"""Grade floors: the loosest tier and policy a dataset's security grade allows.

:func:`check_grade_floor` refuses a too-loose offer at publish time; :func:`floor_steps` gives
the same floor as trace steps, which :func:`~trusted_space.policy.evaluate.evaluate` re-applies
to every request (a policy edited in the store after publication still cannot release raw rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from trusted_space.errors import GradeFloorError, ValidationError
from trusted_space.policy.decision import Outcome, TraceStep, UsageRequest, rule_label
from trusted_space.policy.model import Policy, Rule
from trusted_space.policy.vocabulary import COMPUTATIONS, OUTPUT_KINDS, QUERY_KINDS, TIERS

__all__ = ["check_grade_floor", "floor_steps"]


def floor_steps(request: UsageRequest, tier: str | None, max_grade: int | None) -> list[TraceStep]:
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
        label = rule_label("permission", i, rule.uid)
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
