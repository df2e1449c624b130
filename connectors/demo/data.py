"""Synthetic enterprises for the demonstration: five institutions' tables and a ground truth.

Why synthetic: the demo must run anywhere in a couple of minutes and show a number that means
something (does government data improve a bank's default prediction?), so the data have to be
realistic in shape and in their correlations, reproducible from a seed, and free of anyone's real
records. :func:`generate` draws ``n`` enterprises with valid USCCs
(:func:`trusted_space.uscc.generate_uscc`) and, for each, the rows five institutions would hold:

- market registration (public registry): status, age, registered capital, paid-in ratio, whether
  the enterprise is on the abnormal-operation list;
- tax bureau: tax credit grade A/B/M/C/D, tax paid and its growth, arrears;
- social insurance: insured staff, years of contributions, months in arrears;
- court: on the dishonest-debtor list, amount under enforcement, lawsuits as defendant;
- bank: earlier loans with the bank, days overdue, credit-line utilisation.

Every table is a noisy view of two hidden traits per enterprise, *health* ``h`` and *size* ``s``
(both standard normal, independent). The ground-truth model (:data:`TRUTH`) turns the traits and a
few observable events into a default probability over the next twelve months, and the label is a
Bernoulli draw from it. Because the bank sees only its own loan history — and nothing at all of
enterprises that never borrowed from it — while the government tables carry several independent
views of ``h``, a model with government features predicts defaults clearly better. docs/demo.md
writes the generator and the ground truth out as formulas.

Nothing here is secret or sensitive: it is demo data. The functions are deterministic given the
seed (one :class:`numpy.random.Generator`, and a :class:`random.Random` seeded from it for the
USCCs).
"""

from __future__ import annotations

import csv
import random
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from trusted_space.queries.score import logistic
from trusted_space.uscc import generate_uscc

__all__ = [
    "BANK",
    "BANK_OUTCOMES",
    "COURT",
    "COLUMN_BOUNDS",
    "CREDIT_GRADES",
    "DEMO_DATE",
    "LABEL",
    "MARKET",
    "MODEL_COLUMNS",
    "PARTIES",
    "PROVIDERS",
    "SOCIAL",
    "SOURCE_FILES",
    "TAX",
    "TRUTH",
    "DemoData",
    "generate",
    "write_tables",
]

BANK: Final = "bank"
MARKET: Final = "market-registration"
TAX: Final = "tax-bureau"
SOCIAL: Final = "social-insurance"
COURT: Final = "court"
BANK_OUTCOMES: Final = "bank-outcomes"
LABEL: Final = "defaulted"
PROVIDERS: Final = (MARKET, TAX, SOCIAL, COURT)
PARTIES: Final = (BANK, *PROVIDERS)
CREDIT_GRADES: Final = ("A", "B", "M", "C", "D")
"""Tax credit grades, best first (``M``: newly established, not yet rated on a full year)."""
DEMO_DATE: Final = date(2025, 6, 30)
"""The day the demo data describe (ages and listing dates are counted back from it)."""

MODEL_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    BANK: ("prior_loans", "overdue_30", "utilisation"),
    MARKET: ("age_years", "paid_in_ratio", "abnormal_operation"),
    TAX: ("credit_rank", "tax_paid", "tax_growth", "tax_arrears"),
    SOCIAL: ("insured_staff", "contribution_years", "arrears_months"),
    COURT: ("dishonest_debtor", "enforcement_amount", "lawsuits"),
}
"""The columns of each party a scoring model may use: raw yuan amounts, counts, years, ratios
and flags, as the owners keep them (each within its :data:`COLUMN_BOUNDS`)."""

COLUMN_BOUNDS: Final[Mapping[str, float]] = {
    "prior_loans": 20.0,
    "max_overdue_days": 360.0,
    "overdue_30": 1.0,
    "utilisation": 1.5,
    "age_years": 40.0,
    "registered_capital": 1e9,
    "paid_in_ratio": 1.0,
    "abnormal_operation": 1.0,
    "credit_rank": 4.0,
    "tax_paid": 1e9,
    "log_tax_paid": 9.0,
    "tax_growth": 3.0,
    "tax_arrears": 1.0,
    "insured_staff": 5000.0,
    "log_insured_staff": 4.0,
    "contribution_years": 15.0,
    "arrears_months": 24.0,
    "dishonest_debtor": 1.0,
    "enforcement_amount": 1e9,
    "log_enforcement": 6.0,
    "lawsuits": 40.0,
}
"""Each numeric column's declared range (the catalog's ``bound``): the generator's own limits."""

TRUTH: Final[Mapping[str, float]] = {
    "intercept": -3.3,
    "health": -1.25,
    "size": -0.25,
    "abnormal_operation": 0.55,
    "tax_arrears": 0.45,
    "dishonest_debtor": 1.1,
    "overdue_30": 0.5,
    "arrears_months": 0.06,
    "new_enterprise": 0.4,
}
"""Ground truth: default logit = intercept + Σ coefficient · term (see docs/demo.md).

``health`` and ``size`` are the hidden traits; ``new_enterprise`` is 1 for an enterprise younger
than two years; the other terms are the observable columns of the same name.
"""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DemoData:
    """The generated enterprises.

    Attributes:
        seed: the seed they came from.
        ids: USCCs, one per enterprise.
        tables: party → column → values (one row per enterprise, in ``ids`` order).
        truth_logit: the ground-truth default logit.
        labels: 1 if the enterprise defaults in the twelve months after :data:`DEMO_DATE`.
        applicants: indices of the enterprises applying for a loan (all active, none in ``train``).
        train: indices of the bank's earlier applicants whose outcome it knows (training set).
        no_consent: index of one active enterprise that applies but never gave consent.
    """

    seed: int
    ids: tuple[str, ...]
    tables: Mapping[str, Mapping[str, npt.NDArray[np.generic]]]
    truth_logit: FloatArray
    labels: IntArray
    applicants: IntArray
    train: IntArray
    no_consent: int

    @property
    def n(self) -> int:
        return len(self.ids)

    def matrix(self, party: str, columns: Sequence[str] | None = None) -> FloatArray:
        """The party's model columns (or ``columns``) as a float64 matrix, rows in ``ids`` order."""
        names = MODEL_COLUMNS[party] if columns is None else columns
        return np.column_stack([np.asarray(self.tables[party][c], dtype=np.float64) for c in names])

    def ids_at(self, rows: npt.NDArray[np.int64]) -> list[str]:
        return [self.ids[int(i)] for i in rows]


def _usccs(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    r = random.Random(int(rng.integers(0, 2**63 - 1)))  # noqa: S311 - demo data, seeded on purpose
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(generate_uscc(r), None)
    return tuple(seen)


def generate(
    n: int = 20_000, *, applicants: int = 1_000, seed: int = 2025, train: int | None = 8_000
) -> DemoData:
    """Draw ``n`` enterprises, their five tables, the ground truth and the applicant split.

    Args:
        n: enterprises in the city (every government table holds a row for each).
        applicants: enterprises applying for a loan now (scored by the demo).
        seed: the seed; the same seed gives the same data, byte for byte.
        train: earlier applicants whose outcome the bank knows, drawn among the other
            enterprises (at most all of them; ``None``: all of them).

    Raises:
        ValueError: sizes that do not fit (fewer than 100 enterprises, or applicants and training
            set larger than the city).
    """
    if n < 100 or applicants < 10 or applicants + 50 > n:
        raise ValueError(f"need n >= 100 and 10 <= applicants <= n - 50 (got {n}, {applicants})")
    rng = np.random.default_rng(seed)
    ids = _usccs(rng, n)
    health = rng.standard_normal(n)
    size = rng.standard_normal(n)

    def noise() -> FloatArray:
        return rng.standard_normal(n)

    # -- market registration: the public registry ----------------------------------------------
    age_years = np.clip(np.exp(1.45 + 0.55 * noise() + 0.12 * health + 0.1 * size), 0.2, 40.0)
    age_days = np.round(age_years * 365.25).astype(np.int64)
    age_years = np.round(age_days / 365.25, 2)
    registered_capital = np.round(  # CNY
        np.clip(10 ** (6.0 + 0.6 * size + 0.3 * noise()), 1e4, 1e9), -3
    )
    paid_in_ratio = np.round(np.clip(logistic(0.6 + 0.8 * health + 0.6 * noise()), 0, 1), 3)
    abnormal = (rng.random(n) < logistic(-3.1 - 1.1 * health)).astype(np.int64)
    status_draw = rng.random(n)
    revoked_p = logistic(-5.2 - 1.4 * health)
    status = np.where(
        status_draw < revoked_p,
        "revoked",
        np.where(status_draw < revoked_p + 0.015, "cancelled", "active"),
    )
    established = np.array(
        [(DEMO_DATE - timedelta(days=int(d))).isoformat() for d in age_days], dtype=object
    )

    # -- tax bureau ------------------------------------------------------------------------------
    grade_score = 0.9 * health + 0.45 * noise()
    cuts = np.quantile(grade_score, [0.05, 0.25, 0.72])  # D 5 %, C 20 %, B 47 %, A 28 %
    credit_rank = np.select(
        [grade_score < cuts[0], grade_score < cuts[1], grade_score < cuts[2]], [4, 3, 1], 0
    ).astype(np.int64)
    credit_rank = np.where(age_years < 1.0, 2, credit_rank)  # newly established: M
    credit_grade = np.array([CREDIT_GRADES[r] for r in credit_rank], dtype=object)
    tax_paid = np.round(
        np.clip(10 ** (4.8 + 0.75 * size + 0.3 * health + 0.35 * noise()), 500.0, 1e9), 2
    )  # CNY
    log_tax_paid = np.round(np.log10(tax_paid), 4)
    tax_growth = np.round(np.clip(0.05 + 0.14 * health + 0.22 * noise(), -0.95, 3.0), 4)
    tax_arrears = (rng.random(n) < logistic(-2.9 - 1.2 * health)).astype(np.int64)

    # -- social insurance ------------------------------------------------------------------------
    insured_staff = np.clip(
        np.round(10 ** (0.95 + 0.5 * size + 0.12 * health + 0.2 * noise())), 1, 5000
    ).astype(np.int64)
    log_insured_staff = np.round(np.log10(1.0 + insured_staff), 4)
    contribution_years = np.round(
        np.minimum(age_years, 15.0) * np.clip(0.85 + 0.08 * health + 0.1 * noise(), 0.2, 1.0), 2
    )
    arrears_months = np.minimum(rng.poisson(np.exp(-1.9 - 1.0 * health)), 24).astype(np.int64)

    # -- court -----------------------------------------------------------------------------------
    lawsuits = np.minimum(rng.poisson(np.exp(-1.4 - 0.8 * health + 0.35 * size)), 40).astype(
        np.int64
    )
    dishonest = (rng.random(n) < logistic(-4.4 - 1.5 * health)).astype(np.int64)
    enforced = (dishonest == 1) | (rng.random(n) < logistic(-3.2 - 0.9 * health))
    enforcement_amount = np.where(
        enforced, np.round(np.clip(10 ** (5.0 + 0.5 * size + 0.5 * noise()), 0.0, 1e9)), 0.0
    )  # CNY
    log_enforcement = np.round(np.log10(1.0 + enforcement_amount / 1e4), 4)

    # -- bank: its own customers only --------------------------------------------------------------
    customer = rng.random(n) < logistic(0.2 + 0.6 * size)
    prior_loans = np.where(
        customer, np.minimum(1 + rng.poisson(np.exp(0.5 + 0.4 * size)), 20), 0
    ).astype(np.int64)
    late = customer & (rng.random(n) < logistic(-1.6 - 1.0 * health))
    max_overdue_days = np.where(
        late, np.minimum(np.ceil(rng.exponential(25.0, n) * np.exp(-0.4 * health)), 360), 0
    ).astype(np.int64)
    overdue_30 = (max_overdue_days >= 30).astype(np.int64)
    utilisation = np.where(
        customer, np.round(np.clip(0.55 - 0.15 * health + 0.2 * noise(), 0.0, 1.5), 3), 0.0
    )

    # -- ground truth ----------------------------------------------------------------------------
    truth_logit = (
        TRUTH["intercept"]
        + TRUTH["health"] * health
        + TRUTH["size"] * size
        + TRUTH["abnormal_operation"] * abnormal
        + TRUTH["tax_arrears"] * tax_arrears
        + TRUTH["dishonest_debtor"] * dishonest
        + TRUTH["overdue_30"] * overdue_30
        + TRUTH["arrears_months"] * arrears_months
        + TRUTH["new_enterprise"] * (age_years < 2.0)
    )
    labels = (rng.random(n) < logistic(truth_logit)).astype(np.int64)

    # -- who applies, who trained the model ------------------------------------------------------
    active = np.flatnonzero(status == "active")
    chosen = rng.choice(active, size=applicants + 1, replace=False)
    applicant_rows = np.sort(chosen[:applicants]).astype(np.int64)
    no_consent = int(chosen[applicants])
    rest = np.setdiff1d(np.arange(n), chosen)
    if train is not None and train < len(rest):
        rest = np.sort(rng.choice(rest, size=train, replace=False))
    tables: dict[str, dict[str, npt.NDArray[np.generic]]] = {
        MARKET: {
            "status": status.astype(object),
            "established": established,
            "age_years": age_years,
            "registered_capital": registered_capital,
            "paid_in_ratio": paid_in_ratio,
            "abnormal_operation": abnormal,
        },
        TAX: {
            "credit_grade": credit_grade,
            "credit_rank": credit_rank,
            "tax_paid": tax_paid,
            "log_tax_paid": log_tax_paid,
            "tax_growth": tax_growth,
            "tax_arrears": tax_arrears,
        },
        SOCIAL: {
            "insured_staff": insured_staff,
            "log_insured_staff": log_insured_staff,
            "contribution_years": contribution_years,
            "arrears_months": arrears_months,
        },
        COURT: {
            "dishonest_debtor": dishonest,
            "enforcement_amount": enforcement_amount,
            "log_enforcement": log_enforcement,
            "lawsuits": lawsuits,
        },
        BANK: {
            "prior_loans": prior_loans,
            "max_overdue_days": max_overdue_days,
            "overdue_30": overdue_30,
            "utilisation": utilisation,
        },
    }
    return DemoData(
        seed=seed,
        ids=ids,
        tables=tables,
        truth_logit=truth_logit,
        labels=labels,
        applicants=applicant_rows,
        train=rest.astype(np.int64),
        no_consent=no_consent,
    )


# -- files ----------------------------------------------------------------------------------------

SOURCE_FILES: Final[Mapping[str, tuple[str, str]]] = {
    MARKET: ("csv", "registry.csv"),
    TAX: ("parquet", "tax.parquet"),
    SOCIAL: ("csv", "social-insurance.csv"),
    COURT: ("sqlite", "court.sqlite"),
    BANK: ("parquet", "bank-loans.parquet"),
    BANK_OUTCOMES: ("csv", "bank-outcomes.csv"),
}
"""Table → (source kind, file name). ``BANK_OUTCOMES`` is the bank's earlier applicants with the
outcome of their loan (``LABEL``): its training set, which never leaves the bank."""


def _cell(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _write_csv(
    path: Path, ids: Sequence[str], columns: Mapping[str, npt.NDArray[np.generic]]
) -> None:
    names = list(columns)
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["uscc", *names])
        cols = [columns[c].tolist() for c in names]
        for i, e in enumerate(ids):
            out.writerow([e, *(col[i] for col in cols)])


def _write_parquet(
    path: Path, ids: Sequence[str], columns: Mapping[str, npt.NDArray[np.generic]]
) -> None:
    arrays = {"uscc": pa.array(list(ids), pa.string())}
    for name, values in columns.items():
        if values.dtype == object:
            arrays[name] = pa.array([str(v) for v in values], pa.string())
        else:
            arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), path)


def _write_sqlite(
    path: Path, table: str, ids: Sequence[str], columns: Mapping[str, npt.NDArray[np.generic]]
) -> None:
    path.unlink(missing_ok=True)
    names = list(columns)
    with sqlite3.connect(path) as db:
        kinds = ["TEXT" if columns[c].dtype == object else "REAL" for c in names]
        spec = ", ".join(f'"{c}" {k}' for c, k in zip(names, kinds, strict=True))
        db.execute(f'CREATE TABLE "{table}" (uscc TEXT PRIMARY KEY, {spec})')
        marks = ", ".join("?" * (len(names) + 1))
        cols = [columns[c].tolist() for c in names]
        db.executemany(
            f'INSERT INTO "{table}" VALUES ({marks})',  # noqa: S608 - our own column names
            ([e, *(_cell(col[i]) for col in cols)] for i, e in enumerate(ids)),
        )
    # sqlite3's context manager commits but does not close.
    sqlite3.connect(path).close()


def write_tables(data: DemoData, directory: Path) -> dict[str, tuple[str, Path, str | None]]:
    """Write each party's table (CSV, Parquet or SQLite, in a shuffled row order).

    Rows are shuffled per file with the data's seed, so no two institutions' files line up by row:
    only the USCC joins them (as in life). Besides the five parties' tables, the bank's training
    set (:data:`BANK_OUTCOMES`: its earlier applicants, their bank columns and :data:`LABEL`).

    Returns:
        table (party, or :data:`BANK_OUTCOMES`) → (source kind, path, SQLite table or ``None``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(data.seed + 1)
    out: dict[str, tuple[str, Path, str | None]] = {}
    for party in (*PARTIES, BANK_OUTCOMES):
        kind, name = SOURCE_FILES[party]
        if party == BANK_OUTCOMES:
            rows = data.train[rng.permutation(len(data.train))]
            columns = {c: np.asarray(v)[rows] for c, v in data.tables[BANK].items()}
            columns[LABEL] = data.labels[rows]
        else:
            rows = rng.permutation(data.n)
            columns = {c: np.asarray(v)[rows] for c, v in data.tables[party].items()}
        ids = [data.ids[int(i)] for i in rows]
        path = directory / name
        table = None
        if kind == "csv":
            _write_csv(path, ids, columns)
        elif kind == "parquet":
            _write_parquet(path, ids, columns)
        else:
            table = "court_records"
            _write_sqlite(path, table, ids, columns)
        out[party] = (kind, path, table)
    return out
