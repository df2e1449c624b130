"""The real-data example: ``trusted-space example default-credit --data DIR``.

Why: synthetic data show the machinery; a real, vertically split credit data set shows that the
secure scores are *the same scores*, so a bank loses nothing by not seeing the other party's rows.
The data (``default_credit_hetero_{guest,host}.csv``, from the FATE project's examples, derived
from the UCI "default of credit card clients" set; see the data set's README) split 30,000 card
holders' features between a guest — the bank, which also holds the label ``y`` — and a host,
here a government node.

The flow is the demo's, on these files: a real local space
(:class:`connectors.spaces.local.LocalSpace`:
an operator, the bank and the government node as separate processes; each file registered as a
``zone`` dataset with only the model's columns; an agreement negotiated over DSP), a logistic
model, and the held-out rows scored from the bank's node with every protocol. Reported per
protocol: seconds, the largest logit error against float64, and the AUC of the secure scores
next to the plaintext AUC — they must agree to three decimals (issue 5's accuracy criterion).
Also reported: the AUC with the bank's own features alone, which is what the joint model is
worth.

The files are standardised as published; the example puts every column back on its raw scale
(:data:`RAW_SCALES`, the UCI set's means and standard deviations: credit limits and bills in yuan
to ~1.7·10^6, repayments, ages, codes, as whole numbers) and the parties hold those raw values, as
an institution would.

The model is trained jointly through the nodes on a seeded 70 % split
(:mod:`trusted_space.protocols.train`: two-party secure SGD between the bank and the government
node, the operator dealing correlated randomness; the test rows are not in the training query)
and checked against plaintext training on the same schedule. The label never leaves the bank's
node: it is in the bank's own dataset, used inside the training only.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from connectors.client.results import verify_train_receipts
from connectors.client.verify import Check
from connectors.demo.stats import auc, fit_logistic
from connectors.spaces.local import LOCAL_PURPOSE, LocalParty, LocalSpace
from connectors.spaces.local_train import local_training
from trusted_space.errors import ValidationError
from trusted_space.policy import PROTOCOLS
from trusted_space.protocols.train import train_plaintext
from trusted_space.queries.score import Model
from trusted_space.queries.train import TrainParams

__all__ = [
    "BANK",
    "GOVERNMENT",
    "GUEST_FILE",
    "HOST_FILE",
    "TRAIN_PARAMS",
    "CreditData",
    "ExampleResult",
    "find_data",
    "raw_default_credit",
    "read_default_credit",
    "run_default_credit",
]

BANK: Final = "bank"
GOVERNMENT: Final = "government"
GUEST_FILE: Final = "default_credit_hetero_guest.csv"
HOST_FILE: Final = "default_credit_hetero_host.csv"
TRAIN_PARAMS: Final[Mapping[str, Any]] = {"epochs": 5, "batch_size": 1024, "learning_rate": 0.4}
"""Hyper-parameters of the joint training (the seed is the split's)."""
_ID: Final = "id"
_LABEL: Final = "y"
RAW_SCALES: Final[Mapping[str, tuple[tuple[float, float], ...]]] = {
    GUEST_FILE: (
        (167_484.0, 129_748.0),
        *((51_223.0, 73_636.0), (49_179.0, 71_174.0), (47_013.0, 69_349.0)),
        *((43_263.0, 64_333.0), (40_311.0, 60_797.0), (38_872.0, 59_554.0)),
        *((5_664.0, 16_563.0), (5_921.0, 23_041.0), (5_226.0, 17_607.0)),
        *((4_826.0, 15_666.0), (4_799.0, 15_278.0), (5_216.0, 17_777.0)),
    ),
    HOST_FILE: (
        *((1.6037, 0.4891), (1.8531, 0.7903), (1.5519, 0.5220), (35.49, 9.218)),
        *((-0.0167, 1.1238), (-0.1338, 1.1972), (-0.1662, 1.1969)),
        *((-0.2207, 1.1691), (-0.2662, 1.1332), (-0.2911, 1.1500)),
    ),
}
"""(mean, sd) of each feature column of the files, from the UCI set's description: a credit
limit, six monthly bills and six repayments in yuan; sex, education, marriage, age and six
repayment-status codes."""

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CreditData:
    """Both files, rows aligned by id (the host's rows reordered to the guest's)."""

    guest: Path
    host: Path
    ids: tuple[str, ...]
    labels: npt.NDArray[np.int64]
    guest_columns: tuple[str, ...]
    host_columns: tuple[str, ...]
    guest_x: FloatArray
    host_x: FloatArray


def find_data(explicit: Path | None, repo_root: Path | None = None) -> Path | None:
    """The directory holding both files, or ``None``.

    Looked for: ``explicit`` only, when given; else ``<repo>/../shared/data/default_credit``,
    then ``/work/shared/data/default_credit``.
    """
    candidates = [explicit] if explicit is not None else []
    if explicit is None:
        root = repo_root or Path(__file__).resolve().parents[1]
        candidates += [
            root.parent / "shared" / "data" / "default_credit",
            Path("/work/shared/data/default_credit"),
        ]
    for directory in candidates:
        if (
            directory is not None
            and (directory / GUEST_FILE).is_file()
            and (directory / HOST_FILE).is_file()
        ):
            return directory
    return None


def _read(path: Path, label: bool) -> tuple[list[str], list[str], FloatArray, list[int]]:
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if not header or header[0] != _ID or (label and header[1:2] != [_LABEL]):
                raise ValidationError(
                    f"{path}: expected a header starting with id{',y' if label else ''}"
                )
            start = 2 if label else 1
            ids: list[str] = []
            labels: list[int] = []
            rows: list[list[float]] = []
            for number, record in enumerate(reader, start=2):
                try:
                    ids.append(record[0])
                    if label:
                        labels.append(int(record[1]))
                    rows.append([float(v) for v in record[start:]])
                except (ValueError, IndexError) as exc:
                    raise ValidationError(f"{path}:{number}: {exc}") from exc
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc}") from exc
    return ids, header[start:], np.asarray(rows, dtype=np.float64), labels


def read_default_credit(directory: Path) -> CreditData:
    """Read and align both files.

    Raises:
        ValidationError: a file is missing or malformed, or the ids differ.
    """
    guest, host = directory / GUEST_FILE, directory / HOST_FILE
    g_ids, g_cols, g_x, labels = _read(guest, label=True)
    h_ids, h_cols, h_x, _ = _read(host, label=False)
    position = {e: i for i, e in enumerate(h_ids)}
    if len(position) != len(h_ids) or set(position) != set(g_ids) or len(set(g_ids)) != len(g_ids):
        raise ValidationError(f"{guest} and {host} do not hold the same, unique ids")
    order = np.fromiter((position[e] for e in g_ids), dtype=np.int64, count=len(g_ids))
    return CreditData(
        guest=guest,
        host=host,
        ids=tuple(g_ids),
        labels=np.asarray(labels, dtype=np.int64),
        guest_columns=tuple(g_cols),
        host_columns=tuple(h_cols),
        guest_x=g_x,
        host_x=h_x[order],
    )


@dataclass
class ExampleResult:
    """What the example found (``summary()`` is the ``--json`` output)."""

    checks: list[Check]
    facts: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.facts, "checks": [c.to_json() for c in self.checks]}


def _bank_alone(data: CreditData, train: npt.NDArray[np.int64]) -> Model:
    """The bank's model on its own features (its own data: fitted in plaintext)."""
    alone = fit_logistic(data.guest_x[train], data.labels[train])
    return Model.from_json(
        {
            "intercept": alone.intercept,
            "link": "logistic",
            "weights": {
                BANK: {c: float(w) for c, w in zip(data.guest_columns, alone.weights, strict=True)}
            },
        }
    )


def _train_jointly(
    local: LocalSpace, data: CreditData, ids: Sequence[str], params: TrainParams, timeout: float
) -> dict[str, Any]:
    """Train from the bank's node on ``ids`` (the training split; the test rows stay out)."""
    features = {BANK: list(data.guest_columns), GOVERNMENT: list(data.host_columns)}
    doc: dict[str, Any] = {
        "purpose": LOCAL_PURPOSE,
        "protocol": "additive",
        "mode": "analyst-held",
        "agreements": dict(local.agreements),
        "datasets": {p.name: p.dataset_id for p in local.parties},
        "features": features,
        "label": _LABEL,
        "entities": list(ids),
        "params": params.to_json(),
    }
    with local.client(timeout=timeout) as client:
        view = client.submit_train(doc)
        return client.wait(view["id"], timeout=timeout)


def raw_default_credit(data: CreditData, directory: Path) -> CreditData:
    """The files with every column on its raw scale, written to ``directory``.

    :data:`RAW_SCALES`, rounded to whole numbers; the same ids, labels and column names.

    Raises:
        ValidationError: the files do not have the published columns.
    """
    out = {}
    for name, x, columns, label in (
        (GUEST_FILE, data.guest_x, data.guest_columns, True),
        (HOST_FILE, data.host_x, data.host_columns, False),
    ):
        scales = np.array(RAW_SCALES[name])
        if x.shape[1] != len(scales):
            raise ValidationError(f"{name}: expected {len(scales)} feature columns")
        raw = np.rint(x * scales[:, 1] + scales[:, 0])
        path = directory / name
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([_ID, *([_LABEL] if label else []), *columns])
            for i, e in enumerate(data.ids):
                head = [e, int(data.labels[i])] if label else [e]
                writer.writerow([*head, *(f"{v:.0f}" for v in raw[i])])
        out[name] = (path, raw)
    return dataclasses.replace(
        data,
        guest=out[GUEST_FILE][0],
        host=out[HOST_FILE][0],
        guest_x=out[GUEST_FILE][1],
        host_x=out[HOST_FILE][1],
    )


def run_default_credit(
    directory: Path,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    test_fraction: float = 0.3,
    seed: int = 7,
    limit: int | None = None,
    work_dir: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    timeout: float = 600.0,
) -> ExampleResult:
    """Run the example (see the module docstring).

    Args:
        directory: holds the two CSV files.
        protocols: protocols to score with.
        test_fraction: the held-out share scored jointly.
        seed: the split's seed (and the training schedule's).
        limit: score at most this many held-out rows (a quicker run; AUCs then on those only).
        work_dir: keep the node directories there (default: a temporary directory, removed).
        say: progress lines.
        timeout: seconds per query.

    Raises:
        ValidationError: the files are missing or malformed.
    """
    started = time.perf_counter()
    # The parties hold raw values, in files of their own (removed with the example).
    with tempfile.TemporaryDirectory(prefix="trusted-space-example-") as raw_dir:
        data = raw_default_credit(read_default_credit(directory), Path(raw_dir))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data.ids))
        cut = round(len(order) * (1 - test_fraction))
        train, test = np.sort(order[:cut]), np.sort(order[cut:])
        if limit is not None:
            test = test[:limit]
        params = TrainParams(**TRAIN_PARAMS, seed=seed)
        labels = data.labels[test]
        x_all = np.hstack([data.guest_x, data.host_x])
        alone = _bank_alone(data, train)
        auc_alone = auc(labels, alone.intercept + data.guest_x[test] @ alone.weights_of(BANK))
        # The plaintext reference: the same schedule, initialisation and sigmoid approximation.
        reference = train_plaintext(
            x_all[train], data.labels[train], params, sigmoid=params.sigmoid
        )
        auc_reference = auc(labels, reference.logits(x_all[test]))
        checks: list[Check] = []
        facts: dict[str, Any] = {
            "data": {
                "directory": str(directory),
                "rows": len(data.ids),
                "bankColumns": len(data.guest_columns),
                "governmentColumns": len(data.host_columns),
                "training": len(train),
                "scored": len(test),
                "defaultRate": round(float(data.labels.mean()), 4),
            },
            "aucBankAlone": round(auc_alone, 4),
            "protocols": [],
        }
        train_ids = [data.ids[int(i)] for i in train]
        ids = [data.ids[int(i)] for i in test]
        say(f"starting a local space: bank ({data.guest.name}) and government ({data.host.name})")
        local = local_training(
            [LocalParty(BANK, data.guest), LocalParty(GOVERNMENT, data.host)],
            _ID,
            _LABEL,
            features={BANK: data.guest_columns, GOVERNMENT: data.host_columns},
            work_dir=work_dir,
            keep=work_dir is not None,
        )
        with local:
            local.start(timeout=timeout)
            facts["timings"] = {
                "spaceUp": round(local.timings.get("spaceUp", 0.0), 3),
                "negotiate": round(local.timings.get("negotiate", 0.0), 3),
            }
            say(f"training jointly on {len(train_ids):,} rows ({params.epochs} epochs)")
            mark = time.perf_counter()
            trained = _train_jointly(local, data, train_ids, params, timeout)
            facts["timings"]["train"] = round(time.perf_counter() - mark, 3)
            model = Model.from_json(trained["model"])
            receipts = verify_train_receipts(trained, local.ledger_vkeys())
            weights = np.concatenate([model.weights_of(BANK), model.weights_of(GOVERNMENT)])
            plain = model.intercept + x_all[test] @ weights
            auc_plain = auc(labels, plain)
            error = float(
                max(
                    np.max(np.abs(weights - reference.weights)),
                    abs(model.intercept - reference.intercept),
                )
            )
            facts["model"] = {
                "how": "trained jointly through the nodes (two-party secure SGD between the bank "
                "and the government node, the operator dealing correlated randomness) on the "
                "70 % training split; the bank received the weights",
                "params": params.to_json(),
                "epochsRun": trained.get("epochsRun"),
                "aucJoint": round(auc_plain, 4),
                "aucPlaintextReference": round(auc_reference, 4),
                "maxWeightErrorVsPlaintext": error,
                "receiptsVerified": sum(len(r) for r in receipts.values()),
            }
            facts["aucJointPlaintext"] = round(auc_plain, 4)
            checks.append(
                Check(
                    "joint training agrees with plaintext training",
                    abs(auc_plain - auc_reference) <= 0.005,
                    f"AUC {auc_plain:.4f} vs {auc_reference:.4f} (same schedule); largest "
                    f"weight difference {error:.1e}; "
                    f"{facts['model']['receiptsVerified']} receipts verified",
                )
            )
            checks.append(
                Check(
                    "the government's features improve the bank's prediction",
                    auc_plain > auc_alone,
                    f"AUC {auc_plain:.4f} jointly vs {auc_alone:.4f} with the bank's features "
                    "alone",
                )
            )
            local.model = model  # score with the trained model from here on
            position = {e: i for i, e in enumerate(ids)}
            for protocol in protocols:
                say(f"scoring {len(ids):,} held-out card holders with {protocol}")
                mark = time.perf_counter()
                result = local.score(protocol, entities=ids, timeout=timeout)
                seconds = time.perf_counter() - mark
                receipts_score = local.verify_receipts(result)
                at = np.fromiter(
                    (position[e] for e in result["entities"]),
                    dtype=np.int64,
                    count=len(result["entities"]),
                )
                logits = np.asarray(result["logits"], dtype=np.float64)
                error = float(np.max(np.abs(logits - plain[at]))) if len(at) else float("inf")
                secure = auc(labels[at], logits) if len(at) == len(ids) else float("nan")
                facts["protocols"].append(
                    {
                        "protocol": protocol,
                        "scored": len(at),
                        "seconds": round(seconds, 3),
                        "maxAbsLogitError": error,
                        "auc": round(secure, 4),
                        "aucPlaintext": round(auc_plain, 4),
                        "receiptsVerified": sorted(receipts_score),
                    }
                )
                checks.append(
                    Check(
                        f"{protocol}: secure AUC equals plaintext AUC (3 decimals)",
                        len(at) == len(ids) and abs(secure - auc_plain) < 5e-4,
                        f"{secure:.4f} vs {auc_plain:.4f} over {len(at)} of {len(ids)} rows; max "
                        f"|logit error| {error:.1e}",
                    )
                )
                checks.append(
                    Check(
                        f"{protocol}: the government's receipt verifies",
                        GOVERNMENT in receipts_score,
                        ", ".join(sorted(receipts_score)) or "no receipt",
                    )
                )
        facts["timings"]["total"] = round(time.perf_counter() - started, 3)
        return ExampleResult(checks, facts)
