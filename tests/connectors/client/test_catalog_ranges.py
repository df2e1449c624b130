"""The declared column ranges an analyst's node reads from the space's catalog."""

from __future__ import annotations

from connectors.client.catalog import declared_ranges
from trusted_space.catalog import TS_NAMESPACE, Field, FieldType, Table


def _entry(owner: str, ds: str, fields: list[Field]) -> dict[str, object]:
    return {
        "@id": ds,
        TS_NAMESPACE + "owner": owner,
        TS_NAMESPACE + "table": Table("t", tuple(fields)).to_json(),
    }


def test_ranges_of_the_named_datasets_only() -> None:
    catalog = {
        "participantId": "operator",
        "catalog": [
            {
                "participantId": "tax",
                "dataset": [
                    _entry(
                        "tax",
                        "ds-tax",
                        [
                            Field("id", FieldType.STRING, 1),
                            Field("tax_paid", FieldType.FLOAT, 3, bound=2e6),
                            Field("employees", FieldType.INT, 3),
                        ],
                    ),
                    _entry("tax", "ds-other", [Field("x", FieldType.FLOAT, 3, bound=9.0)]),
                ],
            },
            {
                "participantId": "court",
                "dataset": {
                    "@id": "ds-court",
                    TS_NAMESPACE + "owner": "court",
                    TS_NAMESPACE + "table": {"name": "t", "fields": []},
                },
            },
        ],
    }
    # the court's entry has an empty table: it does not parse and contributes nothing
    ranges = declared_ranges(catalog, {"tax": "ds-tax", "court": "ds-court"})
    assert ranges == {"tax": {"tax_paid": 2e6}}
    assert declared_ranges(catalog, {"tax": "ds-missing"}) == {}
