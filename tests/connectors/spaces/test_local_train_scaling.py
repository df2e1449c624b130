"""Local training on raw magnitudes: each party's own standardisation, and the fold back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from connectors.spaces.local import LocalParty
from connectors.spaces.local_train import fold_model, standardise_party


def _write(path: Path, header: list[str], rows: list[list[object]]) -> LocalParty:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])
    return LocalParty(path.stem, path)


def test_a_raw_party_is_standardised_and_the_model_folds_back_exactly(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    amounts = np.rint(rng.uniform(0, 1.7e6, 50))
    ages = np.rint(rng.uniform(20, 70, 50))
    rows = [[f"e{i}", a, g, 1] for i, (a, g) in enumerate(zip(amounts, ages, strict=True))]
    party = _write(tmp_path / "tax.csv", ["id", "amount", "age", "flag"], rows)
    out = tmp_path / "std"
    out.mkdir()

    copy, stats = standardise_party(party, "id", ["amount", "age", "flag"], [], out)

    with copy.path.open(encoding="utf-8", newline="") as handle:
        got = list(csv.reader(handle))
    assert got[0] == ["id", "amount", "age", "flag"]
    z = np.array([[float(v) for v in r[1:]] for r in got[1:]])
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(z[:, :2].std(axis=0), 1.0)
    assert stats["flag"] == (1.0, 1.0)  # a constant column is only centred
    # A model on the standardised columns gives the same logits as its fold on the raw ones.
    w = {"amount": 0.7, "age": -0.3, "flag": 0.0}
    std_model = {"intercept": -1.1, "link": "logistic", "weights": {"tax": w}}
    raw_model = fold_model(std_model, {"tax": stats})
    raw = np.column_stack([amounts, ages, np.ones(50)])
    folded = raw_model["intercept"] + raw @ np.array(list(raw_model["weights"]["tax"].values()))
    assert np.allclose(folded, -1.1 + z @ np.array(list(w.values())), atol=1e-9)


def test_a_party_already_on_a_standard_scale_is_left_as_it_is(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    x = rng.normal(0, 1, (40, 2))
    party = _write(tmp_path / "gov.csv", ["id", "a", "b"], [[f"e{i}", *r] for i, r in enumerate(x)])
    out = tmp_path / "std"
    out.mkdir()
    _, stats = standardise_party(party, "id", ["a", "b"], [], out)
    assert stats == {}
    assert fold_model({"intercept": 0.5, "weights": {"gov": {"a": 1.0}}}, {"gov": stats}) == {
        "intercept": 0.5,
        "weights": {"gov": {"a": 1.0}},
    }
