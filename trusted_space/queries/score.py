"""The score query model: the model file, the query an analyst submits, and the result it gets back.

Why: a score query crosses institutions, so everything in it is plain, versioned JSON that is
parsed strictly — an unknown member, a non-finite weight or a malformed id is refused with an
error naming its JSON path (``$.weights.tax-bureau.tax_paid: ...``), never silently dropped (a
dropped weight is a different model). The objects are frozen: what was validated is what runs.

The model is a linear logit with a public link (DESIGN §8)::

    {"intercept": b,
     "link": "logistic" | "identity" | {"scorecard": {"offset": o, "factor": f}},
     "weights": {"<party>": {"<column>": w, ...}, ...},
     "id": "<model id>"}                       # optional; names party-held weights

``z = b + Σ_party Σ_column w·x``; the link is applied by the analyst after decryption
(:meth:`Model.apply_link`): ``logistic`` gives a probability, ``identity`` the logit, ``scorecard``
points ``offset + factor·z``.

A :class:`ScoreQuery` names the protocol (``paillier`` | ``ckks`` | ``additive``), the model mode
(``analyst-held``: the analyst's weights travel encrypted or shared; ``party-held``: each provider
uses weights it stores under the model id), the agreement and dataset per provider, the entities
(explicit ids, or ``cohort`` for a PSI-aligned cohort), their kind (USCCs are checked with
:mod:`trusted_space.uscc`) and the rule for entities a provider does not hold (``fail`` refuses
the query listing them; ``impute`` uses the provider's published per-column default,
``imputeDefault`` in its catalog).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError
from trusted_space.jsonpath import (
    check_choice,
    check_number,
    check_object,
    check_text,
    path_error,
)
from trusted_space.policy import PROTOCOLS
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES, check_entities

__all__ = [
    "BAND_PROTOCOLS",
    "ID_KINDS",
    "LINKS",
    "MAX_BAND_EDGES",
    "MISSING_RULES",
    "MODES",
    "QUERY_VERSION",
    "Link",
    "Model",
    "ScoreQuery",
    "ScoreResult",
    "logistic",
]

QUERY_VERSION: Final = 1
LINKS: Final = ("logistic", "identity", "scorecard")

FloatArray = npt.NDArray[np.float64]


def logistic(z: npt.ArrayLike) -> FloatArray:
    """The logistic function ``1 / (1 + e^-z)``, elementwise in float64, stable on both tails.

    The one plaintext sigmoid: the ``logistic`` link, the training references and the demo's fit
    and data all call it, so their results agree to the bit.
    """
    x = np.asarray(z, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ez = np.exp(x[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """The public link from logit to output: ``logistic``, ``identity`` or ``scorecard``."""

    kind: Literal["logistic", "identity", "scorecard"] = "logistic"
    offset: float = 0.0
    factor: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.kind, LINKS, "$.link")
        check_number(self.offset, "$.link.scorecard.offset")
        if check_number(self.factor, "$.link.scorecard.factor") == 0.0:
            raise path_error("$.link.scorecard.factor", "must not be zero")
        if self.kind != "scorecard" and (self.offset != 0.0 or self.factor != 1.0):
            raise path_error("$.link", f"{self.kind!r} takes no offset or factor")

    def apply(self, logits: npt.ArrayLike) -> FloatArray:
        """Outputs for logits: probabilities, the logits themselves, or scorecard points."""
        z = np.asarray(logits, dtype=np.float64)
        if self.kind == "logistic":
            return logistic(z)
        if self.kind == "identity":
            return z.copy()
        return self.offset + self.factor * z

    def to_json(self) -> str | dict[str, Any]:
        if self.kind == "scorecard":
            return {"scorecard": {"offset": self.offset, "factor": self.factor}}
        return self.kind

    @classmethod
    def from_json(cls, doc: object) -> Link:
        if isinstance(doc, str):
            if doc == "scorecard":
                raise path_error("$.link", "a scorecard link is {'scorecard': {offset, factor}}")
            return cls(check_choice(doc, LINKS, "$.link"))  # type: ignore[arg-type]
        d = check_object(doc, "$.link", {"scorecard"}, set())
        card = check_object(d["scorecard"], "$.link.scorecard", {"offset", "factor"}, set())
        return cls(
            "scorecard",
            check_number(card["offset"], "$.link.scorecard.offset"),
            check_number(card["factor"], "$.link.scorecard.factor"),
        )


@dataclass(frozen=True)
class Model:
    """A linear-logit model: intercept, link, and weights per party and column (ordered).

    Attributes:
        intercept: ``b``.
        link: the public link.
        weights: ``((party, ((column, w), ...)), ...)`` in file order.
        id: the model id (party-held weights are stored under it at each provider).
    """

    intercept: float
    link: Link
    weights: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
    id: str | None = None

    def __post_init__(self) -> None:
        check_number(self.intercept, "$.intercept")
        if not isinstance(self.link, Link):
            raise path_error("$.link", "expected a Link")
        if self.id is not None:
            check_text(self.id, "$.id")
        seen: set[str] = set()
        for party, columns in self.weights:
            path = f"$.weights.{party}"
            check_participant_id(party, path)
            if party in seen:
                raise path_error(path, "party appears twice")
            seen.add(party)
            names = [c for c, _ in columns]
            if len(set(names)) != len(names):
                raise path_error(path, "a column appears twice")
            for column, w in columns:
                check_text(column, f"{path}.{column}")
                check_number(w, f"{path}.{column}")

    @property
    def parties(self) -> tuple[str, ...]:
        """Parties holding columns of the model, in file order."""
        return tuple(p for p, _ in self.weights)

    def columns(self, party: str) -> tuple[str, ...]:
        """The columns of ``party`` (empty when it has none)."""
        for p, cols in self.weights:
            if p == party:
                return tuple(c for c, _ in cols)
        return ()

    def weights_of(self, party: str) -> FloatArray:
        """The weights of ``party`` in :meth:`columns` order."""
        for p, cols in self.weights:
            if p == party:
                return np.array([w for _, w in cols], dtype=np.float64)
        return np.zeros(0)

    def apply_link(self, logits: npt.ArrayLike) -> FloatArray:
        """The model's outputs for total logits (intercept already included)."""
        return self.link.apply(logits)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intercept": self.intercept,
            "link": self.link.to_json(),
            "weights": {p: dict(cols) for p, cols in self.weights},
        }
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_json(cls, doc: object) -> Model:
        """Parse a model file strictly; errors name the JSON path.

        Raises:
            ValidationError: anything malformed or unknown.
        """
        d = check_object(doc, "$", {"intercept", "link", "weights"}, {"id"})
        weights_doc = d["weights"]
        if not isinstance(weights_doc, Mapping):
            raise path_error("$.weights", "expected an object of parties")
        weights: list[tuple[str, tuple[tuple[str, float], ...]]] = []
        for party, columns in weights_doc.items():
            path = f"$.weights.{party}"
            check_participant_id(party, path)
            if not isinstance(columns, Mapping):
                raise path_error(path, "expected an object of column weights")
            weights.append(
                (
                    party,
                    tuple(
                        (check_text(c, f"{path}.{c}"), check_number(w, f"{path}.{c}"))
                        for c, w in columns.items()
                    ),
                )
            )
        return cls(
            intercept=check_number(d["intercept"], "$.intercept"),
            link=Link.from_json(d["link"]),
            weights=tuple(weights),
            id=check_text(d["id"], "$.id") if "id" in d else None,
        )


# ----------------------------------------------------------------------------------------------
# Query
# ----------------------------------------------------------------------------------------------


def _check_ranges(doc: object) -> dict[str, dict[str, float]]:
    """``$.ranges``: provider → column → a positive finite declared range."""
    if not isinstance(doc, Mapping):
        raise path_error("$.ranges", "expected an object of providers")
    out: dict[str, dict[str, float]] = {}
    for party, columns in doc.items():
        path = f"$.ranges.{party}"
        check_participant_id(party, path)
        if not isinstance(columns, Mapping):
            raise path_error(path, "expected an object of column ranges")
        out[party] = {}
        for column, bound in columns.items():
            check_text(column, f"{path}.{column}")
            if not 0 < check_number(bound, f"{path}.{column}") <= 2.0**60:
                raise path_error(f"{path}.{column}", "must be in (0, 2^60]")
            out[party][column] = float(bound)
    return out


MAX_BAND_EDGES: Final = 15
"""Edges of a band release (16 bands): each edge is one secure comparison per entity."""
BAND_PROTOCOLS: Final = ("additive",)
"""Protocols that compute a band inside the protocol."""


def _check_edges(edges: object, protocol: str) -> tuple[float, ...]:
    if not isinstance(edges, tuple | list):
        raise path_error("$.bandEdges", "expected an array of numbers")
    values = tuple(float(check_number(e, f"$.bandEdges[{i}]")) for i, e in enumerate(edges))
    if not values:
        return ()
    if len(values) > MAX_BAND_EDGES:
        raise path_error("$.bandEdges", f"at most {MAX_BAND_EDGES} edges")
    if any(abs(v) > 2.0**40 for v in values):
        raise path_error("$.bandEdges", "edges must lie within ±2^40")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise path_error("$.bandEdges", "edges must be strictly increasing")
    if protocol not in BAND_PROTOCOLS:
        raise path_error(
            "$.bandEdges",
            f"protocol {protocol!r} opens the exact logit at the analyst; a band is computed "
            f"inside the protocol by {' or '.join(repr(p) for p in BAND_PROTOCOLS)} only",
        )
    return values


@dataclass(frozen=True)
class ScoreQuery:
    """A joint score query, as the analyst submits it.

    Attributes:
        purpose: the declared purpose (checked by every provider's policy).
        protocol: ``paillier``, ``ckks`` or ``additive``.
        mode: ``analyst-held`` or ``party-held``.
        model: the model.
        agreements: provider id → agreement id.
        datasets: party id → dataset id (providers; the analyst's own dataset may be named too).
        entities: explicit entity ids, or the candidate ids to align when ``cohort``.
        cohort: align ``entities`` with each provider by PSI first; score the intersection.
        id_kind: ``uscc`` (validated) or ``opaque``.
        missing: ``fail`` or ``impute``.
        id: the query id (a fresh UUID URN by default).
        feature_bound: internal: the protocols' bound on a (scaled) feature, ``1`` once
            :func:`trusted_space.protocols.scaling.scaled_query` has scaled every provider column
            by the range its catalog declares. Not part of the query's JSON: an analyst gives
            no bound, and a provider refuses a column whose catalog declares none.
        partial_bound: declared bound of a party-held partial logit.
        ranges: provider → column → declared ``|x|`` range, as the catalog publishes it
            (clients fill it from the catalog); each column is scaled by the least power of
            two at or above its range.
        band_edges: when given, only the band each logit falls in leaves (the number of edges
            strictly below it, ``0 … len(band_edges)``), computed inside the protocol so that the
            logit is never in clear at the analyst (``additive`` only; the policy operand
            ``release``). Strictly increasing, at most :data:`MAX_BAND_EDGES`.
    """

    purpose: str
    protocol: str
    mode: str
    model: Model
    agreements: Mapping[str, str]
    datasets: Mapping[str, str]
    entities: tuple[str, ...] = ()
    cohort: bool = False
    id_kind: str = "opaque"
    missing: str = "fail"
    id: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    feature_bound: float = 64.0
    partial_bound: float = 4096.0
    ranges: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    band_edges: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_text(self.id, "$.id")
        object.__setattr__(self, "band_edges", _check_edges(self.band_edges, self.protocol))
        check_text(self.purpose, "$.purpose")
        check_choice(self.protocol, PROTOCOLS, "$.protocol")
        check_choice(self.mode, MODES, "$.mode")
        check_choice(self.id_kind, ID_KINDS, "$.idKind")
        check_choice(self.missing, MISSING_RULES, "$.missing")
        if not isinstance(self.model, Model):
            raise path_error("$.model", "expected a Model")
        if not isinstance(self.cohort, bool):
            raise path_error("$.cohort", "expected true or false")
        for name, path in (
            ("feature_bound", "$.featureBound"),
            ("partial_bound", "$.partialBound"),
        ):
            if check_number(getattr(self, name), path) <= 0:
                raise path_error(path, "must be positive")
        agreements = dict(self.agreements)
        datasets = dict(self.datasets)
        for p, a in agreements.items():
            check_participant_id(p, f"$.agreements.{p}")
            check_text(a, f"$.agreements.{p}")
        for p, d in datasets.items():
            check_participant_id(p, f"$.datasets.{p}")
            check_text(d, f"$.datasets.{p}")
        if not agreements:
            raise path_error("$.agreements", "a joint query needs at least one provider")
        if lacking := sorted(set(agreements) - set(datasets)):
            raise path_error("$.datasets", f"no dataset named for provider(s) {lacking}")
        object.__setattr__(self, "agreements", agreements)
        object.__setattr__(self, "datasets", datasets)
        object.__setattr__(self, "ranges", _check_ranges(self.ranges))
        entities = check_entities(self.entities, self.id_kind, "$.entities")
        if not entities:
            raise path_error("$.entities", "no entities to score")
        object.__setattr__(self, "entities", entities)
        known = set(datasets)
        for party in self.model.parties:
            if party not in known:
                raise path_error(f"$.model.weights.{party}", "party has no dataset in the query")
        if self.mode == "analyst-held":
            for provider in agreements:
                if not self.model.columns(provider):
                    raise path_error(
                        f"$.model.weights.{provider}",
                        "analyst-held mode needs the weights of every provider",
                    )
        else:
            if self.model.id is None:
                raise path_error(
                    "$.model.id", "party-held mode names the model id the providers store"
                )
            for provider in agreements:
                if self.model.columns(provider):
                    raise path_error(
                        f"$.model.weights.{provider}",
                        "in party-held mode a provider's weights are stored at the provider",
                    )

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers (those with an agreement), sorted."""
        return tuple(sorted(self.agreements))

    def to_json(self) -> dict[str, Any]:
        return {
            "v": QUERY_VERSION,
            "kind": "score",
            "id": self.id,
            "purpose": self.purpose,
            "protocol": self.protocol,
            "mode": self.mode,
            "model": self.model.to_json(),
            "agreements": dict(self.agreements),
            "datasets": dict(self.datasets),
            "entities": list(self.entities),
            "cohort": self.cohort,
            "idKind": self.id_kind,
            "missing": self.missing,
            "partialBound": self.partial_bound,
            **({"ranges": {p: dict(c) for p, c in self.ranges.items()}} if self.ranges else {}),
            **({"bandEdges": list(self.band_edges)} if self.band_edges else {}),
        }

    @property
    def release(self) -> str:
        """What leaves to the analyst: ``band`` when edges are given, else ``logit``."""
        return "band" if self.band_edges else "logit"

    @classmethod
    def from_json(cls, doc: object) -> ScoreQuery:
        """Parse a query strictly; errors name the JSON path.

        Raises:
            ValidationError: anything malformed or unknown.
        """
        if isinstance(doc, Mapping) and "featureBound" in doc:
            raise path_error(
                "$.featureBound",
                "not a query parameter: each provider column is scaled by the range its "
                "catalog declares (the field's bound); ask the provider to declare one",
            )
        d = check_object(
            doc,
            "$",
            {"purpose", "protocol", "mode", "model", "agreements", "datasets", "entities"},
            {
                "v",
                "kind",
                "id",
                "cohort",
                "idKind",
                "missing",
                "partialBound",
                "ranges",
                "bandEdges",
            },
        )
        if d.get("v", QUERY_VERSION) != QUERY_VERSION:
            raise path_error("$.v", f"unsupported query version {d.get('v')!r}")
        if d.get("kind", "score") != "score":
            raise path_error("$.kind", f"expected 'score', got {d.get('kind')!r}")
        for name in ("agreements", "datasets"):
            if not isinstance(d[name], Mapping):
                raise path_error(f"$.{name}", "expected an object of participant ids")
        if not isinstance(d["entities"], list):
            raise path_error("$.entities", "expected an array of ids")
        try:
            model = Model.from_json(d["model"])
        except ValidationError as exc:
            raise ValidationError(str(exc).replace("$", "$.model", 1)) from exc
        kw: dict[str, Any] = {}
        if "id" in d:
            kw["id"] = check_text(d["id"], "$.id")
        if "partialBound" in d:
            kw["partial_bound"] = check_number(d["partialBound"], "$.partialBound")
        if "ranges" in d:
            kw["ranges"] = d["ranges"]
        if "bandEdges" in d:
            if not isinstance(d["bandEdges"], list):
                raise path_error("$.bandEdges", "expected an array of numbers")
            kw["band_edges"] = tuple(d["bandEdges"])
        return cls(
            purpose=d["purpose"],
            protocol=d["protocol"],
            mode=d["mode"],
            model=model,
            agreements=d["agreements"],
            datasets=d["datasets"],
            entities=tuple(d["entities"]),
            cohort=d.get("cohort", False),
            id_kind=d.get("idKind", "opaque"),
            missing=d.get("missing", "fail"),
            **kw,
        )


@dataclass(frozen=True)
class ScoreResult:
    """What the analyst gets back.

    Attributes:
        query_id: the query.
        entities: the entities scored, in query order (the aligned intersection for a cohort).
        logits: total logits ``z`` (intercept included), one per entity.
        outputs: ``model.apply_link(logits)``: probabilities, logits or points.
        missing: provider id → entities it did not hold (imputed, or excluded for a cohort).
        receipts: provider id → its ``query.use`` receipt (``Receipt.to_json()`` plus ``vkey`` and
            ``participant``), checked by the driver against the query.
        timings: seconds per phase.
        bands: for a band release, the band of each entity (``0 … len(band_edges)``); the
            logits and outputs are then empty: the analyst never had them.
        band_edges: the edges of a band release.
    """

    query_id: str
    entities: tuple[str, ...]
    logits: FloatArray
    outputs: FloatArray
    missing: Mapping[str, tuple[str, ...]]
    receipts: Mapping[str, dict[str, Any]]
    timings: Mapping[str, float]
    bands: npt.NDArray[np.int64] | None = None
    band_edges: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        released: dict[str, Any] = (
            {"bands": [int(b) for b in self.bands], "bandEdges": list(self.band_edges)}
            if self.bands is not None
            else {
                "logits": [float(v) for v in self.logits],
                "outputs": [float(v) for v in self.outputs],
            }
        )
        return {
            "v": QUERY_VERSION,
            "query": self.query_id,
            "entities": list(self.entities),
            **released,
            "missing": {p: list(m) for p, m in self.missing.items()},
            "receipts": dict(self.receipts),
            "timings": dict(self.timings),
        }
