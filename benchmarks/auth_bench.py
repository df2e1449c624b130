"""Authentication of a member's signed call: ``python benchmarks/auth_bench.py [--calls N]
[--rounds R] [--json]``.

Every call between nodes (a protocol step, a negotiation message, a lookup) is verified by the
receiving node before its handler runs (:meth:`NodeRuntime.authenticate`): the request token's
signature and claims, the sender's stored credential, its window and revocation, and the token's
id consumed in the replay cache. A serving run makes 14 to 22 such calls and a training epoch about
250, so this is a fixed cost of every online score and every training round.

Two nodes (an operator and a bank) are built in-process on real SQLite files in a temporary
directory (the files of a node on this disk); the bank signs ``N`` requests to the operator, the
operator verifies them. Measured per round, interleaved:

- ``node``: :meth:`NodeRuntime.authenticate` as the node runs it (the token id committed without
  waiting for the disk, decision 58; the stored credential verified once per token);
- ``baseline``: the same checks as they ran before decision 58, in the same process on the same
  store: the token id in a commit that waits for the disk, the stored credential's signature
  verified at each of its two reads.

Reported (JSON with ``--json``): milliseconds per call for each (median of the rounds, every
round's figure), the ratio, and the host's load average (the cores are shared). Nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.node.runtime import NodeRuntime
from tests.connectors._space import InProcessSpace

PATH = "/identity/revocations"


def _signed(space: InProcessSpace, sender: Any, n: int) -> list[dict[str, str]]:
    url = f"{space.operator.url}{PATH}"
    return [sender.runtime.client.headers_for("city-centre", "POST", url, b"{}") for _ in range(n)]


def _node(runtime: NodeRuntime, calls: list[dict[str, str]]) -> float:
    start = time.perf_counter()
    for h in calls:
        runtime.authenticate(
            token=h["TS-Request"],
            credential=h["TS-Credential"],
            body=b"{}",
            method="POST",
            path=PATH,
        )
    return (time.perf_counter() - start) / len(calls)


def _baseline(runtime: NodeRuntime, calls: list[dict[str, str]]) -> float:
    verifier, directory = runtime.verifier, runtime.directory
    assert verifier is not None and directory is not None
    start = time.perf_counter()
    for h in calls:
        directory._verified.clear()  # every read of the stored credential verifies it again
        with runtime.store.transaction() as tx:  # the token id's commit waits for the disk
            verifier.verify_request(
                tx, h["TS-Request"], body=b"{}", method="POST", path=PATH, now=runtime.clock()
            )
    return (time.perf_counter() - start) / len(calls)


def run(calls: int, rounds: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    node_ms: list[float] = []
    base_ms: list[float] = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp, InProcessSpace(Path(tmp)) as space:
        bank = space.add("bank-a", ["consumer", "provider"])
        space.admit_direct(bank)
        operator = space.operator.runtime
        _node(operator, _signed(space, bank, 50))  # warm up: the credential is learned once
        for _ in range(rounds):
            node_ms.append(1e3 * _node(operator, _signed(space, bank, calls)))
            base_ms.append(1e3 * _baseline(operator, _signed(space, bank, calls)))
    node, base = statistics.median(node_ms), statistics.median(base_ms)
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "node_ms_per_call": round(node, 3),
        "baseline_ms_per_call": round(base, 3),
        "node_rounds_ms": [round(x, 3) for x in node_ms],
        "baseline_rounds_ms": [round(x, 3) for x in base_ms],
        "baseline_over_node": round(base / node, 2),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = run(args.calls, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"authenticate: {result['node_ms_per_call']} ms per call "
        f"(before decision 58, same run: {result['baseline_ms_per_call']} ms; "
        f"{result['baseline_over_node']}x), load {result['load_avg']}"
    )


if __name__ == "__main__":
    main()
