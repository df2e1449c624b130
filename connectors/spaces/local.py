"""A joint score over local files, through a real space started for the occasion.

``trusted-space local score --party bank=bank.csv --party tax=tax.csv --id uscc --model m.json``
is how someone tries the product on their own files in one command, and how the benchmark
measures it: nothing is simulated. :class:`LocalSpace` starts an operator and one node process per
party (:func:`connectors.spaces.space.up`; the first party is the analyst, a consumer that also
holds
data; the others are providers), registers each file as a ``zone`` dataset (the id column at
grade 1 and only the columns the model names, at grade 3), publishes an offer that permits a
``score`` with every protocol for purpose ``local-trial``, negotiates an agreement with every
provider over DSP (:func:`connectors.cli.catalog.follow_negotiation`), runs the query from
the analyst's node (:class:`connectors.client.analyst.AnalystClient`) and finally stops every
process.

With ``missing="impute"`` each provider publishes its column means as ``imputeDefault`` (the
owner's published default, computed from its own file here; never a silent zero). Every
published numeric column declares its range (``bound``: the largest ``|x|`` of the owner's file
here, a real owner declares it); the protocols scale each column by it, so raw amounts, counts
and flags are scored as they are (the analyst's node reads the ranges from the space's catalog:
the query names no bound).

:meth:`LocalSpace.verify_receipts` verifies every provider's receipt against the ledger vkey its
node publishes (:func:`connectors.client.results.verify_receipts`) and returns what an auditor
checks by hand: the signed checkpoint note, the node's ledger vkey (C2SP vkey form), the use
entry's leaf index, the tree size, the inclusion path (hex) and the entry bytes (base64).

Threats: the node directories (keys, admin tokens, stores) are created mode 0700 under the work
directory, which is a fresh temporary directory unless one is given; the files are only read.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from connectors.client.analyst import AnalystClient, QueryProgress
from connectors.client.catalog import follow_negotiation
from connectors.client.results import verify_receipts
from connectors.common.errors import ConnectorError
from connectors.node.sources import SourceSpec, open_source
from connectors.spaces.space import (
    DatasetConfig,
    NodeConfig,
    RunningSpace,
    SourceConfig,
    SpaceConfig,
    up,
)
from trusted_space.catalog import check_participant_id
from trusted_space.errors import TrustedSpaceError, ValidationError
from trusted_space.policy import PROTOCOLS
from trusted_space.queries.score import Model

__all__ = [
    "LOCAL_PURPOSE",
    "OPERATOR_NAME",
    "LocalParty",
    "LocalSpace",
    "LocalSpaceError",
    "local_dataset",
    "local_offer",
    "parse_party",
]

LOCAL_PURPOSE: Final = "local-trial"
OPERATOR_NAME: Final = "local-operator"
_TABLE: Final = re.compile(r"[^A-Za-z0-9_]")


class LocalSpaceError(ConnectorError):
    """The local run could not be set up or did not finish (the message says which step)."""


@dataclass(frozen=True)
class LocalParty:
    """One party of a local run: its participant id and its file (CSV or Parquet)."""

    name: str
    path: Path

    @property
    def kind(self) -> str:
        return "parquet" if self.path.suffix.lower() in {".parquet", ".pq"} else "csv"

    @property
    def dataset_id(self) -> str:
        return f"{self.name}-features"


def parse_party(text: str) -> LocalParty:
    """``NAME=FILE`` (``ValidationError`` if malformed or the file is missing)."""
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise ValidationError(f"--party {text!r}: expected NAME=FILE")
    check_participant_id(name, "--party")
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise ValidationError(f"--party {name}: no file at {file}")
    return LocalParty(name, path)


def local_offer(
    protocols: Sequence[str] = PROTOCOLS,
    purpose: str = LOCAL_PURPOSE,
    kinds: Sequence[str] = ("score",),
    models: Sequence[str] = ("analyst-held", "party-held"),
    rules: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An ODRL offer permitting joint ``kinds`` with ``protocols`` for ``purpose`` only.

    ``rules``: more constraints of the permission (e.g. a per-entity budget, ``entityCount``).

    ``models``: the weights a score may apply (policy operand ``model``). A local space is the
    user's own trial on its own files, so it opts in to analyst-held weights explicitly (zone
    data refuses them otherwise).

    ``kinds`` are computations (``score``, ``aggregate``, ``train``); the permitted outputs
    match them (training releases aggregates: its weights).
    """
    outputs = [
        k for k in ("score", "aggregate") if k in kinds or (k == "aggregate" and "train" in kinds)
    ]
    return {
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": purpose},
                    {
                        "leftOperand": "computation",
                        "operator": "isAnyOf",
                        "rightOperand": list(kinds),
                    },
                    {
                        "leftOperand": "protocol",
                        "operator": "isAnyOf",
                        "rightOperand": list(protocols),
                    },
                    {"leftOperand": "output", "operator": "isAnyOf", "rightOperand": outputs},
                    {"leftOperand": "model", "operator": "isAnyOf", "rightOperand": list(models)},
                    *(dict(r) for r in rules),
                ],
            }
        ],
    }


def local_dataset(
    party: LocalParty,
    id_column: str,
    columns: Sequence[str],
    *,
    id_kind: str = "opaque",
    impute: dict[str, float] | None = None,
    bounds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Dataset JSON publishing ``columns`` of the party's file in tier ``zone``."""
    fields: list[dict[str, Any]] = [
        {"name": id_column, "type": "string", "grade": 1, "description": "entity id"}
    ]
    for c in columns:
        f: dict[str, Any] = {"name": c, "type": "float", "grade": 3}
        if impute and c in impute:
            f["imputeDefault"] = impute[c]
        if bounds and c in bounds:
            f["bound"] = bounds[c]
        fields.append(f)
    table = _TABLE.sub("_", party.path.stem) or "features"
    if not table[0].isalpha():
        table = f"t_{table}"
    return {
        "id": party.dataset_id,
        "owner": party.name,
        "title": f"{party.name}: {party.path.name}",
        "description": "Published for a local trial: rows only feed joint computations.",
        "tier": "zone",
        "keyColumn": id_column,
        "keyKind": id_kind,
        "responsibility": {"id": "local-trial", "title": "Local trial"},
        "resource": {"id": f"{party.name}-file", "title": party.path.name},
        "table": {"name": table[:64], "fields": fields},
    }


def _check_file(party: LocalParty, id_column: str, columns: Sequence[str]) -> None:
    source = open_source(SourceSpec(party.kind, str(party.path)))
    present = set(source.column_names())
    lacking = [c for c in (id_column, *columns) if c not in present]
    if lacking:
        raise ValidationError(f"{party.path}: no column(s) {lacking} (party {party.name})")


def _read_ids(party: LocalParty, id_column: str) -> list[str]:
    source = open_source(SourceSpec(party.kind, str(party.path)))
    ids: list[str] = []
    for chunk in source.chunks(id_column, [], numeric=False):
        ids.extend(chunk.keys)
    return ids


def _means(party: LocalParty, id_column: str, columns: Sequence[str]) -> dict[str, float]:
    source = open_source(SourceSpec(party.kind, str(party.path)))
    sums = dict.fromkeys(columns, 0.0)
    rows = 0
    for chunk in source.chunks(id_column, list(columns)):
        rows += len(chunk)
        for c in columns:
            sums[c] += float(chunk.columns[c].sum())
    return {c: (s / rows if rows else 0.0) for c, s in sums.items()}


def _declared_ranges(party: LocalParty, id_column: str, columns: Sequence[str]) -> dict[str, float]:
    """Each column's declared range: the largest ``|x|`` of the file (1 for an all-zero one)."""
    source = open_source(SourceSpec(party.kind, str(party.path)))
    worst = dict.fromkeys(columns, 0.0)
    for chunk in source.chunks(id_column, list(columns)):
        for c in columns:
            values = np.abs(np.asarray(chunk.columns[c], dtype=np.float64))
            if values.size and not np.all(np.isnan(values)):
                worst[c] = max(worst[c], float(np.nanmax(values)))
    return {c: (w if w > 0 else 1.0) for c, w in worst.items()}


@dataclass
class LocalSpace:
    """An operator, the analyst and the providers of a local run, as real node processes.

    Args:
        parties: the first is the analyst (consumer and provider), the others providers.
        model: the model; parties without weights in it are left out.
        id_column: the entity id column, in every file.
        id_kind: ``opaque`` or ``uscc`` (USCCs are checked when the files are registered).
        missing: ``fail`` or ``impute`` (providers publish their column means as defaults).
        work_dir: where node directories go (a fresh temporary directory if ``None``, removed at
            :meth:`stop` unless ``keep``).
        keep: keep the work directory.
        label: a label column the analyst also publishes (for ``local train``).
        kinds: the computations the offers permit.
        rules: party → more constraints of its offer (e.g. a per-entity budget).
    """

    parties: Sequence[LocalParty]
    model: Model
    id_column: str
    id_kind: str = "opaque"
    missing: str = "fail"
    work_dir: Path | None = None
    keep: bool = False
    label: str | None = None
    kinds: tuple[str, ...] = ("score",)
    rules: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    agreements: dict[str, str] = field(default_factory=dict)
    space: RunningSpace | None = None
    _made_dir: bool = False
    _ranges: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.parties) < 2:
            raise ValidationError("a local score needs the analyst and at least one provider")
        names = [p.name for p in self.parties]
        if len(set(names)) != len(names):
            raise ValidationError(f"party names repeat: {names}")
        if OPERATOR_NAME in names:
            raise ValidationError(f"{OPERATOR_NAME!r} is the operator's name; rename that party")
        unknown = sorted(set(self.model.parties) - set(names))
        if unknown:
            raise ValidationError(f"the model has weights of {unknown}, which are not parties")
        used = [p for p in self.parties[1:] if self.model.columns(p.name)]
        if not used:
            raise ValidationError("the model has no weights of any provider")
        self.parties = [self.parties[0], *used]
        for p in self.parties:
            _check_file(p, self.id_column, self._published(p))

    def _published(self, party: LocalParty) -> list[str]:
        """The columns a party publishes: its model columns (and the analyst's label)."""
        columns = list(self.model.columns(party.name))
        if self.label is not None and party is self.parties[0]:
            columns.append(self.label)
        return columns

    @property
    def analyst(self) -> LocalParty:
        return self.parties[0]

    @property
    def providers(self) -> list[LocalParty]:
        return list(self.parties[1:])

    # -- lifecycle -------------------------------------------------------------------------
    def _config(self, root: Path) -> SpaceConfig:
        nodes = [NodeConfig(OPERATOR_NAME, ("operator",))]
        for i, p in enumerate(self.parties):
            columns = self.model.columns(p.name)
            datasets: tuple[DatasetConfig, ...] = ()
            if columns or i == 0:
                impute = (
                    _means(p, self.id_column, columns)
                    if self.missing == "impute" and columns
                    else None
                )
                if columns:
                    self._ranges[p.name] = _declared_ranges(p, self.id_column, columns)
                doc = local_dataset(
                    p,
                    self.id_column,
                    self._published(p),
                    id_kind=self.id_kind,
                    impute=impute,
                    bounds=self._ranges.get(p.name),
                )
                datasets = (
                    DatasetConfig(
                        file=p.path,
                        dataset=doc,
                        source=SourceConfig(p.kind, p.path),
                        offers=(local_offer(kinds=self.kinds, rules=self.rules.get(p.name, ())),),
                    ),
                )
            roles = ("consumer", "provider") if i == 0 else ("provider",)
            nodes.append(NodeConfig(p.name, roles, datasets=datasets))
        return SpaceConfig(
            path=root / "space.toml",
            name="local",
            dir=root / "space",
            host="127.0.0.1",
            base_port=0,
            nodes=tuple(nodes),
        )

    def start(
        self, progress: Callable[[str], None] | None = None, *, timeout: float = 120.0
    ) -> None:
        """Start the nodes, publish the files and negotiate with every provider."""
        step = progress or (lambda _: None)
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="trusted-space-local-"))
            self._made_dir = True
        self.work_dir = self.work_dir.resolve()  # once, against the caller's directory
        self.work_dir.mkdir(parents=True, exist_ok=True)
        mark = time.perf_counter()
        try:
            self.space = up(self._config(self.work_dir), timeout=timeout, progress=step)
        except (TrustedSpaceError, ConnectorError, OSError) as exc:
            self._cleanup()
            raise LocalSpaceError(f"starting the local space failed: {exc}") from exc
        self.timings["spaceUp"] = time.perf_counter() - mark
        mark = time.perf_counter()
        try:
            self._negotiate(step, timeout)
        except BaseException:
            self.stop()
            raise
        self.timings["negotiate"] = time.perf_counter() - mark

    def _negotiate(self, step: Callable[[str], None], timeout: float) -> None:
        assert self.space is not None
        with self.space[self.analyst.name].admin(timeout=timeout) as client:
            for p in self.providers:
                view = follow_negotiation(client, p.name, p.dataset_id, timeout=timeout)
                if view.get("state") != "FINALIZED" or not view.get("agreementId"):
                    raise LocalSpaceError(
                        f"the negotiation with {p.name} ended {view.get('state')}, not FINALIZED"
                    )
                self.agreements[p.name] = str(view["agreementId"])
                step(f"agreement with {p.name}")

    def client(self, **kw: Any) -> AnalystClient:
        """An analyst client of the analyst's node."""
        if self.space is None:
            raise LocalSpaceError("the local space is not running")
        node = self.space[self.analyst.name]
        return AnalystClient.from_dir(node.dir, url=node.url, **kw)

    def entities(self) -> list[str]:
        """The analyst's ids, in file order (what a local score scores)."""
        return _read_ids(self.analyst, self.id_column)

    def score(
        self,
        protocol: str,
        *,
        entities: Sequence[str] | None = None,
        cohort: bool = False,
        progress: Callable[[QueryProgress], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run the score from the analyst's node; returns the result JSON."""
        ids = list(entities) if entities is not None else self.entities()
        datasets = {p.name: p.dataset_id for p in self.providers}
        if self.model.columns(self.analyst.name):
            datasets[self.analyst.name] = self.analyst.dataset_id
        doc = {
            "purpose": LOCAL_PURPOSE,
            "protocol": protocol,
            "mode": "analyst-held",
            "model": self.model.to_json(),
            "agreements": dict(self.agreements),
            "datasets": datasets,
            "entities": ids,
            "cohort": cohort,
            "idKind": self.id_kind,
            "missing": self.missing,
        }
        mark = time.perf_counter()
        with self.client(timeout=600.0) as client:
            result = client.score_json(doc, progress=progress, timeout=timeout)
        self.timings[f"query.{protocol}"] = time.perf_counter() - mark
        return result

    def ledger_vkeys(self) -> dict[str, str]:
        """Each provider's ledger vkey, as its node publishes it (``GET /identity``)."""
        if self.space is None:
            raise LocalSpaceError("the local space is not running")
        out = {}
        for p in self.providers:
            with self.space[p.name].admin() as admin:
                out[p.name] = str(admin.get("/identity")["ledgerVkey"])
        return out

    def verify_receipts(self, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Summaries of the providers' receipts, each verified against the node's own vkey.

        Raises:
            VerificationError: a receipt does not verify.
        """
        return verify_receipts(result, self.ledger_vkeys())

    def node_pids(self) -> dict[str, int]:
        """Process id of every running node."""
        if self.space is None:
            return {}
        return {n: node.pid for n, node in self.space.nodes.items() if node.pid is not None}

    def stop(self) -> None:
        """Stop every node and remove the work directory (unless kept)."""
        if self.space is not None:
            self.space.stop()
            self.space = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._made_dir and not self.keep and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> LocalSpace:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
