"""The demo's synthetic data and statistics: deterministic, valid, and what the docs say."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.demo.data import (
    BANK,
    BANK_OUTCOMES,
    COLUMN_BOUNDS,
    COURT,
    LABEL,
    MODEL_COLUMNS,
    PARTIES,
    TAX,
    DemoData,
    generate,
    write_tables,
)
from connectors.demo.stats import auc, fit_logistic, roc_curve
from connectors.node.sources import SourceSpec, open_source
from tests._seeding import rng_for
from trusted_space.queries.score import logistic
from trusted_space.uscc import is_valid_uscc


@pytest.fixture(scope="module")
def data() -> DemoData:
    """A small city drawn with a seed from the session's (tests._seeding)."""
    return generate(3000, applicants=300, seed=int(rng_for(f"{__name__}.data").integers(2**31)))


def test_same_seed_same_data_other_seed_other_data(data: DemoData) -> None:
    again = generate(3000, applicants=300, seed=data.seed)
    other = generate(3000, applicants=300, seed=data.seed + 1)

    assert again.ids == data.ids
    assert np.array_equal(again.labels, data.labels)
    for party in PARTIES:
        assert np.array_equal(again.matrix(party), data.matrix(party))
    assert other.ids != data.ids


def test_ids_are_unique_valid_usccs_and_the_splits_do_not_overlap(data: DemoData) -> None:
    assert len(set(data.ids)) == data.n
    assert all(is_valid_uscc(e) for e in data.ids)
    assert len(data.applicants) == 300
    assert not set(data.applicants) & set(data.train)
    assert data.no_consent not in set(data.applicants) | set(data.train)
    assert (data.tables["market-registration"]["status"][data.applicants] == "active").all()


def test_model_columns_are_raw_and_within_their_declared_ranges(data: DemoData) -> None:
    for party in PARTIES:
        x = data.matrix(party)
        bounds = np.array([COLUMN_BOUNDS[c] for c in MODEL_COLUMNS[party]])
        assert np.isfinite(x).all()
        assert np.all(np.abs(x) <= bounds)
    for party, column in ((TAX, "tax_paid"), (COURT, "enforcement_amount")):
        yuan = data.tables[party][column]
        assert float(np.max(yuan)) > 1e6  # yuan amounts, not standardised or logged


def test_government_data_genuinely_improve_prediction() -> None:
    # A fixed seed, not the session's: these are statistics of one draw, seed-dependent by
    # nature. On 300 applicants (about 26 defaults) the bank's AUC varies from seed to seed with
    # sd 0.059 (measured over 1,000 seeds: outside (0.55, 0.75) for 16 % of them, the joint model
    # less than 0.1 above it for 3.6 %, below it for 1 seed); the demo's seed and sizes are in
    # docs/demo.md.
    data = generate(3000, applicants=300, seed=11)
    y, test = data.labels, data.applicants
    bank = fit_logistic(data.matrix(BANK)[data.train], y[data.train])
    joint_x = np.hstack([data.matrix(p) for p in PARTIES])
    joint = fit_logistic(joint_x[data.train], y[data.train])

    bank_auc = auc(y[test], bank.logits(data.matrix(BANK)[test]))
    joint_auc = auc(y[test], joint.logits(joint_x[test]))

    assert 0.55 < bank_auc < 0.75
    assert joint_auc > bank_auc + 0.1
    assert 0.03 < y.mean() < 0.2


def test_tables_written_in_three_formats_read_back_by_the_sources(
    data: DemoData,
    tmp_path: Path,
) -> None:
    files = write_tables(data, tmp_path)

    assert {kind for kind, _, _ in files.values()} == {"csv", "parquet", "sqlite"}
    position = {e: i for i, e in enumerate(data.ids)}
    for party in PARTIES:
        kind, path, table = files[party]
        columns = list(MODEL_COLUMNS[party])
        source = open_source(SourceSpec(kind, str(path), table))
        keys: list[str] = []
        values = []
        for chunk in source.chunks("uscc", columns):
            keys.extend(chunk.keys)
            values.append(np.column_stack([chunk.columns[c] for c in columns]))
        rows = np.array([position[k] for k in keys])
        assert sorted(rows.tolist()) == list(range(data.n))
        assert rows.tolist() != list(range(data.n))  # shuffled: only the USCC joins
        assert np.allclose(np.vstack(values), data.matrix(party)[rows])
    # The bank's training set: its earlier applicants only, with their outcome.
    kind, path, table = files[BANK_OUTCOMES]
    source = open_source(SourceSpec(kind, str(path), table))
    keys, labels = [], []
    for chunk in source.chunks("uscc", [LABEL]):
        keys.extend(chunk.keys)
        labels.extend(chunk.columns[LABEL].tolist())
    rows = np.array([position[k] for k in keys])
    assert sorted(rows.tolist()) == data.train.tolist()
    assert np.array_equal(np.array(labels), data.labels[rows])


@given(
    st.lists(st.tuples(st.booleans(), st.integers(-5, 5)), min_size=2, max_size=40).filter(
        lambda pairs: len({y for y, _ in pairs}) == 2
    )
)
def test_auc_is_the_probability_a_positive_outranks_a_negative(
    pairs: list[tuple[bool, int]],
) -> None:
    labels = np.array([y for y, _ in pairs])
    scores = np.array([float(s) for _, s in pairs])
    wins = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(scores[labels], scores[~labels])
    ]

    assert auc(labels, scores) == pytest.approx(np.mean(wins))
    fpr, tpr = roc_curve(labels, scores)
    assert np.trapezoid(tpr, fpr) == pytest.approx(np.mean(wins))


def test_fit_recovers_a_known_model(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50_000, 3)) * [1.0, 5.0, 0.5] + [0, 10, 0]
    w = np.array([0.8, -0.3, 1.0])
    y = (rng.random(50_000) < logistic(-0.5 + x @ w)).astype(int)
    # The tolerance: six standard errors of the maximum-likelihood estimate, from the Fisher
    # information at the true model (about 0.19 for the intercept, 0.12, 0.028 and 0.23 for the
    # weights); the estimate is normal at this size, so |error| > 6 SE has odds about 2e-9 each.
    design = np.column_stack([np.ones(len(x)), x])
    p = logistic(-0.5 + x @ w)
    se = np.sqrt(np.diag(np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))))

    fit = fit_logistic(x, y, l2=0.0)

    assert abs(fit.intercept - -0.5) <= 6 * se[0]
    assert np.all(np.abs(fit.weights - w) <= 6 * se[1:])
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.zeros(50_000))
