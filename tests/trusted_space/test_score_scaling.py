"""Raw magnitudes in joint scores: per-column scaling, the stated precision, honest refusals.

Every protocol and mode is checked against float64 plaintext on columns of any magnitude
(``±10^-12`` … ``±10^12``), zero and constant columns, weights from ``10^-12`` to ``10^3`` (and
zero), one to a few dozen entities, a provider that holds none of them (its published defaults
imputed): each logit is within the protocol's stated precision
(absolute for ``Σ|w·x| ≤ 100``, relative beyond), or the query is refused with a reason that
names a column — never a wrong number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import ckks, paillier
from trusted_space.catalog import Field, FieldType
from trusted_space.errors import ValidationError
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols import _common, register_operator, register_provider, run_score
from trusted_space.protocols.base import ScoreProtocol
from trusted_space.protocols.scaling import (
    STATED_PRECISION,
    check_party_partials,
    check_precision,
    logit_error_bound,
    scale_exponent,
    scaled_query,
)
from trusted_space.protocols.score import store_party_weights
from trusted_space.protocols.score.wire import ScoreOpen
from trusted_space.protocols.score_additive import AdditiveScore
from trusted_space.protocols.score_ckks import CkksScore
from trusted_space.protocols.score_paillier import PaillierScore
from trusted_space.queries.common import MODES
from trusted_space.queries.score import Link, Model, ScoreQuery
from trusted_space.transport import RemoteError

from ._joint import ANALYST, OPERATOR, PURPOSE, build_space, provide

RELATIVE = {"paillier": 1e-8, "ckks": 1e-6, "additive": 1e-6}
INTERCEPT = -0.75
PARTIAL_BOUND = ScoreQuery.__dataclass_fields__["partial_bound"].default


@pytest.fixture(scope="module")
def protocols() -> dict[str, ScoreProtocol]:
    return {
        "paillier": PaillierScore(paillier.generate_keypair(2048)),
        "ckks": CkksScore(ckks.SecretContext.generate()),
        "additive": AdditiveScore(),
    }


@dataclass(frozen=True)
class Column:
    values: np.ndarray[Any, Any]
    weight: float
    bound: float


@dataclass(frozen=True)
class Case:
    """Provider -> its columns, over ``n`` entities (every provider holds every entity but
    ``absent``, which holds none: each of its columns is its imputed default, a constant)."""

    n: int
    columns: dict[str, list[Column]]
    absent: str | None = None


@st.composite
def column(draw: st.DrawFn, n: int) -> Column:
    kind = draw(st.sampled_from(["raw", "raw", "raw", "integer", "zero", "constant"]))
    magnitude = 10.0 ** draw(st.integers(-12, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "raw":
        values = rng.uniform(-magnitude, magnitude, n)
    elif kind == "integer":  # counts and yuan amounts: non-negative whole numbers
        values = np.rint(rng.uniform(0, magnitude, n))
    elif kind == "zero":
        values = np.zeros(n)
    else:
        values = np.full(n, draw(st.sampled_from([-1.0, 1.0])) * magnitude)
    largest = float(np.max(np.abs(values)))
    bound = max(largest, magnitude) * draw(st.sampled_from([1.0, 1.5, 4.0, 1000.0]))
    if draw(st.booleans()):  # a sane model: each term |w·x| at most ~30
        term = 10.0 ** draw(st.floats(-6, 1.5))
        weight = min(max(term / bound, 1e-12), 1e3)
    else:  # any weight in the range
        weight = 10.0 ** draw(st.floats(-12, 3))
    weight *= draw(st.sampled_from([-1.0, 1.0, 0.0]) if draw(st.booleans()) else st.just(1.0))
    return Column(values, weight, bound)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n = draw(st.sampled_from([1, 1, 2, 3, 9, 40]))
    providers = draw(st.sampled_from([["tax-bureau"], ["tax-bureau", "court"]]))
    columns = {p: draw(st.lists(column(n), min_size=1, max_size=3)) for p in providers}
    absent = "court" if len(providers) == 2 and draw(st.booleans()) else None
    if absent is not None:  # its default: the column's first value, for every entity
        columns[absent] = [
            Column(np.full(n, c.values[0]), c.weight, c.bound) for c in columns[absent]
        ]
    return Case(n, columns, absent)


def _names(party: str, count: int) -> list[str]:
    return [f"{party.replace('-', '_')}_{j}" for j in range(count)]


def _run(case: Case, protocol: str, mode: str, proto: ScoreProtocol) -> tuple[Any, Any, Any]:
    """Build the space, run the score; returns (result or the exception, expected, Σ|w·x|)."""
    space = build_space(list(case.columns))
    register_operator(space.operator.node)
    keys = [f"ent-{i:05d}" for i in range(case.n)]
    agreements, datasets, ranges = {}, {}, {}
    weights: list[tuple[str, tuple[tuple[str, float], ...]]] = []
    expected = np.full(case.n, INTERCEPT)
    terms = np.zeros(case.n)
    for p, cols in case.columns.items():
        node = space.providers[p].node
        register_provider(node)
        node.operator = OPERATOR
        names = _names(p, len(cols))
        x = np.column_stack([c.values for c in cols])
        bounds = {name: c.bound for name, c in zip(names, cols, strict=True)}
        held, rows, impute = keys, x, None
        if p == case.absent:  # one row of someone else; every entity's values imputed
            held, rows = ["someone-else"], x[:1]
            impute = {name: float(c.values[0]) for name, c in zip(names, cols, strict=True)}
        ds, ag = provide(space, p, names, held, rows, ds_id=f"ds-{p}", bounds=bounds, impute=impute)
        assert ag is not None
        w = np.array([c.weight for c in cols])
        store_party_weights(
            node.store, ANALYST, "model-1", dict(zip(names, w.tolist(), strict=True))
        )
        agreements[p], datasets[p], ranges[p] = ag, ds, bounds
        if mode == "analyst-held":
            weights.append((p, tuple(zip(names, w.tolist(), strict=True))))
        expected = expected + x @ w
        terms = terms + np.abs(x) @ np.abs(w)
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol=protocol,
        mode=mode,
        model=Model(INTERCEPT, Link("logistic"), tuple(weights), id="model-1"),
        agreements=agreements,
        datasets=datasets,
        entities=tuple(keys),
        ranges=ranges,
        missing="fail" if case.absent is None else "impute",
    )
    try:
        result: Any = run_score(space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=proto)
    except (ValidationError, RemoteError) as exc:
        result = exc
    return result, expected, terms


def _worst_logit(case: Case) -> float:
    """``L = Σ |w|·2^e`` over every column: what the precision plan refuses by."""
    return sum(
        abs(c.weight) * 2.0 ** scale_exponent(c.bound)
        for cols in case.columns.values()
        for c in cols
    )


def _partial_bounds(case: Case) -> list[float]:
    """Each provider's ``Σ |w|·R``: what its party-held check refuses by."""
    return [sum(abs(c.weight) * c.bound for c in cols) for cols in case.columns.values()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
def test_logits_meet_the_stated_precision_or_the_query_names_the_column(
    protocol: str, mode: str, case: Case, protocols: dict[str, ScoreProtocol]
) -> None:
    result, expected, terms = _run(case, protocol, mode, protocols[protocol])
    if isinstance(result, Exception):
        # Refused: only for a reason naming a column, and only where the declared ranges make
        # the stated precision unreachable (a sane model is never refused).
        detail = str(result)
        assert "column '" in detail, detail
        if mode == "party-held":  # some provider's Σ|w|·R exceeds the default partialBound
            assert max(_partial_bounds(case)) > PARTIAL_BOUND, detail
            return
        bound = _worst_logit(case)
        terms_count = sum(len(c) for c in case.columns.values())
        assert logit_error_bound(protocol, bound, terms_count) > STATED_PRECISION[protocol]
        return
    if case.absent is not None:
        assert result.missing == {case.absent: tuple(f"ent-{i:05d}" for i in range(case.n))}
    error = np.abs(result.logits - expected)
    allowed = np.maximum(STATED_PRECISION[protocol], RELATIVE[protocol] * terms)
    assert bool(np.all(error <= allowed)), (error, allowed)


def test_a_sane_raw_model_is_never_refused() -> None:
    """Amounts to 1.7e6 with weights to 3e-7 beside flags: every protocol's plan accepts it."""
    model = Model(
        0.1,
        Link("logistic"),
        (("tax-bureau", (("amount", 3e-7), ("flag", 0.8), ("count", -0.02))),),
    )
    for protocol in PROTOCOLS:
        query = ScoreQuery(
            purpose=PURPOSE,
            protocol=protocol,
            mode="analyst-held",
            model=model,
            agreements={"tax-bureau": "ag"},
            datasets={"tax-bureau": "ds"},
            entities=("e1",),
            ranges={"tax-bureau": {"amount": 1e7, "flag": 1.0, "count": 500.0}},
        )
        scaled, exponents = scaled_query(query)
        assert exponents == {"tax-bureau": (24, 0, 9)}
        assert scaled.model.weights_of("tax-bureau").tolist() == [
            math.ldexp(3e-7, 24),
            0.8,
            math.ldexp(-0.02, 9),
        ]
        check_precision(scaled)  # no refusal


def test_an_unreachable_precision_is_refused_naming_the_column() -> None:
    model = Model(0.0, Link("identity"), (("court", (("fine", 500.0), ("flag", 1.0))),))
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol="additive",
        mode="analyst-held",
        model=model,
        agreements={"court": "ag"},
        datasets={"court": "ds"},
        entities=("e1",),
        ranges={"court": {"fine": 1e9, "flag": 1.0}},
    )
    with pytest.raises(ValidationError, match="column 'fine' of court"):
        check_precision(scaled_query(query)[0])


@pytest.mark.parametrize(
    ("bound", "exponent"),
    [(1.0, 0), (1.5, 1), (2.0, 1), (3.0, 2), (0.3, -1), (1.7e6, 21), (1e12, 40), (2.0**60, 60)],
)
def test_the_scale_is_the_least_power_of_two_at_or_above_the_range(
    bound: float, exponent: int
) -> None:
    assert scale_exponent(bound) == exponent
    assert 2.0**exponent >= bound > 2.0 ** (exponent - 1)


def _one_provider(
    protocol: str, values: list[float], bound: float | None, query_range: float | None, **kw: Any
) -> tuple[Any, ScoreQuery]:
    space = build_space(["court"])
    register_operator(space.operator.node)
    node = space.providers["court"].node
    register_provider(node)
    node.operator = OPERATOR
    keys = [f"ent-{i}" for i in range(len(values))]
    ds, ag = provide(
        space, "court", ["fine"], keys, np.array(values)[:, None], bounds={"fine": bound}
    )
    assert ag is not None
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol=protocol,
        mode="analyst-held",
        model=Model(0.0, Link("identity"), (("court", (("fine", 1e-3),)),)),
        agreements={"court": ag},
        datasets={"court": ds},
        entities=tuple(keys),
        ranges={} if query_range is None else {"court": {"fine": query_range}},
        **kw,
    )
    return space, query


def test_a_value_outside_the_catalogs_range_is_refused_without_the_value() -> None:
    """No bound oracle: the message is the same whatever the analyst declares."""
    details = set()
    for feature_bound in (64.0, 1e4, 1e8):
        space, query = _one_provider(
            "additive", [12.5, 7777.0], 1000.0, 1000.0, feature_bound=feature_bound
        )
        with pytest.raises(RemoteError) as info:
            run_score(space.transport(ANALYST), ANALYST, OPERATOR, query)
        assert info.value.status == 400
        details.add(info.value.problem["detail"])
    assert details == {"column 'fine' has values outside its declared range in the catalog"}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_a_column_without_a_declared_range_is_refused_whatever_its_values(protocol: str) -> None:
    """No bound oracle on an undeclared column: the analyst's range never meets a value."""
    details = set()
    for values in ([0.5, 1.5], [12.5, 7.0e6]):
        for query_range in (16.0, 1024.0):
            space, query = _one_provider(protocol, values, None, query_range)
            with pytest.raises(RemoteError) as info:
                run_score(space.transport(ANALYST), ANALYST, OPERATOR, query)
            assert info.value.status == 400
            details.add(info.value.problem["detail"])
    assert details == {
        "column 'fine' declares no range in the catalog: a score cannot use it until its "
        "provider declares the field's bound"
    }


def test_a_party_held_column_without_a_declared_range_is_refused() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValidationError, match="column 'b' declares no range in the catalog"):
        check_party_partials(x, {"a": 0.5, "b": 0.25}, {"a": 8.0, "b": None}, 4096.0)


def test_a_scale_other_than_the_catalogs_is_refused() -> None:
    space, query = _one_provider("additive", [12.5, 300.0], 1000.0, 5000.0)
    with pytest.raises(RemoteError) as info:
        run_score(space.transport(ANALYST), ANALYST, OPERATOR, query)
    assert info.value.status == 400
    assert "column 'fine': the query's scale 2^13 is not the catalog's" in str(
        info.value.problem["detail"]
    )


def test_a_field_bound_is_checked_and_round_trips() -> None:
    field = Field("amount", FieldType.FLOAT, 3, bound=1.7e6)
    assert Field.from_json(field.to_json()) == field
    for bad in (0, -1.0, math.inf, True, 2.0**61):
        with pytest.raises(ValidationError, match="bound"):
            Field("amount", FieldType.FLOAT, 3, bound=bad)
    with pytest.raises(ValidationError, match="only numeric"):
        Field("name", FieldType.STRING, 3, bound=1.0)


@pytest.fixture
def blocks_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block holds one entity (CKKS blocks stay whole ciphertexts: its own rule)."""
    monkeypatch.setattr(_common, "DEFAULT_BLOCK_ROWS", 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_degenerate_inputs_blocks_of_one_and_a_provider_holding_nobody(
    protocol: str, mode: str, protocols: dict[str, ScoreProtocol], blocks_of_one: None
) -> None:
    """Zero and constant columns, a zero weight, blocks of one entity, and a provider that holds
    none of the entities (every value imputed from its published default)."""
    space = build_space(["tax-bureau", "court"])
    register_operator(space.operator.node)
    keys = ["ent-0", "ent-1", "ent-2"]
    tax = np.array([[0.0, 7.0, 1_500_000.0], [0.0, 7.0, 0.0], [0.0, 7.0, 2.5]])
    tax_w = {"flag": 0.9, "constant": 0.0, "amount": 3e-7}
    court_w = {"judgments": -0.4}
    agreements, datasets = {}, {}
    for p, x, w, held, impute in (
        ("tax-bureau", tax, tax_w, keys, None),
        ("court", np.array([[3.0]]), court_w, ["someone-else"], {"judgments": 2.0}),
    ):
        node = space.providers[p].node
        register_provider(node)
        node.operator = OPERATOR
        bounds = {"flag": 1.0, "constant": 7.0, "amount": 2e6, "judgments": 10.0}
        ds, ag = provide(
            space,
            p,
            list(w),
            held,
            x,
            ds_id=f"ds-{p}",
            impute=impute,
            bounds={c: bounds[c] for c in w},
        )
        assert ag is not None
        store_party_weights(node.store, ANALYST, "model-1", w)
        agreements[p], datasets[p] = ag, ds
    weights = (
        (("tax-bureau", tuple(tax_w.items())), ("court", tuple(court_w.items())))
        if mode == "analyst-held"
        else ()
    )
    query = ScoreQuery(
        purpose=PURPOSE,
        protocol=protocol,
        mode=mode,
        model=Model(INTERCEPT, Link("logistic"), weights, id="model-1"),
        agreements=agreements,
        datasets=datasets,
        entities=tuple(keys),
        missing="impute",
        ranges={
            "tax-bureau": {"flag": 1.0, "constant": 7.0, "amount": 2e6},
            "court": {"judgments": 10.0},
        },
    )
    result = run_score(
        space.transport(ANALYST), ANALYST, OPERATOR, query, protocol=protocols[protocol]
    )
    expected = INTERCEPT + tax @ np.array(list(tax_w.values())) + 2.0 * -0.4
    assert result.missing == {"court": tuple(keys)}
    assert float(np.max(np.abs(result.logits - expected))) <= STATED_PRECISION[protocol]


def test_query_ranges_round_trip_and_bad_ones_name_the_path() -> None:
    doc = {
        "purpose": PURPOSE,
        "protocol": "additive",
        "mode": "analyst-held",
        "model": {"intercept": 0.0, "link": "logistic", "weights": {"court": {"fine": 1e-4}}},
        "agreements": {"court": "ag"},
        "datasets": {"court": "ds"},
        "entities": ["e1"],
        "ranges": {"court": {"fine": 25000}},
    }
    query = ScoreQuery.from_json(doc)
    assert query.ranges == {"court": {"fine": 25000.0}}
    assert ScoreQuery.from_json(query.to_json()) == query
    for bad, path in (
        ({"court": {"fine": 0}}, "$.ranges.court.fine"),
        ({"court": {"fine": "big"}}, "$.ranges.court.fine"),
        ({"court": [1]}, "$.ranges.court"),
        ([1], "$.ranges"),
    ):
        with pytest.raises(ValidationError, match=path.replace("$", r"\$").replace(".", r"\.")):
            ScoreQuery.from_json({**doc, "ranges": bad})


def test_score_open_carries_one_scale_exponent_per_column() -> None:
    opening = ScoreOpen(
        query="urn:uuid:q-1",
        protocol="additive",
        mode="analyst-held",
        purpose=PURPOSE,
        agreement="ag",
        dataset="ds",
        id_kind="opaque",
        missing="fail",
        operator=OPERATOR,
        contributors=("court",),
        entities=1,
        block=1,
        feature_bound=1.0,
        partial_bound=4096.0,
        columns=("fine", "flag"),
        scales=(15, 0),
    )
    header = opening.to_header()
    assert header["scales"] == [15, 0]
    assert ScoreOpen.from_header(header) == opening
    for bad in ([15], [15, 0.5], [15, True], [61, 0], "15,0"):
        with pytest.raises(ValidationError, match=r"header\.scales"):
            ScoreOpen.from_header({**header, "scales": bad})
