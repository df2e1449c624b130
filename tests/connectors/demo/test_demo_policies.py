"""The demo's default policies refuse each attack a member could try, naming the rule.

The attacks run across real node processes in ``tests/integration/test_limits.py`` and
``tests/integration/test_model_binding.py`` on policies written for those tests; here the same
requests are decided against the offers the demo publishes (``connectors.demo.run``), as the
department's node would present them once the bank holds an agreement — so the defaults a
newcomer starts from are the ones that stop them. What no policy expresses (owned party-held
weights, standing, declared ranges) is checked on the demo's catalog or left to those tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.demo.data import COURT, MODEL_COLUMNS, SOCIAL, TAX
from connectors.demo.run import (
    DATASET_IDS,
    DEMO_EPSILON,
    MONITORING,
    PURPOSE,
    _datasets,
    _offers,
)
from trusted_space.policy import Decision, Policy, UsageRequest, decide, from_odrl
from trusted_space.store import MemoryStore

BANK = "bank"
AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ENTITY = "91350100M000100Y43"
TIERS = {TAX: ("zone", 3), SOCIAL: ("zone", 3), COURT: ("conditional", 2)}
TRAINED = {"columns": 3.0, "maxWeight": 0.8, "maxShare": 0.6}


class AllConsented:
    """Every applicant consented (so the rule under test is the only one that can refuse)."""

    def has_consent(self, entity: str, grantee: str, purpose: str, at: datetime) -> bool:
        return True

    def missing_consents(
        self, entities: Sequence[str], grantee: str, purpose: str, at: datetime
    ) -> list[str]:
        return []


def agreement(provider: str, uid: str = "urn:uuid:agreement-1") -> Policy:
    """The demo's offer of ``provider`` as the agreement the bank would hold."""
    # the node adds its own id as the assigner when it publishes the offer
    offer = from_odrl({**_offers()[provider], "assigner": provider}, target=DATASET_IDS[provider])
    return replace(offer, uid=uid, kind="Agreement", assignee=BANK)


def request(provider: str, **changes: Any) -> UsageRequest:
    """A score with the bound (trained) model that the demo's own flow makes."""
    base = UsageRequest(
        assignee=BANK,
        purpose=PURPOSE,
        query_kind="score",
        output="score",
        at=AT,
        roles=frozenset({"consumer"}),
        protocol="additive",
        agreement_id="urn:uuid:agreement-1",
        entities=(ENTITY,),
        offer_id=str(_offers()[provider]["@id"]),
        model="trained",
        model_stats=TRAINED,
        release="logit",
    )
    return replace(base, **changes)


def decision(store: MemoryStore, provider: str, policy: Policy, req: UsageRequest) -> Decision:
    tier, grade = TIERS[provider]
    return decide(store, policy, req, AllConsented(), now=AT, tier=tier, max_grade=grade)


def blocking(d: Decision) -> set[str]:
    return {s.left_operand for s in d.trace if s.blocking}


@pytest.mark.parametrize("provider", [TAX, SOCIAL, COURT])
def test_the_column_read_is_refused_by_every_department(provider: str) -> None:
    # A unit weight, packed weights or a linear system all need weights of the analyst's choice.
    store = MemoryStore()
    allowed = decision(store, provider, agreement(provider), request(provider))
    read = decision(store, provider, agreement(provider), request(provider, model="analyst-held"))

    assert allowed.allowed, allowed.reason
    assert not read.allowed and "model" in blocking(read)


def test_renegotiating_does_not_reset_the_tax_bureaus_count() -> None:
    store = MemoryStore()
    first, second = agreement(TAX), agreement(TAX, "urn:uuid:agreement-2")
    uses = [decision(store, TAX, first, request(TAX)).allowed for _ in range(100)]

    renegotiated = decision(store, TAX, second, request(TAX, agreement_id=second.uid))

    assert all(uses) and not renegotiated.allowed
    assert blocking(renegotiated) >= {"count"}


def _aggregate(**changes: Any) -> UsageRequest:
    return request(
        TAX,
        query_kind="aggregate",
        output="aggregate",
        entities=(),
        model=None,
        model_stats=None,
        release=None,
        **changes,
    )


def test_the_tax_bureau_requires_noise_and_a_cohort_of_held_entities() -> None:
    store = MemoryStore()
    noisy = decision(store, TAX, agreement(TAX), _aggregate(cohort_size=200, epsilon=DEMO_EPSILON))
    exact = decision(store, TAX, agreement(TAX), _aggregate(cohort_size=200, epsilon=None))
    # one held entity plus nine made-up ids: the cohort the provider holds is 1
    imputed = decision(store, TAX, agreement(TAX), _aggregate(cohort_size=1, epsilon=DEMO_EPSILON))

    assert noisy.allowed, noisy.reason
    assert not exact.allowed and "epsilon" in blocking(exact)
    assert not imputed.allowed and "minCohort" in blocking(imputed)


def test_social_insurance_scores_an_applicant_at_most_twenty_times_a_month() -> None:
    store = MemoryStore()
    policy = agreement(SOCIAL)
    uses = [decision(store, SOCIAL, policy, request(SOCIAL)).allowed for _ in range(20)]

    renewed = agreement(SOCIAL, "urn:uuid:agreement-2")  # renegotiated: the same account
    again = decision(store, SOCIAL, renewed, request(SOCIAL, agreement_id=renewed.uid))

    assert all(uses)
    assert not again.allowed and blocking(again) == {"entityCount"}


def test_risk_monitoring_at_the_tax_bureau_releases_bands_only() -> None:
    store = MemoryStore()
    monitoring = {"purpose": MONITORING}
    bands = decision(
        store, TAX, agreement(TAX), request(TAX, release="band", bands=4, **monitoring)
    )
    logit = decision(store, TAX, agreement(TAX), request(TAX, **monitoring))
    paillier = decision(store, TAX, agreement(TAX), request(TAX, protocol="paillier", **monitoring))

    assert bands.allowed, bands.reason
    assert not logit.allowed and "release" in blocking(logit)
    assert not paillier.allowed and {"release", "protocol"} <= blocking(paillier)
    step = next(s for s in paillier.trace if s.left_operand == "release" and s.blocking)
    assert "'additive'" in step.message


def test_every_model_column_declares_its_range_so_no_partial_is_refused_for_its_value() -> None:
    # With every column's range published, a party-held partial is bounded up front by
    # sum |w|·range, never refused for the value it takes (docs/decisions.md, 38).
    datasets = _datasets()
    for provider, columns in MODEL_COLUMNS.items():
        fields = {f["name"]: f for f in datasets[provider]["table"]["fields"]}
        assert all("bound" in fields[c] for c in columns), provider
