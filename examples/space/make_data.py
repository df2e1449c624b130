"""Generate the example space's small synthetic data (deterministic; run from anywhere).

Writes ``data/tax.csv`` (tax bureau), ``data/court.sqlite`` (court judgments, table
``judgments``), ``data/dishonest.csv`` (the court's public list of dishonest judgment debtors) and
``data/loans.parquet`` (the bank's own loan features). Every row is keyed by a valid, random
unified social credit code (USCC); the same 200 enterprises appear in every file, so joint
queries have something to join. Nothing here is real.

    python examples/space/make_data.py
"""

from __future__ import annotations

import csv
import random
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trusted_space.uscc import generate_uscc

HERE = Path(__file__).resolve().parent
ENTERPRISES = 200


def main() -> None:
    rng = random.Random(20250101)  # noqa: S311 - synthetic data, reproducible on purpose
    codes = sorted({generate_uscc(rng) for _ in range(ENTERPRISES)})
    data = HERE / "data"
    data.mkdir(exist_ok=True)

    with (data / "tax.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uscc", "year", "tax_paid", "employees"])
        for code in codes:
            w.writerow([code, 2024, round(rng.lognormvariate(12, 1.2), 2), rng.randint(1, 400)])

    db = data / "court.sqlite"
    db.unlink(missing_ok=True)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE judgments (uscc TEXT NOT NULL, cases INTEGER NOT NULL,"
            " amount_owed REAL NOT NULL, last_case_year INTEGER NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO judgments VALUES (?, ?, ?, ?)",
            [
                (
                    code,
                    (n := rng.choice([0, 0, 0, 1, 1, 2, 5])),
                    round(rng.uniform(0, 2e6), 2) if n else 0.0,
                    rng.randint(2015, 2024) if n else 0,
                )
                for code in codes
            ],
        )
    conn.close()

    with (data / "dishonest.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uscc", "listed_on", "court"])
        for code in rng.sample(codes, 15):
            w.writerow(
                [
                    code,
                    f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    "Intermediate People's Court",
                ]
            )

    table = pa.table(
        {
            "uscc": codes,
            "loan_balance": [round(rng.uniform(0, 5e6), 2) for _ in codes],
            "overdue_days": [rng.choice([0, 0, 0, 0, 15, 30, 90]) for _ in codes],
            "defaulted": [rng.random() < 0.08 for _ in codes],
        }
    )
    pq.write_table(table, data / "loans.parquet")
    print(f"wrote {len(codes)} enterprises to {data}")


if __name__ == "__main__":
    main()
