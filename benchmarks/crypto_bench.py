"""Crypto benchmarks: ``python benchmarks/crypto_bench.py [--quick] [--json] [--case NAME]``.

Every case runs in its own interpreter (so ``peak_rss_mb`` belongs to that case) and runs its
baseline in the same run. Without ``--json`` a table is printed; with it, one JSON object per line
per case. Targets are reported beside the figures, never asserted: see ``docs/crypto.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import run_isolated

SUITE: list[tuple[str, str, str]] = [
    ("cases_paillier", "paillier_weighted_sum_10k", ">= 25x naive phe loop; error <= 1e-6"),
    ("cases_paillier", "paillier_obfuscators", ">= 5x full r**n per second"),
    ("cases_ckks", "ckks_weighted_sum_1m", ">= 200,000 entities/s; error <= 1e-4"),
    ("cases_sharing", "additive_dot_1m", ">= 2,000,000 entities/s online; <= 50x plaintext"),
    ("cases_sharing", "truncation_failure_rate", "measured rate matches |x|/2^64"),
    ("cases_psi", "psi_1m", "<= 120 s total; >= 15,000 ids/s per core per step"),
    ("cases_psi", "psi_ot_1m", "<= 2x SPU RR22 on the same ids; exact"),
]


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a quick check)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line per case")
    parser.add_argument("--case", action="append", help="run only this case (repeatable)")
    args = parser.parse_args()

    failed = False
    rows = []
    for module, case, target in SUITE:
        if args.case and case not in args.case:
            continue
        record = run_isolated(module, case, args.quick)
        record["target"] = target
        failed |= "error" in record
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            rows.append(record)
            print(f"... {case} done", file=sys.stderr, flush=True)
    if not args.json:
        header = (
            f"{'case':<28} {'n':>9} {'seconds':>9} {'per_s':>11} {'speedup':>8} {'slowdown':>8} "
        )
        header += f"{'max_err':>9} {'rss_mb':>8}  target"
        print(header)
        for r in rows:
            if "error" in r:
                print(f"{r['case']:<28} ERROR {r['error']}")
                continue
            plain = r.get("slowdown_vs_plaintext")
            speedup = None if plain is not None else r.get("speedup_vs_baseline")
            print(
                f"{r['case']:<28} {r['n']:>9} {_fmt(r['seconds'], '9.3f')} "
                f"{_fmt(r['per_s'], '11.0f')} {_fmt(speedup, '8.1f')} {_fmt(plain, '8.1f')} "
                f"{_fmt(r['max_abs_error'], '9.1e')} {_fmt(r['peak_rss_mb'], '8.0f')}  "
                f"{r['target']}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
