"""Catalog: grade floors on tiers, strict (de)serialisation, DSP export, visibility."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from trusted_space import dsp
from trusted_space.catalog import (
    TS_NAMESPACE,
    Caller,
    DataResource,
    Dataset,
    Field,
    FieldType,
    KeyKind,
    PiCategory,
    Responsibility,
    Table,
    Tier,
    allowed_tiers,
    check_grade_floor,
    list_datasets,
    load_dataset,
    publish,
    to_dsp_catalog,
    to_dsp_dataset,
    visible_datasets,
)
from trusted_space.errors import ConflictError, GradeFloorError, NotFoundError, ValidationError
from trusted_space.events import EVENT_LOG, decode_event
from trusted_space.store import MemoryStore


def offer(n: int = 1) -> dict[str, Any]:
    return {
        "@id": f"urn:uuid:00000000-0000-4000-8000-00000000000{n}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": "pre-loan-review"}
                ],
            }
        ],
    }


def make_dataset(
    grade: int = 3, tier: Tier = Tier.ZONE, *, ds_id: str = "urn:uuid:ds-tax", **kw: Any
) -> Dataset:
    table = Table(
        "tax_paid",
        (
            Field("uscc", FieldType.STRING, 1, "enterprise"),
            Field("year", FieldType.INT, 1),
            Field("tax_paid", FieldType.FLOAT, grade, "tax paid in CNY"),
            Field("owner_id_no", FieldType.STRING, 1, "ID", pi_category=PiCategory.C3),
        ),
        "annual tax paid",
    )
    return Dataset(
        id=ds_id,
        owner="tax-bureau",
        title="Annual tax paid",
        responsibility=Responsibility("resp-1", "Tax collection", "Tax Collection Law art. 1"),
        resource=DataResource("res-1", "Tax records"),
        table=table,
        tier=tier,
        key_column="uscc",
        key_kind=KeyKind.USCC,
        description="Tax paid per enterprise and year",
        keywords=("tax", "finance"),
        offer_ids=(offer()["@id"],),
        **kw,
    )


GRADE_FLOOR = {
    1: {Tier.UNCONDITIONAL, Tier.CONDITIONAL, Tier.ZONE},
    2: {Tier.CONDITIONAL, Tier.ZONE},
    3: {Tier.ZONE},
    4: {Tier.ZONE},
    5: set(),
}


@pytest.mark.parametrize("grade", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tier", list(Tier))
def test_grade_floor_table(grade: int, tier: Tier) -> None:
    ds = make_dataset(grade, tier)
    assert (tier in allowed_tiers(grade)) == (tier in GRADE_FLOOR[grade])
    store = MemoryStore()
    with store.transaction() as tx:
        if tier in GRADE_FLOOR[grade]:
            check_grade_floor(ds)
            publish(tx, ds, [offer()])
        else:
            with pytest.raises(GradeFloorError) as info:
                publish(tx, ds, [offer()])
            assert "tax_paid" in str(info.value)
            assert tx.get("dataset", ds.id) is None


def test_grade_5_never_offered_message() -> None:
    with pytest.raises(GradeFloorError, match="never offered"):
        check_grade_floor(make_dataset(5, Tier.ZONE))


@pytest.mark.parametrize("bad", [0, 6, True, "3"])
def test_bad_grade_refused(bad: Any) -> None:
    with pytest.raises(ValidationError, match="grade"):
        Field("x", FieldType.INT, bad)


def test_json_round_trip() -> None:
    ds = make_dataset()
    assert Dataset.from_json(json.loads(json.dumps(ds.to_json()))) == ds


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["table"]["fields"][2].__setitem__("grade", 9), "dataset.table.fields[2]"),
        (lambda d: d["table"]["fields"][1].__setitem__("type", "blob"), "dataset.table.fields[1]"),
        (lambda d: d.__setitem__("tier", "open"), "dataset.tier"),
        (lambda d: d.__setitem__("owner", "Tax Bureau"), "dataset.owner"),
        (lambda d: d.__setitem__("extra", 1), "dataset: unknown member extra"),
        (lambda d: d.pop("table"), "dataset: missing table"),
        (lambda d: d["responsibility"].pop("title"), "dataset.responsibility: missing title"),
        (lambda d: d.__setitem__("keyColumn", "nope"), "dataset.keyColumn"),
        (lambda d: d.__setitem__("keywords", "tax"), "dataset.keywords"),
        (lambda d: d["table"]["fields"][0].__setitem__("piCategory", "C9"), "piCategory"),
    ],
)
def test_strict_parsing_names_the_path(mutate: Any, path: str) -> None:
    doc = copy.deepcopy(make_dataset().to_json())
    mutate(doc)
    with pytest.raises(ValidationError) as info:
        Dataset.from_json(doc)
    assert path in str(info.value)


def test_duplicate_field_and_numeric_key_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate field"):
        Table("t", (Field("a", FieldType.INT, 1), Field("a", FieldType.INT, 1)))
    with pytest.raises(ValidationError, match="must be a string"):
        Dataset(**{**make_dataset().__dict__, "key_column": "year"})


def test_publish_stores_and_records_event() -> None:
    store = MemoryStore()
    ds = make_dataset()
    with store.transaction() as tx:
        published = publish(tx, ds, [offer()])
    with store.transaction() as tx:
        loaded = load_dataset(tx, ds.id)
        assert loaded == published
        assert list_datasets(tx) == [published]
        event = decode_event(0, tx.log_entries(EVENT_LOG, 0, 1)[0])
    assert event.kind == "dataset.published"
    assert event.body["datasetId"] == ds.id and event.body["maxGrade"] == 3


def test_publish_twice_conflicts_and_offer_ids_must_match() -> None:
    store = MemoryStore()
    ds = make_dataset()
    with store.transaction() as tx:
        publish(tx, ds, [offer()])
    with store.transaction() as tx, pytest.raises(ConflictError):
        publish(tx, ds, [offer()])
    with store.transaction() as tx, pytest.raises(ValidationError, match="offerIds"):
        publish(tx, make_dataset(ds_id="urn:uuid:other"), [offer(2)])
    with store.transaction() as tx, pytest.raises(NotFoundError):
        load_dataset(tx, "urn:uuid:nothing")


def test_offer_with_target_refused() -> None:
    with pytest.raises(ValidationError, match="no target"):
        to_dsp_dataset(make_dataset(), [{**offer(), "target": "x"}])


def test_dsp_dataset_validates_and_carries_grades() -> None:
    out = to_dsp_dataset(make_dataset(), [offer()])
    dsp.validate(out, "catalog/dataset-schema.json")
    assert out[TS_NAMESPACE + "tier"] == "zone"
    assert out[TS_NAMESPACE + "maxGrade"] == 3
    assert out[TS_NAMESPACE + "keyKind"] == "uscc"
    assert out["distribution"][0]["format"] == "TrustedSpace-JointComputation"


def test_dsp_catalog_validates() -> None:
    entries = [
        (make_dataset(3, Tier.ZONE), [offer()]),
        (make_dataset(1, Tier.UNCONDITIONAL, ds_id="urn:uuid:open"), [offer()]),
    ]
    out = to_dsp_catalog("tax-bureau", entries, "https://tax.example/dsp")
    dsp.validate(out, "catalog/catalog-schema.json")
    assert [d["@id"] for d in out["dataset"]] == ["urn:uuid:ds-tax", "urn:uuid:open"]
    assert out["dataset"][1]["distribution"][0]["accessService"] == out["service"][0]["@id"]
    empty = to_dsp_catalog("tax-bureau", [], "https://tax.example/dsp")
    dsp.validate(empty, "catalog/catalog-schema.json")


def test_visibility() -> None:
    datasets = [
        make_dataset(1, Tier.UNCONDITIONAL, ds_id="urn:uuid:a"),
        make_dataset(2, Tier.CONDITIONAL, ds_id="urn:uuid:b"),
        make_dataset(3, Tier.ZONE, ds_id="urn:uuid:c"),
    ]
    anonymous = visible_datasets(datasets, Caller())
    assert [d.id for d in anonymous] == ["urn:uuid:a"]
    outsider = visible_datasets(datasets, Caller("bank-x", member=False))
    assert [d.id for d in outsider] == ["urn:uuid:a"]
    member = visible_datasets(datasets, Caller("bank-a", member=True))
    assert [d.id for d in member] == ["urn:uuid:a", "urn:uuid:b", "urn:uuid:c"]
