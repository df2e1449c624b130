"""Known answers: every example message published with DSP 2025-1 validates; broken ones do not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trusted_space import dsp
from trusted_space.errors import SchemaValidationError

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "dsp_examples"


def _schema_for(path: Path) -> str | None:
    area, stem = path.parent.name, path.stem
    for candidate in (stem, stem.rsplit("_", 1)[0], stem.removesuffix("-full")):
        name = f"{area}/{candidate}-schema.json"
        if name in dsp.schema_names():
            return name
    return None


CASES = [(p, _schema_for(p)) for p in sorted(EXAMPLES.glob("*/*.json"))]
CASES = [(p, s) for p, s in CASES if s is not None]


def test_examples_found() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize(("path", "schema"), CASES, ids=[p.name for p, _ in CASES])
def test_published_example_validates(path: Path, schema: str) -> None:
    dsp.validate(json.loads(path.read_text()), schema)


@pytest.mark.parametrize(("path", "schema"), CASES, ids=[p.name for p, _ in CASES])
def test_example_missing_a_required_member_is_refused(path: Path, schema: str) -> None:
    message = json.loads(path.read_text())
    # Every message requires @context, except the version document (protocolVersions).
    message.pop("@context" if "@context" in message else "protocolVersions")
    with pytest.raises(SchemaValidationError) as info:
        dsp.validate(message, schema)
    assert info.value.errors


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError):
        dsp.validate({}, "negotiation/no-such")
