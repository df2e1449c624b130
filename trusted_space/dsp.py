"""Validation of Dataspace Protocol 2025-1 messages against the vendored JSON schemas.

Every DSP message a node emits or accepts is checked here, so that interoperability with other
connectors (Eclipse Dataspace Components and others) is a tested property rather than a hope. The
schemas live in ``trusted_space/dsp_schemas`` (Apache-2.0, unchanged) and refer to each other by
their ``$id`` under ``https://w3id.org/dspace/2025/1/``; a local registry resolves those ids, so no
schema is ever fetched from the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft201909Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

from trusted_space.errors import SchemaValidationError

__all__ = ["DSP_CONTEXT", "DSP_CONTEXT_URL", "DSP_NAMESPACE", "schema_names", "validate"]

DSP_NAMESPACE = "https://w3id.org/dspace/2025/1/"
DSP_CONTEXT_URL = DSP_NAMESPACE + "context.jsonld"
DSP_CONTEXT: list[str] = [DSP_CONTEXT_URL]
_AREAS = ("catalog", "common", "negotiation", "transfer")


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    root = resources.files("trusted_space") / "dsp_schemas"
    out: dict[str, dict[str, Any]] = {}
    for area in _AREAS:
        for entry in (root / area).iterdir():
            if entry.name.endswith("-schema.json"):
                doc = json.loads(entry.read_text(encoding="utf-8"))
                out[f"{area}/{entry.name}"] = _fix_refs(doc)
    return out


def _fix_refs(node: Any) -> Any:
    """Repair ``"$ref": "...#definitions/X"`` (missing slash) found in the 2025-1 transfer schemas.

    The published files are kept unchanged on disk; the malformed fragment is not a valid JSON
    pointer, so a strict resolver refuses it. We read it as the pointer it obviously means.
    """
    if isinstance(node, dict):
        return {
            k: (v.replace("#definitions/", "#/definitions/") if k == "$ref" else _fix_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_fix_refs(v) for v in node]
    return node


@cache
def _registry() -> Registry[Any]:
    pairs = [
        (doc["$id"], Resource.from_contents(doc, default_specification=DRAFT201909))
        for doc in _schemas().values()
    ]
    return Registry().with_resources(pairs)


@cache
def _validator(name: str) -> Draft201909Validator:
    schemas = _schemas()
    if name not in schemas:
        raise KeyError(f"unknown DSP schema {name!r}; known: {sorted(schemas)}")
    return Draft201909Validator(schemas[name], registry=_registry())


def schema_names() -> list[str]:
    """Names accepted by :func:`validate`, e.g. ``catalog/catalog-schema.json``."""
    return sorted(_schemas())


def validate(message: Mapping[str, Any], schema: str) -> None:
    """Raise :class:`SchemaValidationError` unless ``message`` validates against ``schema``.

    Args:
        message: the JSON-LD message as a plain JSON object.
        schema: a name from :func:`schema_names`; the ``-schema.json`` suffix may be omitted.
    """
    name = schema if schema.endswith(".json") else f"{schema}-schema.json"
    errors = sorted(
        _validator(name).iter_errors(dict(message)), key=lambda e: list(e.absolute_path)
    )
    if errors:
        details = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors
        ]
        raise SchemaValidationError(name, details)
