"""Shared benchmark harness: one JSON record per case, each case in its own process.

A case module defines ``CASES: dict[str, Callable[[bool], dict]]``. The callable receives
``quick`` and returns a record with at least ``case``, ``n``, ``features``, ``seconds``,
``baseline``, ``baseline_seconds`` and ``max_abs_error``; the harness fills in ``per_s``,
``speedup_vs_baseline`` / ``slowdown_vs_plaintext`` when the case did not, and ``peak_rss_mb``
(the case process plus any worker processes it started), measured by running each case in a fresh
interpreter so one case's memory never counts against another.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REQUIRED = ("case", "n", "features", "seconds", "baseline", "baseline_seconds", "max_abs_error")


@contextmanager
def timer() -> Iterator[list[float]]:
    """Measure wall time: ``with timer() as t: ...`` then ``t[0]`` is the seconds taken."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident set size of this process plus its reaped children, in MiB (Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + kids) / 1024.0


def finish(record: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"case {record.get('case')} lacks {missing}")
    seconds = float(record["seconds"])
    record.setdefault("per_s", record["n"] / seconds if seconds > 0 else float("inf"))
    base = record.get("baseline_seconds")
    if base:
        record.setdefault("speedup_vs_baseline", float(base) / seconds)
    record.setdefault("slowdown_vs_plaintext", None)
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return record


def run_in_process(module: str, case: str, quick: bool) -> dict[str, Any]:
    mod = importlib.import_module(module)
    cases: dict[str, Callable[[bool], dict[str, Any]]] = mod.CASES
    return finish(cases[case](quick))


def run_isolated(module: str, case: str, quick: bool) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its record."""
    cmd = [sys.executable, str(HERE / "_harness.py"), module, case] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE.parent)
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(run_in_process(args[0], args[1], "--quick" in sys.argv)))
