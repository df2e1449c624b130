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

Layout: :mod:`.vocabulary` (operands, operators, tiers), :mod:`.model` (the dataclasses),
:mod:`.odrl` (JSON-LD in and out), :mod:`.decision` (request, trace, decision), :mod:`.grades`
(grade floors), :mod:`.evaluate` (the decision point), :mod:`.record` (the one writer of
``policy.decision`` entries and the checks made outside the policy).
"""

from __future__ import annotations

from trusted_space.policy.decision import (
    ConsentChecker,
    Decision,
    DutyDue,
    TraceStep,
    UsageRequest,
    trace_digest,
)
from trusted_space.policy.evaluate import decide, evaluate
from trusted_space.policy.grades import check_grade_floor
from trusted_space.policy.model import Constraint, Duty, Policy, Rule
from trusted_space.policy.odrl import from_odrl, to_odrl
from trusted_space.policy.record import DECISION_EVENT, Checks, DecisionSubject, record_decision
from trusted_space.policy.vocabulary import (
    COMPUTATIONS,
    COUNT_NAMESPACE,
    DUTY_ACTIONS,
    LEFT_OPERANDS,
    MODEL_MODES,
    MODEL_RULES,
    ODRL_PROFILE,
    OPERATORS,
    OUTPUT_KINDS,
    PROTOCOLS,
    QUERY_KINDS,
    RELEASE_KINDS,
    TIERS,
    ProtocolName,
)

__all__ = [
    "COMPUTATIONS",
    "COUNT_NAMESPACE",
    "DECISION_EVENT",
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
    "Checks",
    "ConsentChecker",
    "Constraint",
    "Decision",
    "DecisionSubject",
    "Duty",
    "DutyDue",
    "Policy",
    "ProtocolName",
    "Rule",
    "TraceStep",
    "UsageRequest",
    "check_grade_floor",
    "decide",
    "evaluate",
    "from_odrl",
    "record_decision",
    "to_odrl",
    "trace_digest",
]
