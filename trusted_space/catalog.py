"""The catalog: what each department publishes, how sensitive each field is, and how open it is.

The catalog follows the government catalog system in three levels — a **responsibility** (the
department's legal duty that makes it hold the data) → a **data resource** → a **table** of typed
**fields**. Every field carries a security grade 1-5 (JR/T 0197-2020) and optionally a
personal-information category C1-C3 (JR/T 0171-2020). A **dataset** is one table as published to
the space, with an open **tier**.

The threat this module guards against is a provider (or a buggy import script) publishing data more
openly than its sensitivity allows. The highest field grade sets a floor under the tier, checked at
publish time (and again by the policy engine at every evaluation):

======================  =========================================
highest field grade     tiers allowed
======================  =========================================
≤ 1                     ``unconditional``, ``conditional``, ``zone``
2                       ``conditional``, ``zone``
3-4                     ``zone`` (computation only; rows never leave)
5                       none: important data is never offered
======================  =========================================

Datasets are exported to the Dataspace Protocol 2025-1 as DCAT ``Dataset`` / ``Catalog`` JSON-LD
with ODRL offers; the grades, tier and key kind travel as extra properties under
:data:`TS_NAMESPACE` (the DSP schemas allow additional properties on datasets), so a foreign
connector can ignore them and one of ours can check them before negotiating.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from trusted_space import dsp
from trusted_space.errors import GradeFloorError, ValidationError
from trusted_space.events import record_event
from trusted_space.jsonpath import check_array, check_object, check_text
from trusted_space.store import Transaction

__all__ = [
    "DATASET_NAMESPACE",
    "PARTICIPANT_ID_PATTERN",
    "TS_NAMESPACE",
    "Caller",
    "DataResource",
    "Dataset",
    "Field",
    "FieldType",
    "KeyKind",
    "PiCategory",
    "PublishedDataset",
    "Responsibility",
    "Table",
    "Tier",
    "allowed_tiers",
    "check_grade_floor",
    "check_participant_id",
    "list_datasets",
    "load_dataset",
    "publish",
    "to_dsp_catalog",
    "to_dsp_dataset",
    "validate_offer",
    "visible_datasets",
]

TS_NAMESPACE = "https://w3id.org/trusted-space/v1/"
"""Product namespace for properties DSP does not define (absolute IRIs as JSON-LD keys)."""
DATASET_NAMESPACE = "dataset"
PARTICIPANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,62}$")
_E = TypeVar("_E", bound=StrEnum)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Tier(StrEnum):
    """How openly a dataset is offered."""

    UNCONDITIONAL = "unconditional"  # anyone may pull raw rows
    CONDITIONAL = "conditional"  # raw rows after an agreed contract
    ZONE = "zone"  # rows only feed joint computations; they never leave


class FieldType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    CATEGORY = "category"


class KeyKind(StrEnum):
    """What the entity key column holds: a USCC (checked on load) or an opaque identifier."""

    USCC = "uscc"
    OPAQUE = "opaque"


class PiCategory(StrEnum):
    """Personal-information category after JR/T 0171-2020 (C3 most sensitive)."""

    C1 = "C1"
    C2 = "C2"
    C3 = "C3"


_FLOOR: dict[int, frozenset[Tier]] = {
    0: frozenset(Tier),
    1: frozenset(Tier),
    2: frozenset({Tier.CONDITIONAL, Tier.ZONE}),
    3: frozenset({Tier.ZONE}),
    4: frozenset({Tier.ZONE}),
    5: frozenset(),
}


def allowed_tiers(max_grade: int) -> frozenset[Tier]:
    """The tiers a dataset whose highest field grade is ``max_grade`` may be offered under."""
    if isinstance(max_grade, bool) or not isinstance(max_grade, int) or not 1 <= max_grade <= 5:
        raise ValidationError(f"a security grade is an integer 1-5, got {max_grade!r}")
    return _FLOOR[max_grade]


def check_participant_id(value: object, path: str = "participant id") -> str:
    """Return ``value`` if it is a participant slug; otherwise raise naming ``path``."""
    if not isinstance(value, str) or not PARTICIPANT_ID_PATTERN.match(value):
        raise ValidationError(
            f"{path}: {value!r} is not a participant id ({PARTICIPANT_ID_PATTERN.pattern})"
        )
    return value


def _enum(kind: type[_E], value: object, path: str) -> _E:
    try:
        return kind(value)  # type: ignore[arg-type]
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ValidationError(f"{path}: {value!r} is not one of {allowed}") from None


@dataclass(frozen=True)
class Field:
    """A typed column with its security grade and optional personal-information category.

    ``impute_default`` (JSON ``imputeDefault``, numeric fields only) is the value the owner
    publishes for joint queries that ask to ``impute`` an entity missing from its table; a query
    that asks to impute a column without one is refused (never a silent zero).

    ``bound`` (JSON ``bound``, numeric fields only) is the column's declared range: every value
    satisfies ``|x| ≤ bound``. Joint protocols scale the column by the least power of two at or
    above it (:mod:`trusted_space.protocols.scaling`) and the owner refuses a query using a value
    outside it, naming the column and never the value. Publishing it reveals only its order of
    magnitude, which the owner chooses (a loose bound such as ``1e9`` for amounts is fine).
    """

    name: str
    type: FieldType
    grade: int
    description: str = ""
    pi_category: PiCategory | None = None
    impute_default: float | None = None
    bound: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValidationError(f"field name {self.name!r} is not an identifier")
        path = f"field {self.name!r}"
        object.__setattr__(self, "type", _enum(FieldType, self.type, f"{path}.type"))
        if (
            isinstance(self.grade, bool)
            or not isinstance(self.grade, int)
            or not 1 <= self.grade <= 5
        ):
            raise ValidationError(f"{path}.grade: a security grade is 1-5, got {self.grade!r}")
        check_text(self.description, f"{path}.description", allow_empty=True)
        if self.pi_category is not None:
            object.__setattr__(
                self, "pi_category", _enum(PiCategory, self.pi_category, f"{path}.piCategory")
            )
        if self.impute_default is not None:
            value = self.impute_default
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ValidationError(f"{path}.imputeDefault: a finite number, got {value!r}")
            if self.type not in (FieldType.INT, FieldType.FLOAT, FieldType.BOOL):
                raise ValidationError(f"{path}.imputeDefault: only numeric fields have one")
            object.__setattr__(self, "impute_default", float(value))
        if self.bound is not None:
            value = self.bound
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= 2.0**60
            ):
                raise ValidationError(f"{path}.bound: a number in (0, 2^60], got {value!r}")
            if self.type not in (FieldType.INT, FieldType.FLOAT, FieldType.BOOL):
                raise ValidationError(f"{path}.bound: only numeric fields have one")
            if self.impute_default is not None and abs(self.impute_default) > value:
                raise ValidationError(f"{path}.imputeDefault: outside the declared bound")
            object.__setattr__(self, "bound", float(value))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type.value,
            "grade": self.grade,
            "description": self.description,
        }
        if self.pi_category is not None:
            out["piCategory"] = self.pi_category.value
        if self.impute_default is not None:
            out["imputeDefault"] = self.impute_default
        if self.bound is not None:
            out["bound"] = self.bound
        return out

    @classmethod
    def from_json(cls, doc: object, path: str = "field") -> Field:
        d = check_object(
            doc,
            path,
            {"name", "type", "grade"},
            {"description", "piCategory", "imputeDefault", "bound"},
        )
        try:
            return cls(
                name=d["name"],
                type=d["type"],
                grade=d["grade"],
                description=d.get("description", ""),
                pi_category=d.get("piCategory"),
                impute_default=d.get("imputeDefault"),
                bound=d.get("bound"),
            )
        except ValidationError as exc:
            raise ValidationError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Table:
    """A table of a data resource: its typed, graded fields."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValidationError(f"table name {self.name!r} is not an identifier")
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ValidationError(f"table {self.name!r} has no fields")
        seen: set[str] = set()
        for f in self.fields:
            if not isinstance(f, Field):
                raise ValidationError(f"table {self.name!r}: fields must be Field objects")
            if f.name in seen:
                raise ValidationError(f"table {self.name!r}: duplicate field {f.name!r}")
            seen.add(f.name)

    @property
    def max_grade(self) -> int:
        return max(f.grade for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise ValidationError(f"table {self.name!r} has no field {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "fields": [f.to_json() for f in self.fields],
        }

    @classmethod
    def from_json(cls, doc: object, path: str = "table") -> Table:
        d = check_object(doc, path, {"name", "fields"}, {"description"})
        fields = tuple(
            Field.from_json(f, f"{path}.fields[{i}]")
            for i, f in enumerate(check_array(d["fields"], f"{path}.fields"))
        )
        try:
            return cls(
                d["name"],
                fields,
                check_text(d.get("description", ""), f"{path}.description", allow_empty=True),
            )
        except ValidationError as exc:
            raise ValidationError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Responsibility:
    """A department's legal duty (职责) that is the reason it holds a data resource."""

    id: str
    title: str
    legal_basis: str = ""

    def __post_init__(self) -> None:
        check_text(self.id, "responsibility.id", allow_blank=False)
        check_text(self.title, "responsibility.title", allow_blank=False)
        check_text(self.legal_basis, "responsibility.legalBasis", allow_empty=True)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "legalBasis": self.legal_basis}

    @classmethod
    def from_json(cls, doc: object, path: str = "responsibility") -> Responsibility:
        d = check_object(doc, path, {"id", "title"}, {"legalBasis"})
        return cls(
            check_text(d["id"], f"{path}.id", allow_blank=False),
            check_text(d["title"], f"{path}.title", allow_blank=False),
            check_text(d.get("legalBasis", ""), f"{path}.legalBasis", allow_empty=True),
        )


@dataclass(frozen=True)
class DataResource:
    """A data resource (信息资源) held under a responsibility; it groups tables."""

    id: str
    title: str
    description: str = ""

    def __post_init__(self) -> None:
        check_text(self.id, "resource.id", allow_blank=False)
        check_text(self.title, "resource.title", allow_blank=False)
        check_text(self.description, "resource.description", allow_empty=True)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description}

    @classmethod
    def from_json(cls, doc: object, path: str = "resource") -> DataResource:
        d = check_object(doc, path, {"id", "title"}, {"description"})
        return cls(
            check_text(d["id"], f"{path}.id", allow_blank=False),
            check_text(d["title"], f"{path}.title", allow_blank=False),
            check_text(d.get("description", ""), f"{path}.description", allow_empty=True),
        )


@dataclass(frozen=True)
class Dataset:
    """A table published to the space, with its tier, entity key, owner and offers.

    Construction validates everything except the grade floor, so a too-open dataset can still be
    described (and refused with a precise :class:`GradeFloorError` by :func:`publish`).
    """

    id: str
    owner: str
    title: str
    responsibility: Responsibility
    resource: DataResource
    table: Table
    tier: Tier
    key_column: str
    key_kind: KeyKind
    description: str = ""
    keywords: tuple[str, ...] = ()
    offer_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_text(self.id, "dataset.id", allow_blank=False)
        check_participant_id(self.owner, "dataset.owner")
        check_text(self.title, "dataset.title", allow_blank=False)
        check_text(self.description, "dataset.description", allow_empty=True)
        object.__setattr__(self, "tier", _enum(Tier, self.tier, "dataset.tier"))
        object.__setattr__(self, "key_kind", _enum(KeyKind, self.key_kind, "dataset.keyKind"))
        for name, kind in (
            ("responsibility", Responsibility),
            ("resource", DataResource),
            ("table", Table),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ValidationError(f"dataset.{name}: expected a {kind.__name__}")
        try:
            key = self.table.field(self.key_column)
        except ValidationError as exc:
            raise ValidationError(f"dataset.keyColumn: {exc}") from exc
        if key.type not in (FieldType.STRING, FieldType.CATEGORY):
            raise ValidationError(
                f"dataset.keyColumn: key column {key.name!r} must be a string, not {key.type}"
            )
        object.__setattr__(self, "keywords", tuple(self.keywords))
        for i, k in enumerate(self.keywords):
            check_text(k, f"dataset.keywords[{i}]", allow_blank=False)
        object.__setattr__(self, "offer_ids", tuple(self.offer_ids))
        for i, o in enumerate(self.offer_ids):
            check_text(o, f"dataset.offerIds[{i}]", allow_blank=False)
        if len(set(self.offer_ids)) != len(self.offer_ids):
            raise ValidationError("dataset.offerIds: duplicate offer id")

    @property
    def max_grade(self) -> int:
        """The highest security grade of any field: it sets the floor under the tier."""
        return self.table.max_grade

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "title": self.title,
            "description": self.description,
            "keywords": list(self.keywords),
            "tier": self.tier.value,
            "keyColumn": self.key_column,
            "keyKind": self.key_kind.value,
            "responsibility": self.responsibility.to_json(),
            "resource": self.resource.to_json(),
            "table": self.table.to_json(),
            "offerIds": list(self.offer_ids),
        }

    @classmethod
    def from_json(cls, doc: object, path: str = "dataset") -> Dataset:
        """Strictly parse the stored form; every error names its path (``dataset.table...``)."""
        d = check_object(
            doc,
            path,
            {
                "id",
                "owner",
                "title",
                "tier",
                "keyColumn",
                "keyKind",
                "responsibility",
                "resource",
                "table",
            },
            {"description", "keywords", "offerIds"},
        )
        responsibility = Responsibility.from_json(d["responsibility"], f"{path}.responsibility")
        resource = DataResource.from_json(d["resource"], f"{path}.resource")
        table = Table.from_json(d["table"], f"{path}.table")
        keywords = tuple(
            check_text(k, f"{path}.keywords[{i}]", allow_blank=False)
            for i, k in enumerate(check_array(d.get("keywords", []), f"{path}.keywords"))
        )
        offer_ids = tuple(
            check_text(k, f"{path}.offerIds[{i}]", allow_blank=False)
            for i, k in enumerate(check_array(d.get("offerIds", []), f"{path}.offerIds"))
        )
        return cls(
            id=check_text(d["id"], f"{path}.id", allow_blank=False),
            owner=check_participant_id(d["owner"], f"{path}.owner"),
            title=check_text(d["title"], f"{path}.title", allow_blank=False),
            description=check_text(
                d.get("description", ""), f"{path}.description", allow_empty=True
            ),
            keywords=keywords,
            tier=_enum(Tier, d["tier"], f"{path}.tier"),
            key_column=check_text(d["keyColumn"], f"{path}.keyColumn", allow_blank=False),
            key_kind=_enum(KeyKind, d["keyKind"], f"{path}.keyKind"),
            responsibility=responsibility,
            resource=resource,
            table=table,
            offer_ids=offer_ids,
        )


def check_grade_floor(dataset: Dataset) -> None:
    """Raise :class:`GradeFloorError` if the tier is looser than the highest field grade allows."""
    grade = dataset.max_grade
    allowed = allowed_tiers(grade)
    if dataset.tier in allowed:
        return
    worst = [f.name for f in dataset.table.fields if f.grade == grade]
    if not allowed:
        raise GradeFloorError(
            f"dataset {dataset.id!r}: field(s) {', '.join(worst)} have grade 5 (important data), "
            "which is never offered under any tier"
        )
    raise GradeFloorError(
        f"dataset {dataset.id!r}: tier {dataset.tier.value!r} is looser than grade {grade} of "
        f"field(s) {', '.join(worst)} allows (allowed: "
        f"{', '.join(t.value for t in Tier if t in allowed)})"
    )


def validate_offer(offer: Mapping[str, Any], path: str = "offer") -> dict[str, Any]:
    """Check an ODRL offer as it appears in a catalog: ``@id``, ``@type: Offer``, no ``target``.

    The full structure is checked against the DSP schema when the dataset is exported.
    """
    if not isinstance(offer, Mapping):
        raise ValidationError(f"{path}: an offer is a JSON object")
    check_text(offer.get("@id"), f"{path}.@id", allow_blank=False)
    if offer.get("@type") != "Offer":
        raise ValidationError(f"{path}.@type: expected 'Offer', got {offer.get('@type')!r}")
    if "target" in offer:
        raise ValidationError(f"{path}: a catalog offer has no target (the dataset is implied)")
    if not offer.get("permission") and not offer.get("prohibition"):
        raise ValidationError(f"{path}: an offer needs a permission or a prohibition")
    return dict(offer)


@dataclass(frozen=True)
class PublishedDataset:
    """A dataset as stored: the description, its offers, and the store version."""

    dataset: Dataset
    offers: tuple[dict[str, Any], ...]
    version: int = 0


def _access_service_id(owner: str) -> str:
    return f"urn:trusted-space:{owner}:dsp"


def to_dsp_dataset(
    dataset: Dataset,
    offers: Sequence[Mapping[str, Any]],
    *,
    access_service: str | None = None,
    with_context: bool = True,
) -> dict[str, Any]:
    """The DSP 2025-1 ``Dataset`` for ``dataset`` with its ODRL offers as ``hasPolicy``.

    Args:
        dataset: the dataset.
        offers: its offers (plain ODRL JSON, without ``target``).
        access_service: the ``@id`` of the data service in the enclosing catalog (defaults to
            the owner's DSP service id).
        with_context: add ``@context`` (a stand-alone dataset response); ``False`` for a dataset
            nested inside a catalog.

    Raises:
        ValidationError: no offers, or an offer that is not a catalog offer.
        SchemaValidationError: the result does not validate against the DSP schema.
    """
    if not offers:
        raise ValidationError(f"dataset {dataset.id!r}: a DSP dataset needs at least one offer")
    policies = [validate_offer(o, f"offers[{i}]") for i, o in enumerate(offers)]
    service = access_service or _access_service_id(dataset.owner)
    raw = dataset.tier is not Tier.ZONE
    out: dict[str, Any] = {}
    if with_context:
        out["@context"] = list(dsp.DSP_CONTEXT)
    out |= {
        "@id": dataset.id,
        "@type": "Dataset",
        "dct:title": dataset.title,
        "dct:description": dataset.description,
        "dcat:keyword": list(dataset.keywords),
        "hasPolicy": policies,
        "distribution": [
            {
                "@type": "Distribution",
                "format": "HttpData-PULL" if raw else "TrustedSpace-JointComputation",
                "accessService": service,
            }
        ],
        TS_NAMESPACE + "owner": dataset.owner,
        TS_NAMESPACE + "tier": dataset.tier.value,
        TS_NAMESPACE + "maxGrade": dataset.max_grade,
        TS_NAMESPACE + "keyColumn": dataset.key_column,
        TS_NAMESPACE + "keyKind": dataset.key_kind.value,
        TS_NAMESPACE + "responsibility": dataset.responsibility.to_json(),
        TS_NAMESPACE + "resource": dataset.resource.to_json(),
        TS_NAMESPACE + "table": dataset.table.to_json(),
    }
    if with_context:
        dsp.validate(out, "catalog/dataset-schema.json")
    return out


def to_dsp_catalog(
    participant_id: str,
    datasets: Iterable[tuple[Dataset, Sequence[Mapping[str, Any]]] | PublishedDataset],
    service_endpoint: str,
    *,
    catalog_id: str | None = None,
) -> dict[str, Any]:
    """The DSP 2025-1 root ``Catalog`` of a participant, validated against the catalog schema.

    Args:
        participant_id: the catalog owner.
        datasets: ``(dataset, offers)`` pairs or :class:`PublishedDataset` records (already
            filtered for the caller with :func:`visible_datasets`).
        service_endpoint: the URL of the owner's DSP endpoint (``DataService.endpointURL``).
        catalog_id: the catalog ``@id`` (defaults to a stable URN of the participant).
    """
    check_participant_id(participant_id)
    check_text(service_endpoint, "service endpoint", allow_blank=False)
    service_id = _access_service_id(participant_id)
    entries: list[dict[str, Any]] = []
    for item in datasets:
        ds, offers = (item.dataset, item.offers) if isinstance(item, PublishedDataset) else item
        entries.append(to_dsp_dataset(ds, offers, access_service=service_id, with_context=False))
    out: dict[str, Any] = {
        "@context": list(dsp.DSP_CONTEXT),
        "@id": catalog_id or f"urn:trusted-space:{participant_id}:catalog",
        "@type": "Catalog",
        "participantId": participant_id,
        "service": [{"@id": service_id, "@type": "DataService", "endpointURL": service_endpoint}],
    }
    if entries:  # the schema wants at least one dataset when the member is present
        out["dataset"] = entries
    dsp.validate(out, "catalog/catalog-schema.json")
    return out


def publish(
    tx: Transaction,
    dataset: Dataset,
    offers: Sequence[Mapping[str, Any]],
    *,
    expect_version: int = 0,
) -> PublishedDataset:
    """Validate, store (namespace ``dataset``) and record ``dataset.published``.

    Args:
        tx: the store transaction (the event is written in the same one).
        dataset: the dataset; its ``offer_ids`` must be exactly the ids of ``offers``.
        offers: the ODRL offers under which it is offered.
        expect_version: ``0`` (default) publishes a new dataset; the current version replaces it.

    Raises:
        GradeFloorError: the tier is looser than the highest field grade allows.
        ValidationError: offers missing or inconsistent with ``dataset.offer_ids``.
        SchemaValidationError: the DSP export does not validate.
        ConflictError: the dataset exists (or is at another version than ``expect_version``).
    """
    check_grade_floor(dataset)
    policies = [validate_offer(o, f"offers[{i}]") for i, o in enumerate(offers)]
    ids = [o["@id"] for o in policies]
    if sorted(ids) != sorted(dataset.offer_ids):
        raise ValidationError(
            f"dataset {dataset.id!r}: offerIds {list(dataset.offer_ids)} do not match the offers "
            f"given {ids}"
        )
    to_dsp_dataset(dataset, policies)  # refuses what other connectors could not read
    doc = tx.put(
        DATASET_NAMESPACE,
        dataset.id,
        {"dataset": dataset.to_json(), "offers": policies},
        expect_version=expect_version,
    )
    record_event(
        tx,
        "dataset.published",
        {
            "datasetId": dataset.id,
            "owner": dataset.owner,
            "tier": dataset.tier.value,
            "maxGrade": dataset.max_grade,
            "keyKind": dataset.key_kind.value,
            "offerIds": ids,
            "version": doc.version,
        },
    )
    return PublishedDataset(dataset, tuple(policies), doc.version)


def _from_doc(body: Mapping[str, Any], version: int) -> PublishedDataset:
    d = check_object(body, "stored dataset", {"dataset", "offers"})
    dataset = Dataset.from_json(d["dataset"])
    offers = tuple(
        validate_offer(o, f"offers[{i}]") for i, o in enumerate(check_array(d["offers"], "offers"))
    )
    return PublishedDataset(dataset, offers, version)


def load_dataset(tx: Transaction, dataset_id: str) -> PublishedDataset:
    """A published dataset by id (:class:`~trusted_space.errors.NotFoundError` if unknown)."""
    doc = tx.require(DATASET_NAMESPACE, dataset_id)
    return _from_doc(doc.body, doc.version)


def list_datasets(tx: Transaction) -> list[PublishedDataset]:
    """Every published dataset in this store, ordered by id."""
    return [_from_doc(d.body, d.version) for d in tx.scan(DATASET_NAMESPACE)]


_T = TypeVar("_T", "Dataset", "PublishedDataset")


@dataclass(frozen=True)
class Caller:
    """Who is browsing: ``participant_id`` is ``None`` for an anonymous (unauthenticated) caller."""

    participant_id: str | None = None
    member: bool = False
    role: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.participant_id is None or not self.member


def visible_datasets(datasets: Iterable[_T], caller: Caller) -> list[_T]:
    """The datasets ``caller`` may see in a catalog.

    Anonymous callers (and non-members) see only ``unconditional`` datasets; members of the space
    see every tier. This is the coarse rule; finer catalog-visibility policies (per role, per
    purpose) plug in at :func:`_member_may_see`, which is the one place to extend.
    """
    out: list[_T] = []
    for item in datasets:
        ds = item.dataset if isinstance(item, PublishedDataset) else item
        if ds.tier is Tier.UNCONDITIONAL or (not caller.anonymous and _member_may_see(ds, caller)):
            out.append(item)
    return out


def _member_may_see(dataset: Dataset, caller: Caller) -> bool:
    """Hook for catalog-visibility policies; today every member sees every published dataset."""
    return True
