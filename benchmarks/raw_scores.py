"""Joint scores on raw magnitudes through a real local space: worst logit errors per protocol.

``python benchmarks/raw_scores.py --data ../shared/data/default_credit [--rows N]
[--entities M] [--protocol P ...]``

The default-credit files are standardised; this script puts them back on realistic raw scales
(the UCI set's column means and standard deviations, rounded to whole yuan, counts and codes: credit
limits and bills to ~10^6, repayments, age, sex, education and repayment-status codes), splits
the columns over three parties (the bank with the label, a tax bureau, a court), fits a
plaintext logistic regression on the raw values (weights down to ~1e-7), and scores every row with
every protocol from the bank's node (``--entities M`` above the rows repeats them under fresh
ids, up to a million: the entity count the precision must hold at). Reported per protocol:
seconds, the largest absolute logit error against float64 for entities with ``Σ|w·x| ≤ 100``,
the largest relative error beyond, the secure AUC next to the plaintext AUC (the baseline, from
the same run).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.demo.stats import auc, fit_logistic
from connectors.spaces.local import LocalParty, LocalSpace
from trusted_space.policy import PROTOCOLS
from trusted_space.queries.score import Link, Model

# (name, mean, sd) of each standardised column, from the UCI set's description.
GUEST = (
    [("limit_bal", 167484, 129748)]
    + [
        (f"bill_amt{i + 1}", m, s)
        for i, (m, s) in enumerate(
            [
                (51223, 73636),
                (49179, 71174),
                (47013, 69349),
                (43263, 64333),
                (40311, 60797),
                (38872, 59554),
            ]
        )
    ]
    + [
        (f"pay_amt{i + 1}", m, s)
        for i, (m, s) in enumerate(
            [
                (5664, 16563),
                (5921, 23041),
                (5226, 17607),
                (4826, 15666),
                (4799, 15278),
                (5216, 17777),
            ]
        )
    ]
)
HOST = [("sex", 1.6037, 0.4891), ("education", 1.8531, 0.7903), ("marriage", 1.5519, 0.5220)]
HOST += [("age", 35.49, 9.218)] + [
    (f"pay_{i}", m, s)
    for i, (m, s) in enumerate(
        [
            (-0.0167, 1.1238),
            (-0.1338, 1.1972),
            (-0.1662, 1.1969),
            (-0.2207, 1.1691),
            (-0.2662, 1.1332),
            (-0.2911, 1.1500),
        ]
    )
]
PARTS = {
    "bank": [c for c, _, _ in GUEST[:7]],
    "tax": [c for c, _, _ in GUEST[7:]],
    "court": [c for c, _, _ in HOST],
}


def _read(
    path: Path, spec: list[tuple[str, float, float]], label: bool
) -> tuple[list[str], dict[str, np.ndarray], np.ndarray | None]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [r["id"] for r in rows]
    cols = {
        name: np.rint(np.array([float(r[f"x{j}"]) for r in rows]) * sd + mean)
        for j, (name, mean, sd) in enumerate(spec)
    }
    y = np.array([int(r["y"]) for r in rows]) if label else None
    return ids, cols, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--entities", type=int, default=None)
    ap.add_argument("--protocol", action="append", choices=PROTOCOLS)
    ns = ap.parse_args()
    ids, guest, y = _read(ns.data / "default_credit_hetero_guest.csv", GUEST, True)
    host_ids, host, _ = _read(ns.data / "default_credit_hetero_host.csv", HOST, False)
    assert ids == host_ids and y is not None
    n = min(ns.rows, len(ids))
    ids, y = ids[:n], y[:n]
    values = {**guest, **host}
    x = {p: np.column_stack([values[c][:n] for c in cs]) for p, cs in PARTS.items()}
    full = np.column_stack([x[p] for p in PARTS])
    fit = fit_logistic(full, y)
    w = np.asarray(fit.weights, dtype=np.float64)
    split = np.cumsum([len(cs) for cs in PARTS.values()])[:-1]
    parts_w = dict(zip(PARTS, np.split(w, split), strict=True))
    model = Model(
        float(fit.intercept),
        Link("logistic"),
        tuple((p, tuple(zip(cs, map(float, parts_w[p]), strict=True))) for p, cs in PARTS.items()),
    )
    m = ns.entities or n
    rows = np.arange(m) % n  # a million entities: the rows again, under fresh ids
    ids = [ids[i] if i < n else f"{ids[r]}-{i // n}" for i, r in enumerate(rows)]
    y, full = y[rows], full[rows]
    x = {p: v[rows] for p, v in x.items()}
    plain = float(fit.intercept) + full @ w
    terms = np.abs(full) @ np.abs(w)
    out: dict[str, object] = {
        "rows": n,
        "entities": m,
        "max|x|": float(np.max(np.abs(full))),
        "min|w|": float(np.min(np.abs(w))),
        "plaintextAUC": auc(y, plain),
        "max Σ|w·x|": float(np.max(terms)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        parties = []
        for p, cs in PARTS.items():
            path = root / f"{p}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", *cs])
                for i in range(m):
                    writer.writerow([ids[i], *(f"{v:.0f}" for v in x[p][i])])
            parties.append(LocalParty(p, path))
        with LocalSpace(parties, model, "id") as local:
            local.start()
            for protocol in ns.protocol or PROTOCOLS:
                mark = time.perf_counter()
                result = local.score(protocol, entities=ids, timeout=1800)
                seconds = time.perf_counter() - mark
                logits = np.asarray(result["logits"], dtype=np.float64)
                err = np.abs(logits - plain)
                small = terms <= 100
                out[protocol] = {
                    "seconds": round(seconds, 2),
                    "maxAbsErr(Σ≤100)": float(np.max(err[small])) if small.any() else None,
                    "maxRelErr(Σ>100)": float(np.max(err[~small] / terms[~small]))
                    if (~small).any()
                    else None,
                    "AUC": auc(y, logits),
                }
                print(protocol, json.dumps(out[protocol]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
