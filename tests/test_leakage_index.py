"""The leakage regression index: every "party X must not receive Y" guarantee, and its test.

The tests themselves live next to the mechanism they exercise (protocol tests in
``tests/trusted_space``, the edge in ``tests/connectors``, primitives in ``tests/crypto``); this
module gathers them in one place. Each entry names a party, what it must not receive (or what
must not happen), and the test that shows it. :func:`test_every_listed_test_exists` fails when a
listed test is renamed or removed, so a guarantee cannot silently lose its test; and
:func:`test_the_threat_model_cites_only_existing_tests` holds ``docs/threat-model.md`` to the
same rule (run the listed tests with ``pytest $(python -m tests.test_leakage_index)``).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Guarantee:
    area: str
    party: str
    must_not: str
    tests: tuple[str, ...]


LEAKAGE = "tests/trusted_space/test_leakage.py"
SCORE = "tests/trusted_space/test_score_protocols.py"
AGGREGATE = "tests/trusted_space/test_aggregate.py"
ALIGN = "tests/trusted_space/test_align.py"
TRAIN = "tests/trusted_space/test_train.py"
TRAIN_MPC = "tests/trusted_space/test_train_mpc.py"
HOSTILE = "tests/connectors/node/test_hostile.py"

GUARANTEES: tuple[Guarantee, ...] = (
    # -- joint score ----------------------------------------------------------------------------
    Guarantee(
        "score",
        "provider",
        "the analyst's weights in clear (any encoding, any protocol)",
        (f"{LEAKAGE}::test_providers_never_see_the_weights_in_clear",),
    ),
    Guarantee(
        "score",
        "analyst",
        "a provider's partial logit or feature",
        (f"{LEAKAGE}::test_the_analyst_never_receives_a_providers_partial",),
    ),
    Guarantee(
        "score",
        "analyst (band release)",
        "the logit or a partial: only the band leaves, the aggregator's sums go to the comparer",
        (
            f"{LEAKAGE}::test_a_band_release_never_sends_the_analyst_a_logit",
            "tests/trusted_space/test_score_band.py::"
            "test_bands_equal_the_plaintext_bands_and_the_analyst_never_takes_a_sum",
        ),
    ),
    Guarantee(
        "score",
        "provider, operator",
        "a CKKS secret key inside a context",
        (
            f"{LEAKAGE}::test_ckks_contexts_sent_hold_no_secret_key",
            "tests/crypto/test_ckks.py::test_public_bytes_contain_no_secret_key",
            "tests/crypto/test_ckks.py::test_public_context_cannot_decrypt",
        ),
    ),
    Guarantee(
        "score",
        "analyst",
        "magnitudes through a Paillier exponent other than the protocol constant",
        (f"{LEAKAGE}::test_every_paillier_ciphertext_carries_the_protocol_exponent",),
    ),
    Guarantee(
        "score",
        "operator (dealer, aggregator)",
        "a provider's features or the weights from its Beaver share (the mask)",
        (
            f"{LEAKAGE}::test_the_dealer_aggregator_cannot_unmask_a_providers_beaver_share",
            f"{SCORE}::test_mask_streams_of_different_blocks_never_overlap",
        ),
    ),
    Guarantee(
        "score",
        "analyst, provider",
        "a Beaver triple used twice (two openings under one pad)",
        (f"{LEAKAGE}::test_no_beaver_triple_is_used_twice",),
    ),
    Guarantee(
        "score",
        "analyst",
        "any data used when a provider's policy refuses",
        (f"{LEAKAGE}::test_a_policy_refusal_stops_the_query_before_any_data_is_used",),
    ),
    Guarantee(
        "score",
        "analyst (naming itself aggregator)",
        "the providers' partials: they go to the space's operator only",
        (f"{SCORE}::test_provider_sends_only_to_the_space_operator",),
    ),
    Guarantee(
        "score",
        "anyone but the opening analyst",
        "a block's sum; partial sums; a second release",
        (f"{SCORE}::test_aggregator_releases_complete_sums_once_to_the_analyst_only",),
    ),
    Guarantee(
        "score",
        "analyst",
        "raw CKKS decryptions (key-recovery noise): released values are rounded",
        (
            "tests/crypto/test_ckks.py::test_decryption_is_rounded_before_release",
            "tests/trusted_space/test_output_safety.py::test_ckks_scores_are_released_rounded",
        ),
    ),
    Guarantee(
        "score",
        "analyst",
        "results the provider did not log: every use has a receipt that verifies",
        (
            f"{SCORE}::test_receipts_verify_against_known_keys",
            "tests/trusted_space/test_enforcement.py::test_allowed_use_is_recorded_with_a_verifiable_receipt",
        ),
    ),
    # -- aggregates -------------------------------------------------------------------------------
    Guarantee(
        "aggregate",
        "provider",
        "which of its rows form the analyst's cohort",
        (f"{AGGREGATE}::test_the_provider_never_receives_the_cohort",),
    ),
    Guarantee(
        "aggregate",
        "analyst",
        "a statistic over fewer entities than minCohort",
        (
            f"{AGGREGATE}::test_a_cohort_below_min_cohort_is_refused_with_a_trace_and_nothing_released",
            f"{ALIGN}::test_min_cohort_is_checked_against_the_analyst_list_before_reading",
            "tests/trusted_space/test_enforcement.py::test_min_cohort_applies_to_aggregates",
        ),
    ),
    Guarantee(
        "aggregate",
        "analyst",
        "noisy releases beyond the privacy budget (it never goes negative, even concurrently)",
        (
            "tests/trusted_space/test_budget.py::test_spending_never_exceeds_the_limit_and_remaining_never_goes_negative",
            "tests/trusted_space/test_budget.py::test_concurrent_charges_cannot_overspend",
            f"{AGGREGATE}::test_noise_is_charged_and_a_query_past_the_budget_is_refused_before_reading",
        ),
    ),
    Guarantee(
        "aggregate",
        "analyst",
        "a second release of one aggregate session",
        (f"{AGGREGATE}::test_a_release_happens_once",),
    ),
    # -- alignment (PSI) --------------------------------------------------------------------------
    Guarantee(
        "alignment",
        "provider",
        "the analyst's ids or their unblinded hashes",
        (
            f"{ALIGN}::test_the_provider_sees_no_analyst_id_nor_its_hash_unblinded",
            "tests/crypto/test_psi.py::test_request_contains_no_raw_ids_or_unblinded_hashes",
        ),
    ),
    Guarantee(
        "alignment",
        "another analyst",
        "a session (and the shuffled order) opened by someone else",
        (f"{ALIGN}::test_alignment_is_bound_to_its_analyst_and_happens_once",),
    ),
    Guarantee(
        "alignment",
        "analyst",
        "any id when the policy refuses the alignment",
        (f"{ALIGN}::test_refusal_carries_the_trace_and_no_id_is_read",),
    ),
    # -- training --------------------------------------------------------------------------------
    Guarantee(
        "training",
        "every party",
        "the label or another party's features in the clear",
        (f"{TRAIN}::test_label_and_features_never_travel_in_the_clear",),
    ),
    Guarantee(
        "training",
        "bank, compute party",
        "an opening that is not uniform (every message masked by dealer randomness)",
        (
            f"{TRAIN_MPC}::test_messages_look_uniform",
            f"{TRAIN_MPC}::test_a_derived_value_is_uniform_to_each_party",
        ),
    ),
    Guarantee(
        "training",
        "compute party",
        "the held-out loss (only the bank learns it)",
        (f"{TRAIN_MPC}::test_held_out_loss_is_the_taylor_loss_and_only_party_zero_learns_it",),
    ),
    Guarantee(
        "training",
        "bank (party-held mode)",
        "a provider's weights",
        (f"{TRAIN}::test_party_held_weights_stay_with_their_party_and_score",),
    ),
    Guarantee(
        "training",
        "operator (dealer)",
        "a seed or a batch's material dealt twice",
        (f"{TRAIN}::test_dealer_deals_each_seed_and_batch_once",),
    ),
    Guarantee(
        "training",
        "bank",
        "any weight after a refusal, or any read before the use is allowed",
        (
            f"{TRAIN}::test_a_use_limit_stops_training_mid_way_and_nothing_is_released",
            f"{TRAIN}::test_a_policy_without_train_refuses_before_any_read",
        ),
    ),
    # -- the edge ---------------------------------------------------------------------------------
    Guarantee(
        "edge",
        "a caller refused",
        "which authentication check failed (one byte-identical 401; the reason on the ledger)",
        (
            f"{HOSTILE}::test_every_refusal_is_one_answer_and_the_ledger_keeps_the_reason",
            "tests/trusted_space/test_identity.py::test_refusals_indistinguishable_to_caller_distinct_in_ledger",
            "tests/connectors/node/test_transfer.py::test_pull_token_wrong_expired_reused_unknown_all_answer_the_same_401",
        ),
    ),
    Guarantee(
        "edge",
        "a caller without (or with wrong) credentials",
        "an answer from any protected operation",
        (
            "tests/connectors/node/test_api_fuzz.py::test_every_protected_operation_refuses_bad_credentials",
            "tests/connectors/node/test_api_fuzz.py::test_every_operation_of_every_role",
        ),
    ),
    Guarantee(
        "edge",
        "another member",
        "any effect on a query it is not part of (copies of its messages included)",
        (f"{HOSTILE}::test_another_member_cannot_touch_a_query",),
    ),
    Guarantee(
        "edge",
        "an anonymous caller",
        "datasets beyond the open tier, or that an invisible dataset exists",
        (
            "tests/connectors/node/test_dsp_catalog.py::test_anonymous_catalog_shows_only_unconditional",
            "tests/connectors/node/test_dsp_catalog.py::test_invisible_dataset_looks_unknown",
            "tests/connectors/node/test_dsp_catalog.py::test_a_bad_signature_is_refused_not_downgraded_to_anonymous",
        ),
    ),
    Guarantee(
        "edge",
        "the analyst",
        "a provider's file paths in an error",
        ("tests/connectors/node/test_compute.py::test_a_broken_source_does_not_leak_its_path",),
    ),
    Guarantee(
        "edge",
        "anyone reading logs or errors",
        "a PSI secret scalar",
        ("tests/crypto/test_psi.py::test_secret_scalar_is_not_in_repr_or_messages",),
    ),
)


@cache
def _defined_tests(path: str) -> frozenset[str]:
    """Names of the test functions (module level or in a class) defined in ``path``."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(n for n in names if n.rsplit("::", 1)[-1].startswith("test"))


def _exists(test_id: str) -> bool:
    path, _, name = test_id.partition("::")
    return (ROOT / path).is_file() and name in _defined_tests(path)


def listed_tests() -> list[str]:
    """Every test id of the index, once, in order."""
    return list(dict.fromkeys(t for g in GUARANTEES for t in g.tests))


@pytest.mark.parametrize("test_id", listed_tests())
def test_every_listed_test_exists(test_id: str) -> None:
    assert _exists(test_id), f"{test_id} is listed in the leakage index but does not exist"


def test_every_guarantee_has_a_test_and_areas_are_covered() -> None:
    assert all(g.tests and g.party and g.must_not for g in GUARANTEES)
    assert {g.area for g in GUARANTEES} == {"score", "aggregate", "alignment", "training", "edge"}


def test_the_threat_model_cites_only_existing_tests() -> None:
    text = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"tests/[\w/]+\.py::[\w:]+", text))
    assert cited, "the threat model cites no test"
    missing = sorted(t for t in cited if not _exists(t))
    assert not missing, f"docs/threat-model.md cites tests that do not exist: {missing}"
    assert f"{len(GUARANTEES)} of them" in text, "the threat model counts the index's guarantees"


if __name__ == "__main__":  # print the test ids, for `pytest $(python -m tests.test_leakage_index)`
    sys.stdout.write(" ".join(listed_tests()) + "\n")
