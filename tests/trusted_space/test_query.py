"""Model files and score queries: strict parsing that names the JSON path, links, round trips."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ValidationError
from trusted_space.queries.score import Link, Model, ScoreQuery, ScoreResult
from trusted_space.uscc import generate_uscc

MODEL = {
    "intercept": -1.25,
    "link": "logistic",
    "weights": {
        "tax-bureau": {"tax_paid": 0.5, "employees": -0.25},
        "court": {"cases": 1.5},
        "bank-a": {"loan_balance": 0.125},
    },
}


def query_doc(**kw: Any) -> dict[str, Any]:
    return {
        "purpose": "pre-loan-review",
        "protocol": "ckks",
        "mode": "analyst-held",
        "model": copy.deepcopy(MODEL),
        "agreements": {"tax-bureau": "urn:uuid:ag-1", "court": "urn:uuid:ag-2"},
        "datasets": {"tax-bureau": "ds-1", "court": "ds-2", "bank-a": "ds-own"},
        "entities": ["e-1", "e-2"],
    } | kw


def test_model_parses_in_file_order() -> None:
    model = Model.from_json(MODEL)
    assert model.parties == ("tax-bureau", "court", "bank-a")
    assert model.columns("tax-bureau") == ("tax_paid", "employees")
    assert model.columns("nobody") == ()
    assert model.weights_of("tax-bureau").tolist() == [0.5, -0.25]
    assert model.to_json() == MODEL
    assert Model.from_json(json.loads(json.dumps(model.to_json()))) == model


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.pop("intercept"), "$: missing intercept"),
        (lambda d: d.__setitem__("extra", 1), "$: unknown member extra"),
        (lambda d: d.__setitem__("intercept", "1"), "$.intercept"),
        (lambda d: d.__setitem__("intercept", math.inf), "$.intercept"),
        (lambda d: d.__setitem__("link", "probit"), "$.link"),
        (lambda d: d.__setitem__("link", "scorecard"), "$.link"),
        (lambda d: d.__setitem__("link", {"scorecard": {"offset": 600}}), "$.link.scorecard"),
        (
            lambda d: d.__setitem__("link", {"scorecard": {"offset": 600, "factor": 0}}),
            "$.link.scorecard.factor",
        ),
        (lambda d: d["weights"]["court"].__setitem__("cases", None), "$.weights.court.cases"),
        (lambda d: d["weights"]["court"].__setitem__("cases", True), "$.weights.court.cases"),
        (lambda d: d["weights"].__setitem__("Court Office", {}), "$.weights.Court Office"),
        (lambda d: d["weights"].__setitem__("court", [1.0]), "$.weights.court"),
        (lambda d: d.__setitem__("weights", []), "$.weights"),
        (lambda d: d.__setitem__("id", ""), "$.id"),
    ],
)
def test_model_errors_name_the_path(mutate: Any, path: str) -> None:
    doc = copy.deepcopy(MODEL)
    mutate(doc)
    with pytest.raises(ValidationError) as info:
        Model.from_json(doc)
    assert path in str(info.value)


def test_links() -> None:
    z = np.array([-800.0, -2.0, 0.0, 2.0, 800.0])
    p = Link("logistic").apply(z)
    assert p.tolist()[2] == 0.5
    assert np.all(np.isfinite(p)) and p[0] == 0.0 and p[-1] == 1.0
    assert np.allclose(p[1:4], 1 / (1 + np.exp(-z[1:4])))
    assert Link("identity").apply(z).tolist() == z.tolist()
    card = Link.from_json({"scorecard": {"offset": 600, "factor": -28.85}})
    assert card.apply([0.0, 1.0]).tolist() == [600.0, 600.0 - 28.85]
    assert card.to_json() == {"scorecard": {"offset": 600.0, "factor": -28.85}}
    with pytest.raises(ValidationError):
        Link("identity", offset=3.0)


@given(z=st.lists(st.floats(-700, 700), min_size=1, max_size=50))
def test_logistic_is_monotone_and_symmetric(z: list[float]) -> None:
    link = Link("logistic")
    arr = np.array(sorted(z))
    p = link.apply(arr)
    assert np.all(np.diff(p) >= 0)
    assert np.allclose(link.apply(-arr), 1.0 - p, atol=1e-12)


def test_query_round_trip() -> None:
    q = ScoreQuery.from_json(query_doc(id="urn:uuid:q-7", missing="impute", partialBound=16))
    assert q.providers == ("court", "tax-bureau")
    again = ScoreQuery.from_json(json.loads(json.dumps(q.to_json())))
    assert again == q
    assert q.to_json()["kind"] == "score" and q.to_json()["v"] == 1


def test_query_ids_are_fresh() -> None:
    assert ScoreQuery.from_json(query_doc()).id != ScoreQuery.from_json(query_doc()).id


def test_uscc_entities_are_checked() -> None:
    good = [generate_uscc(), generate_uscc()]
    q = ScoreQuery.from_json(query_doc(entities=good, idKind="uscc"))
    assert q.entities == tuple(good)
    bad = good[0][:-1] + ("0" if good[0][-1] != "0" else "1")
    with pytest.raises(ValidationError) as info:
        ScoreQuery.from_json(query_doc(entities=[good[1], bad], idKind="uscc"))
    assert "$.entities[1]" in str(info.value)


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (query_doc(entities=["a", "a"]), "$.entities[1]"),
        (query_doc(entities=[]), "$.entities"),
        (query_doc(entities=["a\nb"]), "$.entities[0]"),
        (query_doc(entities="a"), "$.entities"),
        (query_doc(protocol="rsa"), "$.protocol"),
        (query_doc(mode="shared"), "$.mode"),
        (query_doc(missing="zero"), "$.missing"),
        (query_doc(idKind="lei"), "$.idKind"),
        (query_doc(featureBound=64), "$.featureBound: not a query parameter"),
        (query_doc(kind="aggregate"), "$.kind"),
        (query_doc(v=2), "$.v"),
        (query_doc(surprise=True), "$: unknown member surprise"),
        (query_doc(agreements={}), "$.agreements"),
        (query_doc(agreements={"Tax": "x"}), "$.agreements.Tax"),
        (query_doc(datasets={"tax-bureau": "ds-1"}), "$.datasets"),
        (query_doc(model={**MODEL, "intercept": "x"}), "$.model.intercept"),
        (
            query_doc(model={**MODEL, "weights": {"tax-bureau": {"a": 1.0}}}),
            "$.model.weights.court",
        ),
        (
            query_doc(model={**MODEL, "weights": {**MODEL["weights"], "elsewhere": {"a": 1.0}}}),
            "$.model.weights.elsewhere",
        ),
        (query_doc(mode="party-held"), "$.model.id"),
        (
            query_doc(mode="party-held", model={**MODEL, "id": "m-1"}),
            "$.model.weights.tax-bureau",
        ),
    ],
)
def test_query_errors_name_the_path(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        ScoreQuery.from_json(doc)
    assert path in str(info.value)


def test_party_held_query_with_only_analyst_weights() -> None:
    model = {"intercept": 0.0, "link": "identity", "weights": {"bank-a": {"x": 1.0}}, "id": "m-1"}
    q = ScoreQuery.from_json(query_doc(mode="party-held", model=model))
    assert q.model.id == "m-1" and q.model.parties == ("bank-a",)


_weights = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.floats(-100, 100, allow_nan=False),
    min_size=1,
    max_size=4,
)


@given(
    intercept=st.floats(-10, 10),
    parties=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{2,10}", fullmatch=True), _weights, max_size=4
    ),
    card=st.none() | st.tuples(st.floats(-1000, 1000), st.floats(1, 100)),
)
def test_model_json_round_trip(
    intercept: float, parties: dict[str, dict[str, float]], card: tuple[float, float] | None
) -> None:
    link: Any = (
        "logistic" if card is None else {"scorecard": {"offset": card[0], "factor": card[1]}}
    )
    doc = {"intercept": intercept, "link": link, "weights": parties}
    model = Model.from_json(doc)
    assert Model.from_json(json.loads(json.dumps(model.to_json()))) == model
    for party, columns in parties.items():
        assert model.columns(party) == tuple(columns)


def test_result_json() -> None:
    result = ScoreResult(
        query_id="q",
        entities=("a", "b"),
        logits=np.array([0.0, 1.0]),
        outputs=np.array([0.5, 0.75]),
        missing={"court": ("b",)},
        receipts={"court": {"index": 3}},
        timings={"total": 0.1},
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["logits"] == [0.0, 1.0] and doc["missing"] == {"court": ["b"]}
