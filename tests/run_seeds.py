"""Run a test selection under many seeds of test data, one pytest process per seed.

    python -m tests.run_seeds --seeds 50 tests/trusted_space/test_leakage.py
    python -m tests.run_seeds --seeds 50 --first 1000 -- tests/crypto -k "not slow"

Seed ``s`` runs ``pytest -x -q -p no:cacheprovider --test-seed s --hypothesis-seed s <selection>``
(``--test-seed`` feeds the ``rng`` fixture, see ``tests/_seeding.py``). Prints one line per seed
(its pytest summary and time), then the count of seeds that passed and the failing seeds, each
with the command that reproduces it. Exits 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time


def _summary(output: str) -> str:
    lines = [line.strip("= ") for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if " in " in line and any(w in line for w in ("passed", "failed", "error", "skipped")):
            return line
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="how many seeds (default 50)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (default 1)")
    parser.add_argument(
        "--no-hypothesis-seed",
        action="store_true",
        help="leave Hypothesis to its own seeding instead of --hypothesis-seed s",
    )
    parser.add_argument("--keep-going", action="store_true", help="no -x: run every test of a seed")
    parser.add_argument("selection", nargs="+", help="test paths and pytest options")
    args = parser.parse_args(argv)

    failed: list[tuple[int, str, list[str]]] = []
    started = time.monotonic()
    for seed in range(args.first, args.first + args.seeds):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += [] if args.keep_going else ["-x"]
        command += [f"--test-seed={seed}"]
        command += [] if args.no_hypothesis_seed else [f"--hypothesis-seed={seed}"]
        command += args.selection
        t0 = time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        summary = _summary(run.stdout + run.stderr)
        verdict = "ok  " if run.returncode == 0 else "FAIL"
        print(f"seed {seed:>5} {verdict} {summary} [{time.monotonic() - t0:.1f}s]", flush=True)
        if run.returncode != 0:
            failed.append((seed, run.stdout[-4000:] + run.stderr[-2000:], command))
    total = time.monotonic() - started
    for seed, output, command in failed:
        print(f"\n--- seed {seed} failed: {shlex.join(command[1:])}\n{output}")
    print(
        f"\n{args.seeds - len(failed)}/{args.seeds} seeds passed "
        f"(seeds {args.first}..{args.first + args.seeds - 1}) in {total:.0f}s"
        + (f"; failing seeds: {[s for s, _, _ in failed]}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
