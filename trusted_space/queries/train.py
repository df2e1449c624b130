"""The training query model: a joint logistic regression as the bank submits it.

A :class:`TrainQuery` names the purpose, the model mode, the agreement and dataset per provider,
every party's feature columns, the bank's label, the candidate entities (aligned by PSI), the
compute party and the hyper-parameters (:class:`TrainParams`, identical for the joint run and
the plaintext reference). Parsing is strict and the objects are frozen (see
:mod:`trusted_space.queries.common`). The bank gets a :class:`TrainResult`. The flow is in
:mod:`trusted_space.protocols.train`.

The default sigmoid knots are the protocol's
(:class:`~trusted_space.protocols.train_mpc.sigmoid.Sigmoid`): they are a public parameter of the
query, checked by the same rules the parties apply.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trusted_space.catalog import check_participant_id
from trusted_space.errors import ValidationError
from trusted_space.jsonpath import check_choice, check_number, check_object, check_text, path_error
from trusted_space.protocols.train_mpc.sigmoid import Sigmoid
from trusted_space.queries.common import ID_KINDS, MISSING_RULES, MODES, check_entity
from trusted_space.queries.score import Model

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_CELLS",
    "MAX_COLUMNS",
    "MAX_EPOCHS",
    "MAX_ROWS",
    "TrainParams",
    "TrainQuery",
    "TrainResult",
]

MAX_EPOCHS: Final = 1000
MAX_BATCH: Final = 8192
MAX_ROWS: Final = 10_000_000
MAX_COLUMNS: Final = 1024
MAX_BATCH_CELLS: Final = 1 << 20
"""Rows times columns of one batch: its first round's message stays under 8 MiB."""
_MAX_TEXT: Final = 512
"""The longest id, purpose, label, agreement, dataset or column name a training query takes."""


def _integer(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise path_error(path, f"expected an integer in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters (identical for the joint run and the plaintext reference).

    Attributes:
        epochs: the most epochs to run.
        batch_size: rows per mini-batch (the last batch of an epoch may be smaller).
        learning_rate: ``lr``.
        l2: L2 penalty ``λ`` (not on the intercept): ``w ← w - lr·(g/m + λ·w)``.
        validation: fraction of the cohort the bank holds out for early stopping (0: none,
            run every epoch).
        patience: stop when the held-out loss has not improved for this many epochs; the
            weights of the best epoch are kept.
        seed: seeds the held-out split and every epoch's order (public to the parties).
        knots: knots of the piecewise-linear sigmoid.
    """

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.1
    l2: float = 1e-3
    validation: float = 0.0
    patience: int = 2
    seed: int = 0
    knots: tuple[float, ...] = Sigmoid().knots

    def __post_init__(self) -> None:
        _integer(self.epochs, "$.params.epochs", 1, MAX_EPOCHS)
        _integer(self.batch_size, "$.params.batchSize", 1, MAX_BATCH)
        if not 0 < check_number(self.learning_rate, "$.params.learningRate") <= 16:
            raise path_error("$.params.learningRate", "must be in (0, 16]")
        if not 0 <= check_number(self.l2, "$.params.l2") <= 16:
            raise path_error("$.params.l2", "must be in [0, 16]")
        if not 0 <= check_number(self.validation, "$.params.validation") <= 0.5:
            raise path_error("$.params.validation", "must be in [0, 0.5]")
        _integer(self.patience, "$.params.patience", 1, MAX_EPOCHS)
        _integer(self.seed, "$.params.seed", 0, 2**63 - 1)
        object.__setattr__(self, "knots", tuple(self.knots))
        try:
            Sigmoid(self.knots)
        except ValidationError as exc:
            raise path_error("$.params.knots", str(exc)) from exc

    @property
    def sigmoid(self) -> Sigmoid:
        return Sigmoid(self.knots)

    def to_json(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batchSize": self.batch_size,
            "learningRate": self.learning_rate,
            "l2": self.l2,
            "validation": self.validation,
            "patience": self.patience,
            "seed": self.seed,
            "knots": list(self.knots),
        }

    @classmethod
    def from_json(cls, doc: object) -> TrainParams:
        names = {
            "epochs": "epochs",
            "batchSize": "batch_size",
            "learningRate": "learning_rate",
            "l2": "l2",
            "validation": "validation",
            "patience": "patience",
            "seed": "seed",
            "knots": "knots",
        }
        d = check_object(doc, "$.params", set(), set(names))
        kw: dict[str, Any] = {}
        for key, attr in names.items():
            if key in d:
                value = d[key]
                if key == "knots":
                    if not isinstance(value, list):
                        raise path_error("$.params.knots", "expected an array of numbers")
                    value = tuple(check_number(v, "$.params.knots") for v in value)
                kw[attr] = value
        return cls(**kw)


@dataclass(frozen=True)
class TrainQuery:
    """A joint training, as the bank submits it.

    Attributes:
        purpose: the declared purpose.
        mode: ``analyst-held`` or ``party-held``.
        agreements: provider id → agreement id.
        datasets: party id → dataset id (every provider, and the bank's own dataset).
        features: party id → its feature columns (the bank's included).
        label: the bank's label column (0/1).
        entities: the bank's candidate ids (aligned with every provider by PSI).
        id_kind: ``uscc`` or ``opaque``.
        missing: ``fail`` or ``impute`` (a provider's published ``imputeDefault``).
        compute_party: the provider that computes with the bank (default: the first provider).
        model_id: the trained model's id (party-held weights are stored under it).
        params: the hyper-parameters.
        feature_bound: every feature's declared ``|x|`` bound (each party refuses values beyond).
        id: the query id.
        protocol: ``additive`` (the only training protocol).
    """

    purpose: str
    mode: str
    agreements: Mapping[str, str]
    datasets: Mapping[str, str]
    features: Mapping[str, tuple[str, ...]]
    label: str
    entities: tuple[str, ...]
    id_kind: str = "opaque"
    missing: str = "fail"
    compute_party: str | None = None
    model_id: str | None = None
    params: TrainParams = field(default_factory=TrainParams)
    feature_bound: float = 1024.0
    id: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    protocol: str = "additive"

    def __post_init__(self) -> None:
        check_text(self.id, "$.id", max_length=_MAX_TEXT)
        check_text(self.purpose, "$.purpose", max_length=_MAX_TEXT)
        check_choice(self.mode, MODES, "$.mode")
        if self.protocol != "additive":
            raise path_error("$.protocol", "training runs on additive sharing only ('additive')")
        check_choice(self.id_kind, ID_KINDS, "$.idKind")
        check_choice(self.missing, MISSING_RULES, "$.missing")
        if not isinstance(self.params, TrainParams):
            raise path_error("$.params", "expected TrainParams")
        if not 0 < check_number(self.feature_bound, "$.featureBound") <= 2**16:
            raise path_error("$.featureBound", "must be in (0, 65536]")
        check_text(self.label, "$.label", max_length=_MAX_TEXT)
        agreements = dict(self.agreements)
        datasets = dict(self.datasets)
        features = {p: tuple(c) for p, c in dict(self.features).items()}
        for p, a in agreements.items():
            check_participant_id(p, f"$.agreements.{p}")
            check_text(a, f"$.agreements.{p}", max_length=_MAX_TEXT)
        for p, d in datasets.items():
            check_participant_id(p, f"$.datasets.{p}")
            check_text(d, f"$.datasets.{p}", max_length=_MAX_TEXT)
        if not agreements:
            raise path_error("$.agreements", "training needs at least one provider")
        if set(features) != set(datasets):
            raise path_error(
                "$.features", "name the feature columns of exactly the parties in datasets"
            )
        banks = sorted(set(datasets) - set(agreements))
        if len(banks) != 1:
            raise path_error("$.datasets", "name the bank's own dataset and one per provider")
        total = 1
        for p, cols in features.items():
            path = f"$.features.{p}"
            if not cols and p in agreements:
                raise path_error(path, "a provider without columns adds nothing")
            for c in cols:
                check_text(c, f"{path}[]", max_length=_MAX_TEXT)
            if len(set(cols)) != len(cols):
                raise path_error(path, "a column appears twice")
            total += len(cols)
        if self.label in features[banks[0]]:
            raise path_error("$.label", "the label is not a feature")
        if total > MAX_COLUMNS:
            raise path_error("$.features", f"at most {MAX_COLUMNS - 1} columns in all")
        if total * self.params.batch_size > MAX_BATCH_CELLS:
            raise path_error(
                "$.params.batchSize",
                f"batch size times columns ({self.params.batch_size} * {total}) exceeds "
                f"{MAX_BATCH_CELLS}: one round's message must stay small",
            )
        compute = self.compute_party or sorted(agreements)[0]
        if compute not in agreements:
            raise path_error("$.computeParty", f"{compute!r} is not a provider of the query")
        ids = tuple(
            check_entity(e, self.id_kind, f"$.entities[{i}]") for i, e in enumerate(self.entities)
        )
        if len(ids) < 2:
            raise path_error("$.entities", "training needs at least two candidate entities")
        if len(ids) > MAX_ROWS:
            raise path_error("$.entities", f"at most {MAX_ROWS} entities")
        if len(set(ids)) != len(ids):
            raise path_error("$.entities", "an entity appears twice")
        object.__setattr__(self, "agreements", agreements)
        object.__setattr__(self, "datasets", datasets)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "entities", ids)
        object.__setattr__(self, "compute_party", compute)
        object.__setattr__(
            self,
            "model_id",
            check_text(self.model_id or self.id, "$.modelId", max_length=_MAX_TEXT),
        )

    @property
    def bank(self) -> str:
        """The party that holds the label (the analyst)."""
        return next(p for p in self.datasets if p not in self.agreements)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(sorted(self.agreements))

    @property
    def others(self) -> tuple[str, ...]:
        """The providers that share their features with the two compute parties."""
        return tuple(p for p in self.providers if p != self.compute_party)

    @property
    def layout(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Column blocks after the intercept: the bank, the compute party, the others."""
        order = [self.bank, str(self.compute_party), *self.others]
        return tuple((p, self.features[p]) for p in order)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Each party's ``[start, stop)`` in the weight vector (0 is the intercept)."""
        out: dict[str, tuple[int, int]] = {}
        at = 1
        for p, cols in self.layout:
            out[p] = (at, at + len(cols))
            at += len(cols)
        return out

    @property
    def columns(self) -> int:
        """``d``: the intercept plus every feature column."""
        return 1 + sum(len(c) for _, c in self.layout)

    def epoch_query(self, epoch: int) -> str:
        """The query id recorded with epoch ``epoch``'s use."""
        return f"{self.id}#epoch-{epoch}"

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "kind": "train",
            "id": self.id,
            "purpose": self.purpose,
            "protocol": self.protocol,
            "mode": self.mode,
            "agreements": dict(self.agreements),
            "datasets": dict(self.datasets),
            "features": {p: list(c) for p, c in self.features.items()},
            "label": self.label,
            "entities": list(self.entities),
            "idKind": self.id_kind,
            "missing": self.missing,
            "computeParty": self.compute_party,
            "modelId": self.model_id,
            "featureBound": self.feature_bound,
            "params": self.params.to_json(),
        }

    @classmethod
    def from_json(cls, doc: object) -> TrainQuery:
        """Parse strictly; errors name the JSON path."""
        d = check_object(
            doc,
            "$",
            {"purpose", "mode", "agreements", "datasets", "features", "label", "entities"},
            {
                "v",
                "kind",
                "id",
                "protocol",
                "idKind",
                "missing",
                "computeParty",
                "modelId",
                "featureBound",
                "params",
            },
        )
        if d.get("v", 1) != 1:
            raise path_error("$.v", f"unsupported version {d.get('v')!r}")
        if d.get("kind", "train") != "train":
            raise path_error("$.kind", f"expected 'train', got {d.get('kind')!r}")
        for name in ("agreements", "datasets", "features"):
            if not isinstance(d[name], Mapping):
                raise path_error(f"$.{name}", "expected an object keyed by participant id")
        features: dict[str, tuple[str, ...]] = {}
        for p, cols in d["features"].items():
            if not isinstance(cols, list):
                raise path_error(f"$.features.{p}", "expected an array of column names")
            features[p] = tuple(cols)
        if not isinstance(d["entities"], list):
            raise path_error("$.entities", "expected an array of ids")
        kw: dict[str, Any] = {}
        for key, attr in (("id", "id"), ("computeParty", "compute_party"), ("modelId", "model_id")):
            if key in d:
                kw[attr] = check_text(d[key], f"$.{key}", max_length=_MAX_TEXT)
        if "featureBound" in d:
            kw["feature_bound"] = check_number(d["featureBound"], "$.featureBound")
        if "params" in d:
            kw["params"] = TrainParams.from_json(d["params"])
        return cls(
            purpose=d["purpose"],
            mode=d["mode"],
            agreements=d["agreements"],
            datasets=d["datasets"],
            features=features,
            label=d["label"],
            entities=tuple(d["entities"]),
            id_kind=d.get("idKind", "opaque"),
            missing=d.get("missing", "fail"),
            protocol=d.get("protocol", "additive"),
            **kw,
        )


@dataclass(frozen=True)
class TrainResult:
    """What the bank gets back.

    Attributes:
        query_id: the query.
        mode: the model mode.
        model: the model file (analyst-held: every party's weights; party-held: the bank's and
            the intercept, with the model id under which providers stored theirs).
        model_sha256: SHA-256 of the model file's canonical JSON (in the bank's ledger).
        cohort: aligned entities (rows), of which ``train_rows`` trained and ``valid_rows`` were
            held out.
        train_rows: training rows.
        valid_rows: held-out rows.
        epochs_run: epochs run.
        best_epoch: the epoch whose weights were released.
        losses: held-out loss per epoch (Taylor approximation; empty without a split).
        receipts: provider → ``{"align": receipt, "epochs": [receipt per epoch]}``.
        records: provider → ``{"sha256", "ledgerIndex"}`` of its ``train.model`` entry.
        timings: seconds: ``align``, ``setup``, ``epochs`` (list), ``finish``, ``total``.
    """

    query_id: str
    mode: str
    model: Model
    model_sha256: str
    cohort: int
    train_rows: int
    valid_rows: int
    epochs_run: int
    best_epoch: int
    losses: tuple[float, ...]
    receipts: Mapping[str, dict[str, Any]]
    records: Mapping[str, dict[str, Any]]
    timings: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "query": self.query_id,
            "mode": self.mode,
            "model": self.model.to_json(),
            "modelSha256": self.model_sha256,
            "cohort": self.cohort,
            "trainRows": self.train_rows,
            "validRows": self.valid_rows,
            "epochsRun": self.epochs_run,
            "bestEpoch": self.best_epoch,
            "losses": list(self.losses),
            "receipts": {p: dict(r) for p, r in self.receipts.items()},
            "records": {p: dict(r) for p, r in self.records.items()},
            "timings": dict(self.timings),
        }
